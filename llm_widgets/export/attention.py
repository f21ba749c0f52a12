"""Attention figures as files: PNG, SVG (tokens as text) and standalone HTML.

Built from the same data the widget draws (the pooled map of the selected
head and region, the selected query's row), so a figure is what was on screen.
No network: the heatmap travels as an embedded PNG, token text is escaped.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from ..trace import Trace
from ..trace.trace import OVERVIEW  # the pooled size the widget paints, and the figure's resolution
from .files import to_bytes, write
from .fonts import draw_text, font_for
from .text import xml_text

SIDE = 420  # drawn size of the heatmap, px (as in the widget)
LABELLED = 48  # up to this many tokens per axis, each is labelled

# The colour map of js/lib/heatmap.ts (light to dark, monotone in lightness).
STOPS = np.array(
    [[255, 255, 255], [224, 236, 244], [158, 188, 218], [140, 150, 198], [136, 86, 167], [110, 1, 107], [50, 0, 60]],
    dtype=np.float64,
)


def colours(values: np.ndarray) -> np.ndarray:
    """uint8 RGB of weights in [0, 1] (clamped), shape [..., 3]."""
    v = np.clip(np.nan_to_num(values), 0, 1) * (len(STOPS) - 1)
    i = np.minimum(len(STOPS) - 2, np.floor(v).astype(int))
    t = (v - i)[..., None]
    return np.round(STOPS[i] + (STOPS[i + 1] - STOPS[i]) * t).astype(np.uint8)


def shown(token: str) -> str:
    """Visible form of a token, as the widget shows it."""
    return token.replace("\n", "↵").replace("\t", "⇥") or "∅"


@dataclass
class AttentionFigure:
    """What one figure shows: a head, a region of its map, and maybe a query's row."""

    model_name: str
    layer: int
    head: int
    tokens: list[str]
    n_prompt: int
    matrix: np.ndarray  # pooled [rows, cols] of the region
    queries: tuple[int, int]
    keys: tuple[int, int]
    query: int = -1
    query_row: np.ndarray | None = None  # the query's attention over all positions (0 outside the keys)
    record: dict = field(default_factory=dict)
    stack: str = "self"  # an encoder-decoder's "encoder", "decoder" or "cross" attention
    whole: tuple[tuple[int, int], tuple[int, int]] | None = None  # its queries' and keys' spans (None: all tokens)

    @property
    def title(self) -> str:
        region = ""
        whole = self.whole or ((0, len(self.tokens)), (0, len(self.tokens)))
        if (self.queries, self.keys) != tuple(whole):
            region = f", queries {self.queries[0]}-{self.queries[1] - 1}, keys {self.keys[0]}-{self.keys[1] - 1}"
        which = "" if self.stack == "self" else f" ({self.stack} attention)"
        return f"{self.model_name}: layer {self.layer}, head {self.head}{which}{region}"

    def top_keys(self, k: int = 8) -> list[tuple[int, float]]:
        if self.query_row is None:
            return []
        order = np.argsort(-self.query_row, kind="stable")[:k]
        return [(int(i), float(self.query_row[i])) for i in order]

    def heatmap_image(self) -> Image.Image:
        """The map alone, one pixel per cell (scaled without smoothing where drawn)."""
        m = self.matrix
        return Image.fromarray(colours(m / (m.max() if m.max() > 0 else 1.0)), "RGB")

    def heatmap_png(self) -> bytes:
        buffer = io.BytesIO()
        self.heatmap_image().save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def attention_figure(
    trace: Trace,
    layer: int,
    head: int,
    *,
    query: int = -1,
    queries: tuple[int, int] | None = None,
    keys: tuple[int, int] | None = None,
    stack: str | None = None,
) -> AttentionFigure:
    part = trace.stack(stack)
    matrix = trace.attention_overview(layer, head, size=OVERVIEW, queries=queries, keys=keys, stack=part.name)
    q0, q1 = part.queries
    if not (query == -1 or q0 <= query < q1):
        raise InputError(f"query {query} is out of range: -1 (none) or {q0} to {q1 - 1}")
    row = None
    if query >= 0:
        row = np.zeros(len(trace), dtype=np.float32)
        row[part.keys[0] : part.keys[1]] = trace.attention(layer, head, queries=query, stack=part.name)[0].numpy()
    return AttentionFigure(
        model_name=trace.model.name,
        layer=layer,
        head=head,
        tokens=list(trace.tokens),
        n_prompt=trace.n_prompt,
        matrix=matrix.numpy(),
        queries=_pair(queries or part.queries),
        keys=_pair(keys or part.keys),
        query=query,
        query_row=row,
        record=trace.record,
        stack=part.name,
        whole=(part.queries, part.keys),
    )


