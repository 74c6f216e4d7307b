"""What every DVC stage's entry point shares: params loading, clean error reporting,
and a one-line JSON summary of what the stage did."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from segpipe.atomic import disk_full, is_disk_full
from segpipe.config import PARAMS_FILE, Params, parse_params, read_params_file
from segpipe.errors import SegpipeError

_loaded_digest: str | None = None


def stage_params() -> Params:
    """params.yaml, validated; remembered so that run_stage can tell if it changed mid-run."""
    global _loaded_digest
    raw, _loaded_digest = read_params_file(PARAMS_FILE)
    return parse_params(raw, PARAMS_FILE)


def _params_changed() -> bool:
    if _loaded_digest is None or not Path(PARAMS_FILE).exists():
        return False
    return read_params_file(PARAMS_FILE)[1] != _loaded_digest


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _terminate(signum, frame):
    raise Interrupted()


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): a SegpipeError becomes a clear message and exit status 2,
    Ctrl-C or SIGTERM exit 130 without a traceback (the stage cleans up first)."""
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C raises KeyboardInterrupt even where the process was started with SIGINT ignored (a job a
    # script put in the background inherits that): a signal that reaches this stage should stop it cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            main()
        except OSError as exc:  # a full disk where no atomic write caught it (a library's own files): one sentence
            if not is_disk_full(exc):
                raise
            raise disk_full(exc.filename or "an output") from None
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    if _params_changed():
        # Another `dvc exp run` in this workspace rewrote params.yaml while this stage ran:
        # its outputs would not match the params that dvc.lock is about to record.
        print(f"error: {PARAMS_FILE} changed while this stage ran, so its outputs may not match it; another "
              "`dvc exp run` in this workspace? Run experiments one at a time here, or queue them "
              "(dvc exp run --queue; dvc queue start), which gives each its own copy.", file=sys.stderr, flush=True)
        sys.exit(2)


def print_summary(stage: str, **fields: Any) -> None:
    print(json.dumps({"stage": stage, **fields}), flush=True)
