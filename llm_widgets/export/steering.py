"""A steering search's candidates as a figure: success against fluency cost, the Pareto front
joined, the unedited run marked (PNG, SVG, standalone HTML)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..analysis import SteeringSearch
from .files import to_bytes, write
from .text import plain_label, xml_text

KIND_COLOURS = {"attention": "#2b8cbe", "direction": "#e6550d", "none": "#222222"}


def points(search: SteeringSearch) -> list[dict]:
    """Each candidate as the view draws it: label, kind, success, fluency cost, on the front or not."""
    front = {id(c) for c in search.front}
    return [
        {"label": c.label, "kind": c.kind, "success": c.success, "cost": c.fluency_cost, "front": id(c) in front}
        for c in search.candidates
    ]


def title(search: SteeringSearch) -> str:
    aim = f"p({search.want!r}) - p({search.avoid!r})" if search.avoid is not None else f"p({search.want!r})"
    return (
        f"{search.model.name}: {len(search.candidates)} edits tried ({search.forwards} forwards, "
        f"{search.seconds:.1f} s); success = {aim}, cost = KL over the model's own continuation"
    )


def render(search: SteeringSearch, fmt: str) -> bytes:
    return to_bytes(search, fmt, lambda s: _drawn(s, "png"), lambda s: _drawn(s, "svg").decode(), lambda s: _html(s))


def _drawn(search: SteeringSearch, fmt: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for kind, colour in KIND_COLOURS.items():
        chosen = [c for c in search.candidates if c.kind == kind]
        if chosen:
            ax.scatter(
                [c.fluency_cost for c in chosen], [c.success for c in chosen], s=14, color=colour, alpha=0.6, label=kind
            )
    front = search.front
    ax.plot([c.fluency_cost for c in front], [c.success for c in front], color="#31a354", linewidth=1.5, label="front")
    ax.scatter([0.0], [search.plain.success], marker="x", s=50, color=KIND_COLOURS["none"], label="no edit")
    ax.set(xlabel="fluency cost (KL, nats)", ylabel="success")
    ax.set_title(plain_label(title(search)), fontsize=8)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _html(search: SteeringSearch) -> str:
    data = json.dumps({"plain": search.plain.success, "points": points(search)}).replace("<", "\\u003c")
    rows = "".join(
        f"<tr><td>{xml_text(c.label)}</td><td>{c.success:+.4f}</td><td>{c.fluency_cost:.4f}</td></tr>"
        for c in search.front
    )
    svg = _drawn(search, "svg").decode("utf-8")
    svg = svg[svg.index("<svg") :]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{xml_text(search.model.name)} steering search</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px;color:#111;background:#fff}}td{{padding:2px 8px}}</style>
</head><body>
<h1>{xml_text(title(search))}</h1>
{svg}
<table><tr><th>the front: edit</th><th>success</th><th>fluency cost</th></tr>{rows}</table>
<script type="application/json" id="llm-widgets-data">{data}</script>
</body></html>
"""


def save(search: SteeringSearch, path: str | Path) -> Path:
    return write(path, lambda fmt: render(search, fmt))