# --- layout shared by SVG and PNG ---


def _layout(fig: AttentionFigure) -> dict:
    rows, cols = fig.matrix.shape
    labelled_q = fig.queries[1] - fig.queries[0] <= LABELLED
    labelled_k = fig.keys[1] - fig.keys[0] <= LABELLED
    left = 110 if labelled_q else 50
    top = 40
    bottom = 110 if labelled_k else 40
    lines = len(fig.top_keys()) + 1 if fig.query >= 0 else 0
    width = left + SIDE + 30
    height = top + SIDE + bottom + 16 * lines
    return dict(
        rows=rows,
        cols=cols,
        left=left,
        top=top,
        width=width,
        height=height,
        labelled_q=labelled_q,
        labelled_k=labelled_k,
        notes_y=top + SIDE + bottom,
    )


def _ticks(span: tuple[int, int], labelled: bool, fig: AttentionFigure) -> list[tuple[float, str]]:
    """(fraction along the axis, label) pairs: every token when few, else positions."""
    start, stop = span
    n = stop - start
    if labelled:
        return [((i + 0.5) / n, shown(fig.tokens[start + i])) for i in range(n)]
    step = max(1, round(n / 8))
    return [((i + 0.5) / n, str(start + i)) for i in range(0, n, step)]


def _notes(fig: AttentionFigure) -> list[str]:
    if fig.query < 0:
        return []
    out = [f"query {fig.query} {shown(fig.tokens[fig.query])!r} attends most to:"]
    out += [f"  {k:>5} {shown(fig.tokens[k])!r}: {w:.3f}" for k, w in fig.top_keys()]
    return out


