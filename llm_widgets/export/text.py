"""Text that goes into exported files: escaped for XML/HTML, with the characters XML does
not allow shown as visible escapes (llm_widgets.text.printable) instead of breaking the file."""

from __future__ import annotations

import html

from ..text import printable
from .fonts import drawable


def xml_text(text: str) -> str:
    """For element text and attribute values in SVG and HTML."""
    return html.escape(printable(text))


def plain_label(text: str) -> str:
    """For matplotlib: printable, what its font (DejaVu Sans) cannot draw escaped (no missing-glyph
    boxes, no warnings), and "$" escaped so the label is never parsed as math."""
    return drawable(printable(text)).replace("$", r"\$")
