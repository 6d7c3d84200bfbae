"""File names as text in the files catsdogs writes: valid UTF-8 whatever bytes a name holds."""

from __future__ import annotations

import re
from typing import Any

# Linux allows any bytes in a file name (a zip from an old Windows or Mac gives Latin-1 or Shift-JIS
# names); Python holds each byte that is not UTF-8 as a surrogate escape, U+DC80 to U+DCFF.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def escape_name(text: str) -> str:
    r"""`text` with each byte of a name that is not UTF-8 written as \xNN, the way Python's
    backslashreplace shows it (b'caf\xe9.jpg' becomes 'caf\\xe9.jpg'); other text is unchanged.

    Every CSV and JSON file catsdogs writes holds names this way, so each is valid UTF-8 for any
    reader (pandas, a spreadsheet), and split names its output files so, so that the names in its
    manifest are the files' own.
    """
    return _UNDECODABLE.sub(lambda match: f"\\x{ord(match.group()) - 0xDC00:02x}", text)


def escape_names(value: Any) -> Any:
    """`value` (what json.dumps takes) with escape_name applied to every string in it, keys included:
    escaped before JSON writes them, where a backslash written after would make the JSON invalid."""
    if isinstance(value, str):
        return escape_name(value)
    if isinstance(value, dict):
        return {escape_names(key): escape_names(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_names(item) for item in value]
    return value


def utf8(text: str) -> bytes:
    """`text` as UTF-8 bytes, names escaped as escape_name does (any other lone surrogate as \\uNNNN)."""
    return escape_name(text).encode("utf-8", "backslashreplace")


_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def unescape_name(text: str) -> str:
    """The name escape_name wrote as `text`, for finding the file again (a name that itself holds a
    backslash, x and two hex digits from 80 to ff would be misread, and none is known to)."""
    return _ESCAPED.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text)
