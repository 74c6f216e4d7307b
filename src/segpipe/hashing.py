"""Digests of files, read in blocks (datasets and weights can be gigabytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def update_from_file(digest, path: str | Path) -> None:
    """Feed a file's bytes to a hashlib digest."""
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    update_from_file(digest, path)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")
