"""The fonts PNG exports draw text with, so that every character the views show is drawn, never
a missing-glyph box: DejaVu Sans (it comes inside matplotlib, which captum brings, so it is the
same on every machine; it has the arrows the views write for newline and tab, accents and
combining marks, and many symbols), a font installed on the system for what it lacks (CJK:
Noto CJK, WenQuanYi, Droid Sans Fallback where installed), and for what no font here covers the
character's escape (\\u6f22), visible and exact, as the SVG and HTML exports keep the text itself.
"""

from __future__ import annotations

from functools import cache, lru_cache

from PIL import ImageFont

PRIMARY = "DejaVu Sans"


@lru_cache(maxsize=1)
def primary_path() -> str:
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family=PRIMARY))


@cache
def coverage(path: str) -> frozenset[int]:
    """The code points a font file draws (the first font of a collection)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except Exception:  # a font file fontTools cannot read draws nothing here
        return frozenset()


@lru_cache(maxsize=1)
def _system_fonts() -> tuple[str, ...]:
    from matplotlib import font_manager

    return tuple(sorted(p for p in font_manager.findSystemFonts() if p.lower().endswith((".ttf", ".otf", ".ttc"))))


@cache
def _fallback(missing: frozenset[int]) -> str | None:
    """The installed font that covers the most of `missing` (None when none covers any)."""
    best, count = None, 0
    for path in _system_fonts():
        n = len(missing & coverage(path))
        if n > count:
            best, count = path, n
            if n == len(missing):
                break
    return best


def escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def drawable(text: str, path: str | None = None) -> str:
    """`text` with every character the font at `path` (DejaVu Sans) does not draw written as its escape."""
    cover = coverage(path or primary_path())
    return "".join(c if ord(c) in cover or c == "\n" else escaped(c) for c in text)  # (a newline: a line break)


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def font_for(text: str, size: int) -> tuple[ImageFont.FreeTypeFont, str]:
    """The font to draw `text` with at `size` pixels, and the text to draw with it: DejaVu Sans,
    or an installed font that covers more of it; whatever the chosen font lacks, escaped."""
    path = primary_path()
    wanted = frozenset(ord(c) for c in text if c != "\n")
    missing = wanted - coverage(path)
    if missing:
        other = _fallback(missing)
        if other is not None and len(wanted - coverage(other)) < len(missing):
            path = other
    return _font(path, int(size)), drawable(text, path)


def draw_text(draw, xy, text: str, size: int, **kwargs) -> None:
    """ImageDraw.text with the font `font_for` picks."""
    font, shown = font_for(text, size)
    draw.text(xy, shown, font=font, **kwargs)


def length(text: str, size: int) -> float:
    """How wide `text` is drawn (pixels)."""
    font, shown = font_for(text, size)
    return font.getlength(shown)
