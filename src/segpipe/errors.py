"""The one exception type users see: a message that names the file or key and the fix;
and the one way a stage warns; and redact(), which every message they carry goes through."""

import re
import sys

# The user-info of a URL (scheme://user:password@host, scheme://token@host): everything after the
# scheme up to the last @ before the path. A password may hold a raw @; a path or query may not end it.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#]*)@")
# Query parameters that carry a secret: ?token=, &password=, S3's presigned X-Amz-Signature and X-Amz-Credential.
_SECRET_QUERY = re.compile(r"(?P<name>[?&;][\w.\-]*(?:token|passw|pwd|secret|signature|credential|sig|key|auth)"
                           r"[\w.\-]*=)[^&#\s'\"]+", re.IGNORECASE)
REDACTED = "***"


def _userinfo(match: re.Match) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    # user:password keeps the user (who, not how); a lone user-info may be a token, so it goes entirely.
    return f"{match['scheme']}{user}:{REDACTED}@" if colon else f"{match['scheme']}{REDACTED}@"


def redact(text: str) -> str:
    """`text` with every password, token and signature in a URL replaced by ***: what segpipe
    prints, logs or records may land in CI logs, reports and a shared MLflow server."""
    return _SECRET_QUERY.sub(lambda m: m["name"] + REDACTED, _URL_USERINFO.sub(_userinfo, text))


class SegpipeError(Exception):
    """A problem with the user's input or environment, reported without a traceback. Its
    message is redacted: it may quote a URL or another library's error that holds one."""

    def __init__(self, *args):
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


def shortlist(items: list[str], limit: int, separator: str = ", ") -> str:
    """The first `limit` items, then how many more: error messages name the bad
    files without burying the fix under thousands of them."""
    shown = separator.join(items[:limit])
    return shown + (f"{separator}... and {len(items) - limit} more" if len(items) > limit else "")


def warn(message: str) -> None:
    print(f"warning: {redact(message)}", file=sys.stderr, flush=True)
