"""Labelled matrices as figures: the logit lens (layers x positions), patching effects
(layers x positions or heads), ablation sweeps and run comparisons (layers x heads).

One `MatrixFigure` holds what is on screen: values, row and column labels, an
optional word per cell, the colour scale (sequential 0..1, or diverging around
0) and its legend. PNG (Pillow), SVG (cells as rects, labels and words as
escaped text) and standalone HTML (the SVG and the data as JSON).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..text import printable
from .attention import colours, shown
from .attribution import diverging
from .files import to_bytes, write
from .fonts import draw_text
from .text import xml_text

CELL_W, CELL_H, LEFT, TOP = 54, 18, 90, 56


@dataclass
class MatrixFigure:
    title: str
    values: np.ndarray  # [rows, columns]
    row_labels: list[str]
    column_labels: list[str]
    scale: str = "sequential"  # "sequential": 0..vmax light to dark; "diverging": -vmax..vmax blue..orange
    vmax: float = 1.0
    words: list[list[str]] | None = None  # a word per cell (the lens's top token), drawn when it fits
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # what the HTML page carries as JSON

    def rgb(self) -> np.ndarray:
        v = np.nan_to_num(self.values.astype(np.float64)) / (self.vmax or 1.0)
        if self.scale == "diverging":
            flat = [diverging(float(x)) for x in v.reshape(-1)]
            return np.array(flat, dtype=np.uint8).reshape(*v.shape, 3)
        return colours(v)

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(value label, colour) stops of the colour scale."""
        if self.scale == "diverging":
            stops = [-1.0, -0.5, 0.0, 0.5, 1.0]
            return [(("+" if s > 0 else "") + cell_text(s * self.vmax), diverging(s)) for s in stops]
        stops = [0.0, 0.25, 0.5, 0.75, 1.0]
        return [(cell_text(s * self.vmax), _rgb(colours(np.array([s]))[0])) for s in stops]


def _dark(rgb) -> bool:
    r, g, b = (int(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 120


def _size(fig: MatrixFigure) -> tuple[int, int]:
    rows, cols = fig.values.shape
    return LEFT + cols * CELL_W + 20, TOP + rows * CELL_H + 70 + 16 * len(fig.notes)


def _cell_word(fig: MatrixFigure, r: int, c: int) -> str:
    if fig.words is not None:
        return shown(fig.words[r][c])[:7]
    return cell_text(float(fig.values[r, c]))


def cell_text(value: float) -> str:
    """A number as the widget writes it (js/lib/matrix.ts cellText, formatValue): two significant digits,
    small and large values in exponent form ("6.3e-7", never rounded to "0"), only 0 as 0."""
    if not math.isfinite(value):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    if value == 0:
        return "0"
    text = f"{value:.1e}" if abs(value) < 0.01 or abs(value) >= 100 else f"{value:#.2g}".rstrip(".")
    if "e" not in text:
        return text  # toPrecision(2): "1.0", "0.010", "99"
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent):+d}"  # JavaScript's exponents: "e-7", "e+2"


def to_svg(fig: MatrixFigure) -> str:
    width, height = _size(fig)
    rgb = fig.rgb()
    rows, cols = fig.values.shape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
        f'{height}" font-family="monospace" font-size="10">',
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{xml_text(fig.title)}</text>',
    ]
    for c, label in enumerate(fig.column_labels):
        x = LEFT + c * CELL_W + CELL_W / 2
        parts.append(f'<text x="{x:.0f}" y="{TOP - 6}" text-anchor="middle">{xml_text(shown(label)[:8])}</text>')
    for r, label in enumerate(fig.row_labels):
        y = TOP + r * CELL_H
        parts.append(f'<text x="{LEFT - 6}" y="{y + 13}" text-anchor="end">{xml_text(label)}</text>')
        for c in range(cols):
            colour = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[r, c]))
            x = LEFT + c * CELL_W
            parts.append(f'<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="{colour}"/>')
            ink = "#fff" if _dark(rgb[r, c]) else "#111"
            parts.append(f'<text x="{x + 3}" y="{y + 13}" fill="{ink}">{xml_text(_cell_word(fig, r, c))}</text>')
    y = TOP + rows * CELL_H + 20
    for i, (label, colour) in enumerate(fig.legend()):
        x = LEFT + i * 60
        parts.append(f'<rect x="{x}" y="{y}" width="56" height="12" fill="#%02x%02x%02x"/>' % colour)
        parts.append(f'<text x="{x}" y="{y + 24}">{xml_text(label)}</text>')
    for i, line in enumerate(fig.notes):
        parts.append(f'<text x="8" y="{y + 44 + 16 * i}">{xml_text(line)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def to_png(fig: MatrixFigure, scale: int = 2) -> bytes:
    width, height = _size(fig)
    image = Image.new("RGB", (width * scale, height * scale), "white")
    draw = ImageDraw.Draw(image)
    size = 10 * scale
    draw_text(draw, (8 * scale, 6 * scale), printable(fig.title), 13 * scale, fill="black")
    rgb = fig.rgb()
    rows, cols = fig.values.shape
    for c, label in enumerate(fig.column_labels):
        x = (LEFT + c * CELL_W + CELL_W / 2) * scale
        draw_text(draw, (x, (TOP - 6) * scale), printable(shown(label)[:8]), size, fill="black", anchor="ms")
    for r, label in enumerate(fig.row_labels):
        y = (TOP + r * CELL_H) * scale
        draw_text(draw, ((LEFT - 6) * scale, y + 13 * scale), printable(label), size, fill="black", anchor="rs")
        for c in range(cols):
            x = (LEFT + c * CELL_W) * scale
            colour = tuple(int(v) for v in rgb[r, c])
            draw.rectangle([x, y, x + CELL_W * scale - 1, y + CELL_H * scale - 1], fill=colour)
            word = printable(_cell_word(fig, r, c))
            ink = "white" if _dark(colour) else "black"
            draw_text(draw, (x + 3 * scale, y + 13 * scale), word, size, fill=ink, anchor="ls")
    y = (TOP + rows * CELL_H + 20) * scale
    for i, (label, colour) in enumerate(fig.legend()):
        x = (LEFT + i * 60) * scale
        draw.rectangle([x, y, x + 56 * scale, y + 12 * scale], fill=colour)
        draw_text(draw, (x, y + 24 * scale), label, size, fill="black", anchor="ls")
    for i, line in enumerate(fig.notes):
        draw_text(draw, (8 * scale, y + (44 + 16 * i) * scale), printable(line), size, fill="black", anchor="ls")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def to_html(fig: MatrixFigure) -> str:
    data = json.dumps(
        {
            "title": fig.title,
            "rows": fig.row_labels,
            "columns": fig.column_labels,
            "values": np.nan_to_num(fig.values.astype(float)).round(5).tolist(),
            **fig.data,
        }
    )
    data = data.replace("<", "\\u003c")  # inside <script>, "</" would end the element
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{xml_text(fig.title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px;color:#111;background:#fff}}</style></head><body>
{to_svg(fig)}
<script type="application/json" id="llm-widgets-data">{data}</script>
</body></html>
"""


def render(fig: MatrixFigure, fmt: str) -> bytes:
    """The file's bytes for "png", "svg" or "html" (what the widgets' buttons download)."""
    return to_bytes(fig, fmt, to_png, to_svg, to_html)


def save(fig: MatrixFigure, path: str | Path) -> Path:
    """Write the figure; the format follows the suffix (.png, .svg, .html)."""
    return write(path, lambda fmt: render(fig, fmt))


def _rgb(colour: Any) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])
