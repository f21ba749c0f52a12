"""Text from models and users made safe to show: control characters (a terminal escape in a
model's name, a vocabulary's "\\x01") written as visible escapes, lone surrogates (valid in
JSON, not in UTF-8) kept from breaking a widget's messages or a file."""

from __future__ import annotations

import re

# XML 1.0 allows tab, newline, carriage return and everything from U+0020 but
# surrogates and U+FFFE/U+FFFF; anything else makes a whole file unreadable, and
# the C0 controls (ESC above all) drive terminals
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with characters XML does not allow written as visible escapes (\\x01, \\x1b, \\ud800)."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def has_lone_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None
