"""Fetch official archives safely: stream to a partial file with a progress bar,
retry transient errors with backoff, resume where the server accepts ranges,
verify the checksum, and only then move the archive into place. Extraction
refuses any member that would land outside its target folder.

Hand-written on urllib rather than pooch or torchvision's helpers: neither
resumes a partial download, and the official VOC archive is 2 GB.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segpipe.errors import SegpipeError
from segpipe.hashing import file_digest
from segpipe.progress import progress_bar

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """An official archive: its file name, home URL and checksum ("md5:<hex>" or "sha256:<hex>")."""

    filename: str
    url: str
    checksum: str


class _Transient(Exception):
    """A failure worth retrying: the connection broke, timed out, or the server was busy."""


def archive_url(archive: Archive, mirror: str | None) -> str:
    """The archive's home URL, or the same file name under data.mirror."""
    return f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url


def _matches(path: Path, checksum: str) -> tuple[bool, str]:
    algorithm, expected = checksum.split(":", 1)
    actual = file_digest(path, algorithm)
    return actual == expected, f"{algorithm}:{actual}"


def _download_once(url: str, partial: Path, timeout: float) -> None:
    """One attempt: append to `partial` if the server honours a range, else start over."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the partial file is already complete (or longer): start over
            partial.unlink()
            raise _Transient(f"HTTP 416 for {url}") from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} for {url}") from None
        raise SegpipeError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL or data.mirror in params.yaml") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Transient(f"{url}: {exc}") from None

    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None
        written = offset
        try:
            bar = progress_bar(expected_total, partial.stem, "B", offset, sys.stderr, leave=True)
            with open(partial, "ab" if resumed else "wb") as handle, bar:
                while block := response.read(CHUNK):
                    handle.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (http.client.HTTPException, OSError) as exc:
            raise _Transient(f"{url}: connection broke after {written} bytes ({exc})") from None
    if expected_total is not None and written < expected_total:
        raise _Transient(f"{url}: connection closed after {written} of {expected_total} bytes")


def fetch(archive: Archive, cache_dir: Path, mirror: str | None = None,
          retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """The verified archive in cache_dir, downloading (or resuming) only when needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / archive.filename
    if target.exists() and _matches(target, archive.checksum)[0]:
        return target
    url = archive_url(archive, mirror)
    partial = cache_dir / f"{archive.filename}.part"
    if url.startswith("file://") or "://" not in url:
        source = Path(url.removeprefix("file://"))
        if not source.exists():
            raise SegpipeError(f"{source} not found; check data.mirror in params.yaml")
        shutil.copyfile(source, partial)
    else:
        for attempt in range(retries + 1):
            try:
                _download_once(url, partial, timeout)
                break
            except _Transient as exc:
                if attempt == retries:
                    raise SegpipeError(f"downloading {url} failed after {retries + 1} attempts: {exc}; "
                                       "the partial file is kept and the next run resumes it") from None
                print(f"retrying {archive.filename} in {backoff * 2**attempt:.0f} s: {exc}", file=sys.stderr, flush=True)
                time.sleep(backoff * 2**attempt)
    ok, actual = _matches(partial, archive.checksum)
    if not ok:
        partial.unlink()
        raise SegpipeError(
            f"{archive.filename}: checksum mismatch (expected {archive.checksum}, got {actual}); "
            f"the corrupt download from {url} was deleted: run again, or check data.mirror"
        )
    os.replace(partial, target)
    return target


def _refusal(member: tarfile.TarInfo, dest: Path) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in path.parts:
        return "path contains '..'"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "not a regular file, folder or link"
    if member.issym() or member.islnk():
        base = dest if member.islnk() else (dest / path).parent
        target = os.path.normpath(os.path.join(base, member.linkname))
        if PurePosixPath(member.linkname).is_absolute() or not target.startswith(str(dest) + os.sep):
            return f"link to {member.linkname!r} points outside the target folder"
    return None


def extract(archive: Path, dest: Path, keep=lambda name: True) -> list[str]:
    """Extract the members whose name passes `keep`; refuse the whole archive if
    any member could land outside `dest`. Returns the extracted member names."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                reason = _refusal(member, dest)
                if reason:
                    raise SegpipeError(f"{archive}: refusing to extract member {member.name!r} ({reason}); "
                                       "the archive is corrupt or unsafe: delete it and download again")
            chosen = [m for m in members if keep(m.name)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=chosen, filter="data")
            else:  # Python without extraction filters: the checks above already ran
                tar.extractall(dest, members=chosen)
    except tarfile.TarError as exc:
        raise SegpipeError(f"{archive}: not a readable tar archive ({exc}); delete it and download again") from None
    return [m.name for m in chosen]
