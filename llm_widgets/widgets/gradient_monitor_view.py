"""The GradientMonitor's view: live bokeh charts, alerts and steering sliders.

Charts are bokeh inside the widget layout (`jupyter_bokeh.BokehModel`, so they
update through the comm with no server and no CDN) fed by ColumnDataSource
.stream, throttled: new steps are buffered and sent at most every
`min_interval` seconds, so a fast loop never floods the browser. The controls
(status, alerts, a scale slider and a clip box per group, export buttons) are
an anywidget. Sliders set the monitor's steering when the kernel is free: between
cells, or live when the loop runs in a thread. The flight recorder's incidents are listed
with a button that replays the step under the debugger's breakpoints and says what it found.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets
import numpy as np
import traitlets

from ..errors import InputError, WrongTypeError
from ..export import monitor as monitor_figure
from ..export.files import write
from ..training.monitor import HIST_EDGES, GradientMonitor
from ._frontend import Answers, StaticFallback, bundle

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _colour(i: int, n: int) -> str:
    if n <= len(PALETTE):
        return PALETTE[i]
    from bokeh.palettes import Turbo256

    return Turbo256[int(20 + 200 * i / max(1, n - 1))]


# The charts' inks per theme: the page's own background shade (JupyterLab's light and dark layout colour),
# text and axes with 4.5:1 or more on it, grid lines faint.
CHART_INK = {
    False: {"background": "#ffffff", "text": "#222222", "axis": "#555555", "grid": "#e5e5e5", "loss": "#333333"},
    True: {"background": "#212121", "text": "#e0e0e0", "axis": "#9e9e9e", "grid": "#3a3a3a", "loss": "#e0e0e0"},
}


def percentiles(counts: list[int], zeros: int, qs=(0.05, 0.5, 0.95)) -> list[float]:
    """log10 |g| at the given quantiles, from a histogram on HIST_EDGES (zeros below every bin)."""
    total = sum(counts) + zeros
    if total == 0:
        return [math.nan] * len(qs)
    cumulative = np.cumsum([zeros, *counts]) / total
    edges = HIST_EDGES.tolist()
    out = []
    for q in qs:
        i = int(np.searchsorted(cumulative, q))
        out.append(float(edges[0] - 1) if i == 0 else float(edges[min(i, len(edges) - 1)]))
    return out


class MonitorControls(Answers, anywidget.AnyWidget):
    _esm = bundle("gradient_monitor")
    _css = bundle("gradient_monitor", ".css")

    groups = traitlets.List(traitlets.Unicode(), help="the parameter groups monitored (one line each)").tag(sync=True)
    colours = traitlets.List(traitlets.Unicode(), help="each group's colour in the charts").tag(sync=True)
    step = traitlets.Int(0, help="the latest training step recorded").tag(sync=True)
    steps_plotted = traitlets.Int(0, help="steps drawn in the charts so far").tag(sync=True)
    loss = traitlets.Float(allow_none=True, help="the latest loss, or None").tag(sync=True)
    global_norm = traitlets.Float(allow_none=True, help="the latest global gradient norm, or None").tag(sync=True)
    alerts = traitlets.List(
        traitlets.Dict(
            per_key_traits={
                "step": traitlets.Int(),
                "group": traitlets.Unicode(),
                "kind": traitlets.Unicode(),
                "message": traitlets.Unicode(),
            }
        ),
        help="the latest 20 alerts, newest last: {step, group, kind, message}",
    ).tag(sync=True)
    n_alerts = traitlets.Int(0, help="alerts raised so far").tag(sync=True)
    steering = traitlets.Dict(
        value_trait=traitlets.Dict(), help="what the sliders ask: {group: {'scale': s, 'clip': c or None}}"
    ).tag(sync=True)
    applied = traitlets.Dict(
        value_trait=traitlets.Dict(), help="what the monitor applies: {pattern: {'scale', 'clip', 'groups'}}"
    ).tag(sync=True)
    error = traitlets.Unicode(help="why the last steering change was refused ('' when it was not)").tag(sync=True)
    dark = traitlets.Bool(False, help="the page under the widget is dark (the front end tells): the charts follow").tag(
        sync=True
    )
    incidents = traitlets.List(
        traitlets.Dict(),
        help="the flight recorder's incidents, oldest first: {step, rank, kinds, groups, messages, worst, ...}",
    ).tag(sync=True)
    exporter: Callable[[str], bytes] | None = None  # the view's render(fmt), set by GradientMonitorView
    replayer: Callable[[int], dict] | None = None  # replays incident i, set by GradientMonitorView

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: exports of the charts, replays of incidents."""
        if request.get("what") == "replay" and self.replayer is not None:
            return {"type": "replay", **self.replayer(self.number(request, "index"))}, []
        if request.get("what") != "export" or self.exporter is None:
            raise InputError(f"unknown request {request.get('what')!r}: the monitor answers 'export' and 'replay'")
        fmt = str(request.get("format"))
        return {"type": "file", "name": f"gradient-monitor.{fmt}", "format": fmt}, [self.exporter(fmt)]