def to_svg(fig: AttentionFigure) -> str:
    lay = _layout(fig)
    esc = xml_text
    left, top = lay["left"], lay["top"]
    png = base64.b64encode(fig.heatmap_png()).decode("ascii")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay["width"]}" height="{lay["height"]}" '
        f'viewBox="0 0 {lay["width"]} {lay["height"]}" font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="{left}" y="20" font-size="13" font-weight="bold">{esc(fig.title)}</text>',
        f'<image x="{left}" y="{top}" width="{SIDE}" height="{SIDE}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>',
        f'<rect x="{left}" y="{top}" width="{SIDE}" height="{SIDE}" fill="none" stroke="#999"/>',
    ]
    for frac, label in _ticks(fig.queries, lay["labelled_q"], fig):
        y = top + frac * SIDE
        parts.append(
            f'<text x="{left - 4}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle">{esc(label)}</text>'
        )
    for frac, label in _ticks(fig.keys, lay["labelled_k"], fig):
        x = left + frac * SIDE
        parts.append(
            f'<text transform="translate({x:.1f},{top + SIDE + 6}) rotate(60)" '
            f'dominant-baseline="middle">{esc(label)}</text>'
        )
    if fig.query >= 0 and fig.queries[0] <= fig.query < fig.queries[1]:
        h = SIDE / lay["rows"]
        row = int((fig.query - fig.queries[0]) * lay["rows"] / (fig.queries[1] - fig.queries[0]))
        parts.append(
            f'<rect x="{left}" y="{top + row * h:.1f}" width="{SIDE}" height="{max(h, 2):.1f}" '
            f'fill="none" stroke="#e6550d" stroke-width="2"/>'
        )
    for i, line in enumerate(_notes(fig)):
        parts.append(f'<text x="{left}" y="{lay["notes_y"] + 16 * i}" xml:space="preserve">{esc(line)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def to_png(fig: AttentionFigure, scale: int = 2) -> bytes:
    lay = _layout(fig)
    left, top = lay["left"] * scale, lay["top"] * scale
    side = SIDE * scale
    image = Image.new("RGB", (lay["width"] * scale, lay["height"] * scale), "white")
    draw = ImageDraw.Draw(image)
    size = 11 * scale
    draw_text(draw, (left, 8 * scale), fig.title, 13 * scale, fill="black")
    heat = fig.heatmap_image().resize((side, side), Image.Resampling.NEAREST)
    image.paste(heat, (left, top))
    draw.rectangle([left, top, left + side, top + side], outline="#999999")
    for frac, label in _ticks(fig.queries, lay["labelled_q"], fig):
        draw_text(draw, (left - 4 * scale, top + frac * side), label, size, fill="black", anchor="rm")
    for frac, label in _ticks(fig.keys, lay["labelled_k"], fig):
        font, label = font_for(label, size)
        box = font.getbbox(label)
        text = Image.new("RGBA", (int(box[2]) + 4, int(box[3]) + 4), (255, 255, 255, 0))
        ImageDraw.Draw(text).text((0, 0), label, fill="black", font=font)
        turned = text.rotate(-60, expand=True)
        image.paste(turned, (int(left + frac * side - 4 * scale), top + side + 4 * scale), turned)
    if fig.query >= 0 and fig.queries[0] <= fig.query < fig.queries[1]:
        h = side / lay["rows"]
        row = int((fig.query - fig.queries[0]) * lay["rows"] / (fig.queries[1] - fig.queries[0]))
        draw.rectangle(
            [left, top + row * h, left + side, top + row * h + max(h, 2 * scale)], outline="#e6550d", width=2 * scale
        )
    for i, line in enumerate(_notes(fig)):
        draw_text(draw, (left, (lay["notes_y"] + 16 * i) * scale), line, size, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _json_for_script(value) -> str:
    # Inside <script>, "</" would end the element and "<!--" could open a comment: escape "<".
    return json.dumps(value).replace("<", "\\u003c")


def to_html(fig: AttentionFigure) -> str:
    """A page that opens anywhere: the figure inline, tokens coloured by the query's row, data embedded."""
    esc = xml_text
    row = fig.query_row
    peak = float(row.max()) if row is not None and row.max() > 0 else 1.0
    chips = []
    for i, token in enumerate(fig.tokens):
        cls = "tok gen" if i >= fig.n_prompt else "tok"
        style = ""
        if row is not None:
            r, g, b = colours(np.array(row[i] / peak)).tolist()
            dark = row[i] / peak > 0.55
            style = f' style="background:rgb({r},{g},{b});{"color:#fff;" if dark else ""}"'
        if i == fig.query:
            cls += " query"
        weight = f": {row[i]:.3f}" if row is not None else ""
        chips.append(f'<span class="{cls}"{style} title="{esc(f"{i}: {token!r}{weight}")}">{esc(shown(token))}</span>')
    values = (fig.matrix / max(float(fig.matrix.max()), 1e-12) * 255).round().astype(np.uint8)
    data = {
        "model": fig.model_name,
        "layer": fig.layer,
        "head": fig.head,
        "query": fig.query,
        "queries": list(fig.queries),
        "keys": list(fig.keys),
        "tokens": fig.tokens,
        "n_prompt": fig.n_prompt,
        "map": {
            "shape": list(values.shape),
            "dtype": "uint8",
            "max": float(fig.matrix.max()),
            "base64": base64.b64encode(values.tobytes()).decode("ascii"),
        },
        "query_row": row.tolist() if row is not None else None,
        "record": fig.record,
    }
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(fig.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #111; background: #fff; }}
.tokens {{ font-family: monospace; display: flex; flex-wrap: wrap; gap: 2px; max-width: 900px; margin: 12px 0; }}
.tok {{ padding: 1px 3px; border: 1px solid #ddd; border-radius: 3px; white-space: pre; }}
.gen {{ border-style: dashed; border-color: #e6550d; }}
.query {{ outline: 2px solid #e6550d; }}
footer {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1 style="font-size:16px">{esc(fig.title)}</h1>
<div class="tokens" aria-label="tokens{", coloured by the query" if row is not None else ""}">{"".join(chips)}</div>
{to_svg(fig)}
<footer>Exported by llm-widgets. Prompt tokens solid, generated dashed. The data (pooled map, the query's row,
the run record) is embedded below as JSON.</footer>
<script type="application/json" id="llm-widgets-data">{_json_for_script(data)}</script>
</body></html>
"""


def save(fig: AttentionFigure, path: str | Path) -> Path:
    """Write the figure; the format follows the suffix (.png, .svg, .html)."""
    return write(path, lambda fmt: render(fig, fmt))


def render(fig: AttentionFigure, fmt: str) -> bytes:
    """The file's bytes for a format name ("png", "svg", "html"): what the widget's buttons download."""
    return to_bytes(fig, fmt, to_png, to_svg, to_html)


def _pair(span: Any) -> tuple[int, int]:
    """A (start, stop) given as any two-item sequence (the view's zoom is a list)."""
    start, stop = span
    return int(start), int(stop)
