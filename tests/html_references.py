"""What a page would fetch from the network: addresses in the attributes that load or
link something (src, href, ...) and in CSS url(...), not addresses in plain text or
inside scripts' string data."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_LOADING_ATTRIBUTES = {"src", "href", "srcset", "data", "action", "poster", "background", "xlink:href"}
_REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*['"]?\s*((?:https?:)?//[^'")\s]+)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+['"]((?:https?:)?//[^'"]+)""", re.IGNORECASE)


class _Finder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name in _LOADING_ATTRIBUTES:
                candidates = [part.split()[0] for part in value.split(",") if part.strip()] if name == "srcset" else [value]
                self.found += [c for c in candidates if _REMOTE.match(c)]
            if name == "style":
                self.found += _CSS_URL.findall(value)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.found += _CSS_URL.findall(data) + _CSS_IMPORT.findall(data)


def external_references(page: str) -> list[str]:
    finder = _Finder()
    finder.feed(page)
    finder.close()
    return finder.found
