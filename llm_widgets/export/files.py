"""A figure as a file: the one dispatch from a format name (or a file's suffix) to
the figure's PNG, SVG or standalone HTML, shared by every export module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checks
from ..errors import InputError

FORMATS = (".png", ".svg", ".html")


def to_bytes(
    fig: Any, fmt: str, to_png: Callable[[Any], bytes], to_svg: Callable[[Any], str], to_html: Callable[[Any], str]
) -> bytes:
    """The file's bytes for "png", "svg" or "html" (what the widgets' buttons download)."""
    if fmt == "png":
        return to_png(fig)
    if fmt in ("svg", "html"):
        return (to_svg(fig) if fmt == "svg" else to_html(fig)).encode("utf-8")
    raise InputError(f"unknown export format {fmt!r}: use 'png', 'svg' or 'html'")


def write(path: str | Path, render_as: Callable[[str], bytes]) -> Path:
    """Write what `render_as(format)` gives for the path's suffix (.png, .svg, .html)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot save {path.name!r}: the file name must end in .png, .svg or .html")
    checks.folder_exists(path, "the figure")
    path.write_bytes(render_as(suffix[1:]))
    return path
