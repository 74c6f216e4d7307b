"""Write outputs so that a failure never leaves a half-written file or folder behind:
everything is written beside its target first and moved into place at the end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# mkstemp/mkdtemp create private (0600/0700) paths; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o777 & ~_UMASK)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


@contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
