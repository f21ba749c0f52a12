"""A SampleTree as a picture: its layout (left to right, each branch as tall as the answers through
it), drawn by the view (js/sample_tree_view.ts places the same boxes) and exported as PNG or SVG
(matplotlib) and standalone HTML (the SVG, the answers and the data)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..analysis import SampleTree
from ..analysis.samples import Node
from .files import to_bytes, write
from .text import plain_label, xml_text

COLOUR_BY = ("entropy", "decisiveness")


def _segment_end(tree: SampleTree, node: Node) -> Node:
    """Down a chain of single children (no answer ending on the way): where the next split is."""
    while len(node.children) == 1 and node.count + node.forced == sum(
        tree.nodes[c].count + tree.nodes[c].forced for c in node.children
    ):
        node = tree.nodes[node.children[0]]
    return node


def segments(tree: SampleTree) -> list[dict]:
    """The boxes: a run of tokens every answer through it shares, from one split to the next.
    column: splits passed; y0, y1: fractions of the height, by answers through it (forced ones
    counted as one each); node: the last node (the split after it); leaf: no split after."""
    out: list[dict] = []

    def place(start: Node, column: int, y0: float, y1: float) -> None:
        end = _segment_end(tree, start)
        chain = [end]
        while chain[-1].id != start.id:
            chain.append(tree.nodes[chain[-1].parent])  # type: ignore[index]
        text = "".join(n.token for n in reversed(chain))
        out.append(_box(tree, start, end, text, column, y0, y1))
        mass = end.count + end.forced
        y = y0
        for child in (tree.nodes[c] for c in end.children):
            height = (y1 - y0) * (child.count + child.forced) / (mass or 1)
            place(child, column + 1, y, y + height)
            y += height

    place(tree.nodes[0], 0, 0.0, 1.0)
    return out


def _box(tree: SampleTree, start: Node, end: Node, text: str, column: int, y0: float, y1: float) -> dict:
    outcome = ""
    if not end.children and tree.scorer is not None and end.samples:
        outcome = str(tree.outcome[end.samples[0]])
    return {
        "node": end.id,
        "first": start.id,
        "column": column,
        "y0": y0,
        "y1": y1,
        "text": text,
        "count": end.count,
        "forced": end.forced,
        "prob": start.prob,
        "entropy": end.entropy if end.children else None,
        "decisiveness": end.decisiveness,
        "leaf": not end.children,
        "outcome": outcome,
    }


def render(tree: SampleTree, fmt: str, colour_by: str = "entropy") -> bytes:
    return to_bytes(
        tree,
        fmt,
        lambda t: _drawn(t, "png", colour_by),
        lambda t: _drawn(t, "svg", colour_by).decode(),
        lambda t: _html(t, colour_by),
    )


def _drawn(tree: SampleTree, fmt: str, colour_by: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    boxes = segments(tree)
    columns = max(b["column"] for b in boxes) + 1
    fig = Figure(figsize=(min(4 + 2.2 * columns, 24), 1 + 0.32 * max(len(tree.leaves()), 4)), layout="constrained")
    ax = fig.subplots()
    values = [b[colour_by] for b in boxes if b[colour_by] is not None]
    top = max(values, default=0.0) or 1.0
    cmap = colormaps["Purples"]
    for b in boxes:
        value = b[colour_by]
        colour = "#f0f0f0" if value is None else cmap(0.15 + 0.7 * value / top)
        ax.barh(
            (b["y0"] + b["y1"]) / 2, 0.96, left=b["column"], height=b["y1"] - b["y0"], color=colour, edgecolor="white"
        )
        label = (
            b["text"].replace("\n", "↵")[-28:] + (f"  → {b['outcome']}" if b["outcome"] else "") + f"  ({b['count']})"
        )
        if b["y1"] - b["y0"] > 0.6 / max(len(tree.leaves()), 1):
            ax.text(b["column"] + 0.02, (b["y0"] + b["y1"]) / 2, plain_label(label), va="center", fontsize=7)
    ax.set(xlim=(0, columns), ylim=(1, 0), xticks=[], yticks=[])
    ax.set_title(plain_label(f"{tree.model.name}: {tree.is_forced.count(False)} answers, coloured by {colour_by}"))
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _html(tree: SampleTree, colour_by: str) -> str:
    data = json.dumps(
        {
            "settings": tree.settings,
            "answers": tree.texts,
            "outcomes": [str(o) for o in tree.outcome],
            "segments": segments(tree),
        }
    ).replace("<", "\\u003c")
    items = "".join(f"<li>{xml_text(t)}</li>" for t in tree.texts)
    svg = _drawn(tree, "svg", colour_by).decode("utf-8")
    svg = svg[svg.index("<svg") :]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{xml_text(tree.model.name)} sample tree</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px;color:#111;background:#fff}}</style></head><body>
<h1>{xml_text(tree.model.name)}: the answers sampling gives</h1>
{svg}
<ol start="0">{items}</ol>
<script type="application/json" id="llm-widgets-data">{data}</script>
</body></html>
"""


def save(tree: SampleTree, path: str | Path, colour_by: str = "entropy") -> Path:
    return write(path, lambda fmt: render(tree, fmt, colour_by))
