"""Write outputs so that a failure never leaves a half-written file or folder behind:
everything is written beside its target first and moved into place at the end.

A process killed outright (SIGKILL, power loss) cannot clean up after itself, so
its staging paths carry its process id, and the next write to the same target
removes those of processes that no longer exist."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from segpipe.errors import SegpipeError

# Staging paths are created private (0600/0700) by default; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def remove_leftovers(target: Path) -> list[Path]:
    """Remove staging paths of `target` left by processes that died; return them."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.glob(f".{target.name}.tmp-*"):
        pid = path.name.removeprefix(f".{target.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class DiskFull(SegpipeError):
    """No space left on the device (ENOSPC) while writing an output: one sentence, no traceback."""


def free_space(path: str | Path) -> int | None:
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def disk_full(target: str | Path) -> DiskFull:
    """The sentence for a full disk: the path, the space free there, and that nothing was published."""
    free = free_space(target)
    return DiskFull(f"no space left on the device holding {target}" + (f" ({free / 1e6:.1f} MB free)" if free is not None else "")
                    + ": nothing was published (no half-written file takes an output's place); free space there, or "
                    "move the project to a larger disk, and run again")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = _staging_path(target)
    staging.mkdir(mode=0o777 & ~_UMASK)
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full(target) from None
        raise
    if target.exists():
        old = _staging_path(target)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


@contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = _staging_path(target)
    try:
        with open(tmp, mode) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(target) from None
        raise


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
