"""Progress bars on a terminal only: logs get one line per epoch or file instead."""

from __future__ import annotations

import sys
from typing import Iterable, TextIO


def progress_bar(total: int | None, description: str, unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 leave: bool = False):
    """A tqdm bar that draws only when `stream` (stdout by default) is a terminal."""
    from tqdm import tqdm

    stream = stream or sys.stdout
    return tqdm(total=total, initial=initial, desc=description, unit=unit, unit_scale=unit == "B", leave=leave,
                file=stream, disable=not stream.isatty())


def progress(iterable: Iterable, total: int, description: str) -> Iterable:
    """`iterable` itself off a terminal (no per-item cost in logs), else wrapped in a bar."""
    if not sys.stdout.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False)
