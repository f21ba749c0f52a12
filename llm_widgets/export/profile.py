"""Profile figures: the icicle of module times and the memory timeline, as PNG or SVG
(matplotlib, from the Profile's own rows), standalone HTML (the SVG and the data), and the
Chrome trace (JSON) that Perfetto and HTA open."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .. import checks
from ..analysis import Profile
from ..errors import InputError
from .text import plain_label, xml_text

FORMATS = (".png", ".svg", ".html", ".json")
KIND_COLOURS = {
    "attention": "#6a51a3",
    "mlp": "#e6550d",
    "head": "#31a354",
    "embedding": "#3182bd",
    "norm": "#969696",
    "block": "#9e9ac8",
    "model": "#bdbdbd",
    "other": "#d9d9d9",
}  # as profile_view.ts


def _boxes(profile: Profile, zoom: str = "", levels: int = 5) -> list[tuple[dict, int, float, float]]:
    """(row, level, x0, x1): the layout of js/lib/icicle.ts."""
    rows = profile.modules
    if not rows:
        return []
    root = next((r["module"] for r in rows if r["depth"] == 0), rows[0]["module"])
    names = {r["module"] for r in rows}

    def parent(name: str) -> str | None:
        if name == root:
            return None
        prefix = name
        while "." in prefix:
            prefix = prefix.rpartition(".")[0]
            if prefix in names:
                return prefix
        return root

    children: dict[str, list[dict]] = {}
    for r in rows:
        p = parent(r["module"])
        if p is not None:
            children.setdefault(p, []).append(r)
    start = next((r for r in rows if r["module"] == (zoom or root)), rows[0])
    out = []

    def place(row, level, x0, x1):
        out.append((row, level, x0, x1))
        if level + 1 >= levels:
            return
        x = x0
        for kid in children.get(row["module"], []):
            w = (x1 - x0) * kid["total_s"] / (row["total_s"] or 1)
            place(kid, level + 1, x, x + w)
            x += w

    place(start, 0, 0.0, 1.0)
    return out


def render(profile: Profile, fmt: str, zoom: str = "") -> bytes:
    if fmt == "json":
        return profile.chrome_trace.encode("utf-8")
    if fmt == "html":
        return _html(profile, zoom).encode("utf-8")
    if fmt not in ("png", "svg"):
        raise InputError(f"unknown export format {fmt!r}: use 'png', 'svg', 'html' or 'json' (the Chrome trace)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 2])
    for row, level, x0, x1 in _boxes(profile, zoom):
        top.barh(
            -level, x1 - x0, left=x0, height=0.9, color=KIND_COLOURS.get(row["kind"], "#d9d9d9"), edgecolor="white"
        )
        if x1 - x0 > 0.06:
            top.text(x0 + 0.003, -level, plain_label(row["module"].split(".")[-1]), va="center", fontsize=7)
    top.set(
        title=plain_label(
            f"{profile.model_name}: time by module ({profile.total_s * 1e3:.0f} ms"
            f"{', zoomed into ' + zoom if zoom else ''})"
        ),
        yticks=[],
        xlabel="share of time",
    )
    if profile.timeline:
        t, b = zip(*profile.timeline)
        bottom.plot(t, [x / 2**20 for x in b], color="#6a51a3")
        for start in profile.step_times:
            bottom.axvline(start, color="#e6550d", alpha=0.3, linewidth=0.8)
    bottom.set(title="memory allocated during the run (forwards marked)", xlabel="seconds", ylabel="MiB")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()


def _html(profile: Profile, zoom: str) -> str:
    data = json.dumps(
        {
            "findings": profile.findings(),
            "modules": profile.modules,
            "steps": profile.steps,
            "total_s": profile.total_s,
            "kv_cache_bytes": profile.kv_cache_bytes,
        }
    )
    data = data.replace("<", "\\u003c")
    items = "".join(f"<li>{xml_text(f)}</li>" for f in profile.findings())
    svg = render(profile, "svg", zoom).decode("utf-8")
    svg = svg[svg.index("<svg") :]  # without the XML prolog, inside HTML
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{xml_text(profile.model_name)} profile</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px;color:#111;background:#fff}}</style></head><body>
<h1>{xml_text(profile.model_name)}: where time and memory go</h1><ul>{items}</ul>
{svg}
<script type="application/json" id="llm-widgets-data">{data}</script>
</body></html>
"""


def save(profile: Profile, path: str | Path, zoom: str = "") -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"cannot save {path.name!r}: the name must end in .png, .svg, .html or .json (Chrome trace)")
    checks.folder_exists(path, "the profile")
    path.write_bytes(render(profile, path.suffix.lower()[1:], zoom))
    return path
