"""The one exception type users see: a message that names the file or key and the fix;
and the one way a stage warns."""

import sys


class SegpipeError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def shortlist(items: list[str], limit: int, separator: str = ", ") -> str:
    """The first `limit` items, then how many more: error messages name the bad
    files without burying the fix under thousands of them."""
    shown = separator.join(items[:limit])
    return shown + (f"{separator}... and {len(items) - limit} more" if len(items) > limit else "")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
