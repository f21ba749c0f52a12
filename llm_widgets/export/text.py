"""Text that goes into exported files: escaped for XML/HTML, and characters that XML
does not allow (control characters such as "\\x01", which a model's vocabulary may
hold) shown as visible escapes instead of breaking the file."""

from __future__ import annotations

import html
import re

# XML 1.0 allows tab, newline, carriage return and everything from U+0020 but
# surrogates and U+FFFE/U+FFFF; anything else makes the whole file unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """`text` with characters XML does not allow written as visible escapes (\\x01, \\ud800)."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def xml_text(text: str) -> str:
    """For element text and attribute values in SVG and HTML."""
    return html.escape(printable(text))


def plain_label(text: str) -> str:
    """For matplotlib: printable, and "$" escaped so the label is never parsed as math."""
    return printable(text).replace("$", r"\$")