_BOKEHJS_SHOWN = False


def _ensure_bokehjs() -> None:
    """jupyter_bokeh renders with the page's BokehJS: load it once per kernel, inline (never the CDN)."""
    global _BOKEHJS_SHOWN
    if _BOKEHJS_SHOWN:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(resources=INLINE, hide_banner=True)
    _BOKEHJS_SHOWN = True


class GradientMonitorView(StaticFallback, ipywidgets.VBox):
    """`lw.GradientMonitorView(monitor)`: display it, then train; it follows the monitor."""

    def __init__(self, monitor: GradientMonitor, *, min_interval: float = 0.5, max_groups_drawn: int = 40):
        from jupyter_bokeh import BokehModel

        if not isinstance(monitor, GradientMonitor):
            raise WrongTypeError(
                f"GradientMonitorView takes a GradientMonitor (lw.GradientMonitor(model)); got {type(monitor).__name__}"
            )
        _ensure_bokehjs()
        self.monitor = monitor
        self.min_interval = min_interval
        groups = monitor.groups[:max_groups_drawn]
        self._keys = {g: f"g{i}" for i, g in enumerate(groups)}
        colours = [_colour(i, len(groups)) for i in range(len(groups))]

        self.charts, self._figures = self._make_charts(colours)
        self.paint(dark=False)
        self.chart = BokehModel(self.charts)
        self.controls = MonitorControls(groups=groups, colours=colours)
        self.controls.observe(self._on_sliders, names="steering")
        self.controls.observe(lambda change: self.paint(change["new"]), names="dark")
        self.controls.exporter = self.render
        self.controls.replayer = self.replay
        self._pending: list[dict] = []
        self._sent_until = 0  # steps of monitor.steps already streamed
        self._hist_sent = 0
        self._ratio_sent = 0  # steps whose update ratios were streamed
        self._last_flush = 0.0
        self._flush_scheduled = False
        super().__init__([self.controls, self.chart])
        monitor.subscribe(self._on_step, flush=self.flush)
        self.flush()

    def _make_charts(self, colours: list[str]) -> tuple[Any, list[Any]]:
        """The live charts (bokeh, fed by their ColumnDataSources): loss, global norm, norm and update
        ratio per group, the gradients' percentile band."""
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, Legend
        from bokeh.plotting import figure

        def empty() -> dict:  # fresh lists for each source: stream() appends to them
            return {"step": [], **{k: [] for k in self._keys.values()}}

        self.loss_source = ColumnDataSource({"step": [], "loss": [], "global_norm": []})
        self.norm_source = ColumnDataSource(empty())
        self.ratio_source = ColumnDataSource(empty())
        self.hist_source = ColumnDataSource(
            {"step": [], **{f"{k}_{q}": [] for k in self._keys.values() for q in ("lo", "mid", "hi")}}
        )

        def chart(title: str, height: int, width: int, *, log: bool) -> Any:
            return figure(
                title=title,
                height=height,
                width=width,
                tools="pan,wheel_zoom,box_zoom,reset,hover",
                x_axis_label="step",
                y_axis_type="log" if log else "linear",
            )

        loss = chart("loss", 200, 380, log=True)
        self._loss_line = loss.line(
            "step", "loss", source=self.loss_source, line_width=2, color=CHART_INK[False]["loss"]
        )
        total = chart("global gradient norm", 200, 380, log=True)
        total.line("step", "global_norm", source=self.loss_source, line_width=2, color="#d62728")
        norms = chart("gradient norm per group", 280, 470, log=True)
        ratios = chart("update / weight per group", 280, 330, log=True)
        hist = chart("log10 |gradient|: 5th-95th percentile band and median", 260, 470, log=False)
        items = []
        for (group, key), colour in zip(self._keys.items(), colours):
            line = norms.line("step", key, source=self.norm_source, color=colour, line_width=1.5)
            ratios.line("step", key, source=self.ratio_source, color=colour, line_width=1.5)
            hist.varea("step", f"{key}_lo", f"{key}_hi", source=self.hist_source, fill_color=colour, fill_alpha=0.12)
            hist.line("step", f"{key}_mid", source=self.hist_source, color=colour, line_width=1.5)
            items.append((group, [line]))
        norms.add_layout(Legend(items=items, label_text_font_size="8pt", click_policy="hide"), "right")

        return column(row(loss, total), row(norms, ratios), hist), [loss, total, norms, ratios, hist]

    def close(self) -> None:
        """Close the view, its controls and charts, and stop following the monitor: a closed view
        is freed (the monitor keeps recording). The chart closes itself when it is collected
        (jupyter_bokeh's close may run only once)."""
        if "controls" in self.__dict__:  # not when __init__ refused its arguments (close runs from __del__)
            self.monitor.unsubscribe(self._on_step, flush=self.flush)
            self.controls.close()
        super().close()

    def paint(self, dark: bool) -> None:
        """The charts in the page's theme (the front end reports it): backgrounds and inks. Exports
        show the charts as they are on screen."""
        ink = CHART_INK[bool(dark)]
        # the layout's own boxes too: the gaps between charts showed their white in a dark theme
        for box in (self.charts, *self.charts.children):
            box.styles = {"background-color": ink["background"]}
        for fig in self._figures:
            # the margins around a plot take the page's colour from CSS, not from bokeh's canvas: bokeh
            # clears its canvas half a pixel in (hidpi), so a repaint in a new theme left the old
            # margin colour as a thin line at each chart's top and left edge
            fig.border_fill_color = None
            fig.styles = {"background-color": ink["background"]}
            fig.background_fill_color = ink["background"]
            fig.outline_line_color = ink["grid"]
            if fig.title is not None and not isinstance(fig.title, str):
                fig.title.text_color = ink["text"]
            for axis in fig.axis:
                axis.axis_label_text_color = axis.major_label_text_color = ink["text"]
                axis.axis_line_color = axis.major_tick_line_color = axis.minor_tick_line_color = ink["axis"]
            for grid in fig.grid:
                grid.grid_line_color = ink["grid"]
            for legend in fig.legend:
                legend.background_fill_color = ink["background"]
                legend.label_text_color = ink["text"]
                legend.border_line_color = ink["grid"]
        self._loss_line.glyph.line_color = ink["loss"]

    # --- from the monitor to the screen, throttled ---

    def _on_step(self, record: dict) -> None:
        if time.monotonic() - self._last_flush >= self.min_interval:
            self.flush(final=False)  # the newest step may still get its loss (monitor.log)
        elif not self._flush_scheduled:  # the rest goes out when the kernel is free again
            try:
                asyncio.get_running_loop().call_later(self.min_interval, self.flush)
                self._flush_scheduled = True
            except RuntimeError:
                pass

    def flush(self, final: bool = True) -> None:
        """Send every step not yet drawn (the monitor calls this at the end of training too)."""
        self._flush_scheduled = False
        self._last_flush = time.monotonic()
        m = self.monitor
        steps = m.steps[self._sent_until : len(m.steps) if final else len(m.steps) - 1]
        if steps:
            n = len(m.groups)
            first = self._sent_until
            rows = m.rows[first * n : (first + len(steps)) * n]
            by_step: dict[int, dict] = {}
            for r in rows:
                by_step.setdefault(r["step"], {})[r["group"]] = r
            self.loss_source.stream(
                {
                    "step": [s["step"] for s in steps],
                    "loss": [math.nan if s["loss"] is None else s["loss"] for s in steps],
                    "global_norm": [_positive(s["global_norm"]) for s in steps],
                }
            )
            self.norm_source.stream(
                {
                    "step": [s["step"] for s in steps],
                    **{
                        k: [_positive(by_step[s["step"]][g]["grad_norm"]) for s in steps] for g, k in self._keys.items()
                    },
                }
            )
            self._sent_until += len(steps)
        self._stream_ratios()
        hists = m.histograms[self._hist_sent :]
        if hists:
            by_step: dict[int, dict] = {}
            for h in hists:
                by_step.setdefault(h["step"], {})[h["group"]] = percentiles(h["counts"], h["zeros"])
            data: dict[str, Any] = {"step": list(by_step)}
            for g, k in self._keys.items():
                for j, q in enumerate(("lo", "mid", "hi")):
                    data[f"{k}_{q}"] = [by_step[s].get(g, [math.nan] * 3)[j] for s in by_step]
            self.hist_source.stream(data)
            self._hist_sent = len(m.histograms)
        c = self.controls
        with c.hold_sync():
            c.step = m.step_count
            c.steps_plotted = self._sent_until
            last = m.steps[-1] if m.steps else {}
            c.loss = last.get("loss")
            c.global_norm = last.get("global_norm")
            c.n_alerts = len(m.alerts)
            c.alerts = [{k: a[k] for k in ("step", "group", "kind", "message")} for a in m.alerts[-20:]]
            c.applied = {p: {"scale": s.scale, "clip": s.clip, "groups": list(s.groups)} for p, s in m.steering.items()}
            shown = [i["step"] for i in c.incidents]
            if shown != [i.step for i in m.incidents]:
                c.incidents = [i.summary() for i in m.incidents]

    def replay(self, index: int) -> dict:
        """Replay incident `index` (the button beside it): what the breakpoints found, in words."""
        incidents = self.monitor.incidents
        if not 0 <= index < len(incidents):
            raise InputError(f"no incident {index}: the monitor has {len(incidents)}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.monitor.replay(incidents[index])
        summary = result.summary()
        summary["text"] = _replay_text(summary, [str(w.message) for w in caught])
        return summary

    def _stream_ratios(self) -> None:
        """Update ratios of the steps whose measurement is done (every updates_every steps)."""
        m = self.monitor
        n = len(m.groups)
        ready = []
        while self._ratio_sent < len(m.steps):
            rows = m.rows[self._ratio_sent * n : (self._ratio_sent + 1) * n]
            if m.update_pending == rows[0]["step"]:
                break  # its optimizer step has not been measured yet
            if rows[0]["update_ratio"] is not None:
                ready.append(rows)
            self._ratio_sent += 1
        if ready:
            self.ratio_source.stream(
                {
                    "step": [rows[0]["step"] for rows in ready],
                    **{
                        k: [_positive(next(r["update_ratio"] for r in rows if r["group"] == g)) for rows in ready]
                        for g, k in self._keys.items()
                    },
                }
            )

    # --- from the sliders to the monitor ---

    def _on_sliders(self, change) -> None:
        old, new = change["old"] or {}, change["new"] or {}
        try:
            for group in set(old) | set(new):
                if old.get(group) == new.get(group):
                    continue
                setting = new.get(group) or {}
                scale = float(setting.get("scale", 1.0))
                clip = setting.get("clip")
                self.monitor.steer(group, scale=scale, clip=None if clip in (None, "") else float(clip))
            self.controls.error = ""
        except (ValueError, TypeError) as error:
            self.controls.error = str(error)
        self.flush()

    # --- without a widget front end ---

    def static_figure(self) -> bytes | None:
        return self.render("png") if self.monitor.steps else None

    def static_text(self) -> str:
        c = self.controls
        loss = "-" if c.loss is None else f"{c.loss:.4g}"
        norm = "-" if c.global_norm is None else f"{c.global_norm:.4g}"
        return (
            f"gradient monitor: step {c.step}, loss {loss}, global gradient norm {norm}, {c.n_alerts} alerts\n"
            f"groups: {', '.join(c.groups)}"
        )

    # --- marimo ---

    def _display_(self):
        """marimo's display protocol: marimo renders anywidgets but neither ipywidgets containers nor
        jupyter_bokeh, so there the controls run live and the charts are the steps recorded so far
        (standalone bokeh, inline resources, in an iframe): run the cell again to refresh them."""
        import marimo as mo

        note = (
            "live charts need Jupyter (jupyter_bokeh); in marimo they show the steps recorded when this "
            f"cell ran ({len(self.monitor.steps)}): run it again to refresh them"
        )
        charts = mo.iframe(self.render("html").decode("utf-8"), height="900px")
        return mo.vstack([mo.ui.anywidget(self.controls), mo.md(f"*{note}*"), charts])

    # --- export ---

    def save(self, path: str | Path) -> Path:
        """The charts as .html (standalone bokeh, resources inline), .png or .svg (matplotlib)."""
        return write(path, self.render)

    def render(self, fmt: str) -> bytes:
        self.flush()
        return monitor_figure.render(
            self.monitor, fmt, charts=self.charts, groups=list(self._keys), colours=list(self.controls.colours)
        )


def _replay_text(summary: dict, warned: list[str]) -> str:
    """A replay's findings as the view says them."""
    where = (
        f"first breakpoint hit: {summary['module'] or 'the model'} ({summary['phase']}): {summary['reason']}"
        if summary["module"] is not None
        else "no breakpoint hit (no NaN/Inf made, no 10x jump of a block's norm)"
    )
    worst = summary["worst"]
    example = ""
    if worst:
        example = f"; worst example {worst['example']} of batch {worst['batch']} (loss {_short(worst['loss'])})"
    exact = (
        "gradients equal the step's"
        if summary["matches"]
        else "gradients differ from the step's (weights of another step)"
        if not summary["exact"]
        else "gradients differ from the step's"
    )
    error = f"; the forward raised {summary['error']}" if summary["error"] else ""
    return f"step {summary['step']} (rank {summary['rank']}): {where}{example}; {exact}{error}" + "".join(
        f" ({w})" for w in warned
    )


def _short(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.4g}"


def _positive(value) -> float:
    """Log axes cannot show 0 or None: NaN leaves a gap."""
    return value if value is not None and value > 0 and math.isfinite(value) else math.nan
