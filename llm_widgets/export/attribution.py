"""Attribution figures: tokens coloured by score, as PNG, SVG (tokens as text) or standalone HTML."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from ..analysis.attribution import Attribution
from .attention import shown
from .files import to_bytes, write
from .fonts import draw_text, length
from .text import xml_text

NEGATIVE, POSITIVE = (33, 102, 172), (179, 88, 6)  # as js/lib/heatmap.ts diverging()
WIDTH = 760


def diverging(value: float) -> tuple[int, int, int]:
    v = max(-1.0, min(1.0, value))
    end = NEGATIVE if v < 0 else POSITIVE
    r, g, b = (round(255 + (e - 255) * abs(v)) for e in end)
    return r, g, b


def _title(attr: Attribution) -> list[str]:
    lines = [
        f"{attr.method}, step {attr.step}: {attr.quantity} = {attr.score:.3f}",
        f"p({attr.target!r}) = {attr.p_target:.3f}"
        + (f", p({attr.contrast!r}) = {attr.p_contrast:.3f}" if attr.contrast is not None else ""),
    ]
    if attr.delta is not None:
        lines.append(f"integrated gradients completeness gap: {attr.delta:.3g}")
    return lines


def _layout(attr: Attribution, measure) -> list[tuple[int, float, float, float, str]]:
    """(index, x, y, width, label) per token, wrapped to WIDTH; sign marks in the label."""
    peak = float(attr.scores.abs().max()) or 1.0
    x, y, out = 10.0, 0.0, []
    for i, token in enumerate(attr.tokens):
        score = float(attr.scores[i]) / peak
        mark = "+" if score > 0.05 else "−" if score < -0.05 else ""
        label = shown(token) + (f"{mark}" if mark else "")
        w = measure(label) + 8
        if x + w > WIDTH - 10 and x > 10:
            x, y = 10.0, y + 24
        out.append((i, x, y, w, label))
        x += w + 3
    return out


def to_svg(attr: Attribution) -> str:
    esc = xml_text
    peak = float(attr.scores.abs().max()) or 1.0
    boxes = _layout(attr, lambda s: 7.2 * len(s))
    top = 16 * (len(_title(attr)) + 1)
    height = top + (boxes[-1][2] if boxes else 0) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="monospace" font-size="12">',
        '<rect width="100%" height="100%" fill="#fff"/>',
    ]
    for i, line in enumerate(_title(attr)):
        parts.append(
            f'<text x="10" y="{16 * (i + 1)}" font-weight="{"bold" if i == 0 else "normal"}">{esc(line)}</text>'
        )
    for i, x, y, w, label in boxes:
        r, g, b = diverging(float(attr.scores[i]) / peak)
        dark = abs(float(attr.scores[i]) / peak) > 0.6
        dash = ' stroke-dasharray="3,2"' if i >= attr.n_prompt else ""
        parts.append(
            f'<rect x="{x:.1f}" y="{top + y:.1f}" width="{w:.1f}" height="20" rx="3" fill="rgb({r},{g},{b})" '
            f'stroke="#999"{dash}><title>{esc(f"{i}: {attr.tokens[i]!r} {float(attr.scores[i]):+.4g}")}</title></rect>'
        )
        parts.append(
            f'<text x="{x + 4:.1f}" y="{top + y + 14:.1f}" fill="{"#fff" if dark else "#111"}" '
            f'xml:space="preserve">{esc(label)}</text>'
        )
    parts.append(
        f'<text x="10" y="{height - 10:.0f}" fill="#555">orange (+) pushed towards {esc(repr(attr.target))}'
        f"{', blue (−) towards ' + esc(repr(attr.contrast)) if attr.contrast else ', blue (−) against it'}"
        f"; colour scaled to the largest |score| {peak:.3g}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def to_png(attr: Attribution, scale: int = 2) -> bytes:
    size = 12 * scale
    boxes = _layout(attr, lambda s: length(s, size) / scale)
    top = 16 * (len(_title(attr)) + 1)
    height = top + (boxes[-1][2] if boxes else 0) + 40
    image = Image.new("RGB", (WIDTH * scale, int(height * scale)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(_title(attr)):
        draw_text(draw, (10 * scale, (4 + 16 * i) * scale), line, size, fill="black")
    peak = float(attr.scores.abs().max()) or 1.0
    for i, x, y, w, label in boxes:
        colour = diverging(float(attr.scores[i]) / peak)
        box = [x * scale, (top + y) * scale, (x + w) * scale, (top + y + 20) * scale]
        draw.rounded_rectangle(box, radius=3 * scale, fill=colour, outline="#999999")
        dark = abs(float(attr.scores[i]) / peak) > 0.6
        draw_text(draw, ((x + 4) * scale, (top + y + 3) * scale), label, size, fill="white" if dark else "#111111")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def to_html(attr: Attribution) -> str:
    data = {
        "method": attr.method,
        "step": attr.step,
        "target": attr.target,
        "contrast": attr.contrast,
        "p_target": attr.p_target,
        "p_contrast": attr.p_contrast,
        "score": attr.score,
        "tokens": attr.tokens,
        "scores": attr.scores.tolist(),
        "delta": attr.delta,
        "head_importance": None if attr.head_importance is None else attr.head_importance.tolist(),
        "record": getattr(attr.trace, "record", None),
    }
    payload = json.dumps(data).replace("<", "\\u003c")
    title = xml_text(_title(attr)[0])
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>body {{ font-family: system-ui, sans-serif; margin: 24px; }}</style></head><body>\n"
        f'{to_svg(attr)}\n<p style="color:#666;font-size:12px">Exported by llm-widgets; the scores and the run '
        f"record are embedded below as JSON.</p>\n"
        f'<script type="application/json" id="llm-widgets-data">{payload}</script>\n</body></html>\n'
    )


def render(attr: Attribution, fmt: str) -> bytes:
    """The file's bytes for "png", "svg" or "html" (what the widgets' buttons download)."""
    return to_bytes(attr, fmt, to_png, to_svg, to_html)


def save(attr: Attribution, path: str | Path) -> Path:
    """Write the figure; the format follows the suffix (.png, .svg, .html)."""
    return write(path, lambda fmt: render(attr, fmt))
