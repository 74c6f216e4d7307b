"""The one exception type users see: a message that names the file or key and the fix."""


class SegpipeError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
