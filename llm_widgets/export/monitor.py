"""The gradient monitor's charts as files: standalone HTML (its live bokeh charts, resources
inline) or PNG / SVG (matplotlib, from the same history)."""

from __future__ import annotations

import io
from typing import Any

from ..errors import InputError
from ..training.monitor import GradientMonitor
from .text import plain_label


def render(monitor: GradientMonitor, fmt: str, *, charts: Any, groups: list[str], colours: list[str]) -> bytes:
    """`charts`: the view's bokeh layout (for "html"); `groups`: those drawn, `colours`: each one's."""
    if fmt == "html":
        from bokeh.embed import file_html
        from bokeh.resources import INLINE

        return file_html(charts, INLINE, title="llm-widgets gradient monitor").encode("utf-8")
    if fmt in ("png", "svg"):
        return _matplotlib(monitor, fmt, groups, colours)
    raise InputError(f"unknown export format {fmt!r}: use 'png', 'svg' or 'html'")


def _matplotlib(monitor: GradientMonitor, fmt: str, groups: list[str], colours: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    frame = monitor.to_dataframe()
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    steps = frame.drop_duplicates("step")
    axes[0, 0].plot(steps.step, steps.loss, color="#333")
    axes[0, 0].set(title="loss", xlabel="step")
    axes[0, 1].plot(steps.step, steps.global_norm, color="#d62728")
    axes[0, 1].set(title="global gradient norm", xlabel="step", yscale="log")
    for group, colour in zip(groups, colours):
        part = frame[frame.group == group]
        label = plain_label(group)  # group names come from the user's patterns: never mathtext
        axes[1, 0].plot(part.step, part.grad_norm, color=colour, label=label, linewidth=1.2)
        axes[1, 1].plot(part.step, part.update_ratio, color=colour, label=label, linewidth=1.2)
    axes[1, 0].set(title="gradient norm per group", xlabel="step", yscale="log")
    axes[1, 1].set(
        title="update / weight per group", xlabel="step", yscale="log" if (frame.update_ratio > 0).any() else "linear"
    )
    if len(groups) <= 12:
        axes[1, 0].legend(fontsize=7)
    for a in monitor.alerts[:50]:
        axes[1, 0].axvline(a["step"], color="#de2d26", alpha=0.2, linewidth=0.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()
