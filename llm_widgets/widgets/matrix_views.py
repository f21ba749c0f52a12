"""Views of the localisation analyses, one per result: `LensView(trace)`,
`PatchingView(patching_or_sweep)`, `CompareView(comparison)`.

All three are a labelled matrix (layers down, positions or heads across) drawn
by one front end (js/matrix_view.ts) as a table of cells with text: hover for
the value, click for detail. Long sequences travel a window at a time (the
lens: only the positions on screen are decoded and sent). Clicks on heads open
them in a linked AttentionView, or add an AblateHead to a linked editor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets

from ..analysis import Comparison, Divergence, LogitLens, Patching, Sweep, compare
from ..errors import InputError, WrongTypeError
from ..export import matrix as export
from ..trace import AblateHead, Trace
from ._frontend import Answers, StaticFallback, bundle, linked
from .attention_editor import AttentionEditor
from .attention_view import AttentionView

WINDOW = 24  # positions of the lens shown (and decoded) at once
DETAIL_K = 10  # the top tokens listed for a clicked lens cell
BARS = 10  # the blame's largest shares drawn as bars


class MatrixWidget(Answers, StaticFallback, anywidget.AnyWidget):
    """What the three views share: the matrix on screen, its labels and scale, clicks, export."""

    _esm = bundle("matrix_view")
    _css = bundle("matrix_view", ".css")

    kind = traitlets.Unicode(help="'lens', 'patching', 'sweep', 'compare', 'divergence'").tag(sync=True)
    title = traitlets.Unicode(help="the view's title").tag(sync=True)
    summary = traitlets.List(traitlets.Unicode(), help="lines of text above the matrix").tag(sync=True)
    values = traitlets.List(traitlets.List(traitlets.Float()), help="[rows][columns] on screen").tag(sync=True)
    words = traitlets.List(traitlets.List(traitlets.Unicode()), help="a word per cell, or []").tag(sync=True)
    row_labels = traitlets.List(traitlets.Unicode(), help="a label per row").tag(sync=True)
    column_labels = traitlets.List(traitlets.Unicode(), help="a label per column").tag(sync=True)
    scale = traitlets.Unicode("sequential", help="'sequential' (0..vmax) or 'diverging' (-vmax..vmax)").tag(sync=True)
    vmax = traitlets.Float(1.0, help="the value the colour scale's end stands for").tag(sync=True)
    value_name = traitlets.Unicode("value", help="what a cell's number is, for the tooltip").tag(sync=True)
    window_start = traitlets.Int(0, help="first column shown, when the columns travel a window at a time").tag(
        sync=True
    )
    window_total = traitlets.Int(0, help="all columns (0: no window)").tag(sync=True)
    selected = traitlets.List(traitlets.Int(), help="[row, column] clicked, [] for none").tag(sync=True)
    detail = traitlets.List(traitlets.Unicode(), help="lines about the clicked cell").tag(sync=True)
    notes = traitlets.List(traitlets.Unicode(), help="notes under the table, in words").tag(sync=True)
    error = traitlets.Unicode(help="why the last request failed ('' when it did not)").tag(sync=True)
    strip_values = traitlets.List(traitlets.Float(), help="a number per token above the table, [] for none").tag(
        sync=True
    )
    strip_labels = traitlets.List(traitlets.Unicode(), help="the token under each strip value").tag(sync=True)
    strip_name = traitlets.Unicode(help="what the strip's numbers are").tag(sync=True)
    strip_mark = traitlets.Int(-1, help="the strip entry marked (the first split), -1 for none").tag(sync=True)
    bar_labels = traitlets.List(traitlets.Unicode(), help="a label per bar under the table, [] for none").tag(sync=True)
    bar_values = traitlets.List(traitlets.Float(), help="each bar's share (1.0 is all of it)").tag(sync=True)
    bar_name = traitlets.Unicode(help="what the bars' shares are").tag(sync=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.observe(self._on_select, names="selected")

    @traitlets.validate("selected")
    def _check_selected(self, proposal):
        cell = list(proposal.value)
        columns = max(len(self.column_labels), self.window_total)
        if cell and (len(cell) != 2 or not 0 <= cell[0] < len(self.row_labels) or not 0 <= cell[1] < columns):
            raise traitlets.TraitError(
                f"selected must be [] or [row, column] within {len(self.row_labels)} rows and {columns} columns; "
                f"got {cell}"
            )
        return cell

    # subclasses: what a click means
    def _on_select(self, change) -> None:
        pass

    def figure(self) -> export.MatrixFigure:
        return export.MatrixFigure(
            title=self.title,
            values=np.array(self.values, dtype=np.float64).reshape(len(self.row_labels), -1),
            row_labels=list(self.row_labels),
            column_labels=list(self.column_labels),
            scale=self.scale,
            vmax=self.vmax,
            words=[list(r) for r in self.words] or None,
            notes=list(self.summary) + list(self.notes),
            data={"kind": self.kind, "window_start": self.window_start},
        )

    def static_figure(self) -> bytes:
        return export.render(self.figure(), "png")

    def static_text(self) -> str:
        return "\n".join([self.title, *self.summary])

    def save(self, path: str | Path) -> Path:
        """What is on screen as .png, .svg or standalone .html."""
        return export.save(self.figure(), path)

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: only exports ({"what": "export", "format": ...})."""
        if request.get("what") != "export":
            raise InputError(f"unknown request {request.get('what')!r}: this view answers 'export'")
        fmt = str(request.get("format"))
        data = export.render(self.figure(), fmt)
        return {"type": "file", "name": f"{self.kind}.{fmt}", "format": fmt}, [data]


class LensView(MatrixWidget):
    """`lw.LensView(trace, target=" Paris")`: layers x positions, each cell the token the residual
    stream after that layer predicts, coloured by p(target) (or the top token's probability);
    click a cell for its top 10. Positions travel a window at a time."""

    def __init__(self, trace: Trace, target: Any = None, *, k: int = DETAIL_K, **kwargs: Any):
        if not isinstance(trace, Trace):
            raise WrongTypeError(f"LensView takes a Trace (from model.trace(...)), got {type(trace).__name__}")
        self.trace, self.target, self.k = trace, target, k
        n = len(trace)
        start = max(0, n - WINDOW)  # the end of the prompt is where the answer forms
        lens = self._lens(start)
        super().__init__(
            kind="lens",
            window_total=n if n > WINDOW else 0,
            window_start=start,
            row_labels=[f"layer {i}" for i in range(trace.n_layers)],
            scale="sequential",
            vmax=1.0,
            **self._state(lens),
            **kwargs,
        )
        self.observe(self._on_window, names="window_start")

    def _lens(self, start: int) -> LogitLens:
        stop = min(len(self.trace), start + WINDOW)
        return self.trace.logit_lens(k=self.k, target=self.target, positions=list(range(start, stop)))

    def _state(self, lens: LogitLens) -> dict:
        self.lens = lens
        values = lens.target_probs if lens.target_probs is not None else lens.top_probs[..., 0]
        what = f"p({lens.target!r})" if lens.target is not None else "p(top token)"
        return dict(
            values=values.tolist(),
            words=[[cell[0] for cell in row] for row in lens.top_tokens],
            column_labels=[f"{p}:{t}" for p, t in zip(lens.positions, lens.tokens)],
            value_name=what,
            title=f"logit lens of {self.trace.model.name}: the next token each layer predicts, coloured by {what}",
            notes=list(lens.notes),
            detail=[],
            summary=[
                "each cell: the top token of the residual stream after that layer, read through the "
                "final norm and unembedding; the last layer is the model's own prediction"
            ],
        )

    def _on_window(self, change) -> None:
        start = max(0, min(int(change["new"]), max(0, len(self.trace) - WINDOW)))
        try:
            state = self._state(self._lens(start))
        except Exception as error:  # shown; the previous window stays
            self.error = f"{type(error).__name__}: {error}"
            return
        with self.hold_sync():
            for name, value in state.items():
                setattr(self, name, value)
            self.selected = []
            self.error = ""

    def _on_select(self, change) -> None:
        if len(self.selected) != 2:
            self.detail = []
            return
        layer, column = self.selected
        lens = self.lens
        lines = [f"layer {layer}, after {lens.tokens[column]!r} (position {lens.positions[column]}):"]
        lines += [
            f"{t!r} {float(p):.3f}" for t, p in zip(lens.top_tokens[layer][column], lens.top_probs[layer, column])
        ]
        if lens.target_probs is not None and lens.target_ranks is not None:
            lines.append(
                f"{lens.target!r}: p {float(lens.target_probs[layer, column]):.3f}, rank "
                f"{int(lens.target_ranks[layer, column])}"
            )
        self.detail = lines


def _reading(result: Patching) -> str:
    """How to read a cell of this result."""
    if isinstance(result, Sweep):
        return (
            f"{result.clean_score:.3f} without ablation; a cell is the change when that head (or layer part) is "
            f"removed ({result.method})"
        )
    return (
        f"clean {result.clean_score:.3f}, corrupted {result.corrupted_score:.3f}; a cell is the share of the clean "
        f"answer that patching it restores"
    )


class PatchingView(MatrixWidget):
    """`lw.PatchingView(lw.patch(...))` or `lw.PatchingView(lw.ablation_sweep(...))`: the effect of
    each site, tokens or heads across. With `view=` a click on a head opens it there; with
    `editor=` a click on a head of a sweep (or of head patching) ablates it in the editor."""

    def __init__(
        self,
        result: Patching,
        *,
        view: AttentionView | None = None,
        editor: AttentionEditor | None = None,
        **kwargs: Any,
    ):
        if not isinstance(result, Patching):
            raise WrongTypeError(
                f"PatchingView takes the result of lw.patch or lw.ablation_sweep, got {type(result).__name__}"
            )
        self.result = result
        self.view, self.editor = linked(view, AttentionView, "view"), linked(editor, AttentionEditor, "editor")
        effect = result.effect
        if effect.dim() == 3:  # per position: the strongest position of each head
            effect = effect.gather(2, effect.abs().argmax(2, keepdim=True))[..., 0]
        columns = (
            [f"{i}:{t}" for i, t in enumerate(result.tokens)]
            if result.axes[1] == "position"
            else [f"head {h}" for h in range(effect.shape[1])]
        )
        values = effect.clone()
        sweep = isinstance(result, Sweep)
        if isinstance(result, Sweep):
            extra = [x for x in (result.attention, result.mlp) if x is not None]
            values = torch.cat([values, *[x[:, None] for x in extra]], dim=1)
            columns += ["attention", "mlp"][: len(extra)]
        vmax = float(values.abs().max()) if sweep else max(1.0, float(values.abs().max()))
        summary = [f"{result.quantity}: " + _reading(result)]
        if sweep and editor is not None:
            summary.append("click a head to ablate it in the editor")
        elif view is not None and result.axes[1] == "head":
            summary.append("click a head to open it in the attention view")
        super().__init__(
            kind="sweep" if sweep else "patching",
            values=values.tolist(),
            words=[],
            row_labels=[f"layer {i}" for i in range(values.shape[0])],
            column_labels=columns,
            scale="diverging",
            vmax=vmax or 1.0,
            value_name="change" if sweep else "effect",
            title=(
                f"ablation sweep of {result.model_name}"
                if sweep
                else f"activation patching ({result.site}) of {result.model_name}"
            ),
            summary=summary,
            notes=list(result.notes),
            **kwargs,
        )

    def _on_select(self, change) -> None:
        if len(self.selected) != 2:
            return
        layer, column = self.selected
        if self.result.axes[1] != "head" or column >= self.result.effect.shape[1]:
            return
        if self.view is not None:
            self.view.layer, self.view.head = layer, column
        if self.editor is not None:
            edits = [
                e for e in self.editor.edits if not (isinstance(e, AblateHead) and (e.layer, e.head) == (layer, column))
            ]
            self.editor.edits = edits + [AblateHead(layer, column, mode=getattr(self.result, "method", "zero"))]
            self.detail = [f"ablated layer {layer} head {column} in the editor: {self.editor.output_text!r}"]


class CompareView(MatrixWidget):
    """`lw.CompareView(lw.compare(a, b))`: both outputs, the probability each run gave run a's
    tokens, and layers x heads of the largest attention change. `lw.CompareView(editor)` compares
    the editor's output without and with its edits. With `view_a` / `view_b`, a click on a head
    opens it in both."""

    def __init__(
        self,
        comparison: Comparison | AttentionEditor,
        *,
        view_a: AttentionView | None = None,
        view_b: AttentionView | None = None,
        **kwargs: Any,
    ):
        if isinstance(comparison, AttentionEditor):
            comparison = compare(comparison.unedited, comparison.trace)
        if not isinstance(comparison, Comparison):
            raise WrongTypeError(f"CompareView takes the result of lw.compare, got {type(comparison).__name__}")
        views = (linked(view_a, AttentionView, "view_a"), linked(view_b, AttentionView, "view_b"))
        self.comparison, self.views = comparison, [v for v in views if v is not None]
        c = comparison
        summary = [f"a: {c.a.prompt_text!r} → {c.a.output_text!r}", f"b: {c.b.prompt_text!r} → {c.b.output_text!r}"]
        for s in c.steps:
            change = "" if s["delta"] is None else f" ({s['delta']:+.3f})"
            p_b = "not in b's top tokens" if s["p_b_of_a"] is None else f"{s['p_b_of_a']:.3f}"
            summary.append(
                f"step {s['step']}: a {s['token_a']!r} p {s['p_a']:.3f}; b gives it {p_b}{change}; "
                f"b chose {s['token_b']!r}"
            )
        if c.first_diverging_step is not None:
            summary.append(f"the outputs part at step {c.first_diverging_step}")
        values = c.attention_max if c.attention_max is not None else torch.zeros(1, 1)
        super().__init__(
            kind="compare",
            values=values.tolist(),
            words=[],
            row_labels=[f"layer {i}" for i in range(values.shape[0])],
            column_labels=[f"head {h}" for h in range(values.shape[1])],
            scale="sequential",
            vmax=max(float(values.max()), 1e-6),
            value_name="max |Δ attention|",
            title=f"compare: attention change per head over {c.positions} shared positions",
            summary=summary,
            notes=list(c.notes),
            **kwargs,
        )

    def _on_select(self, change) -> None:
        if (
            len(self.selected) == 2
            and self.comparison.attention_max is not None
            and self.comparison.attention_mean is not None
        ):
            layer, head = self.selected
            for view in self.views:
                view.layer, view.head = layer, head
            self.detail = [
                f"layer {layer} head {head}: max |Δ| {float(self.comparison.attention_max[layer, head]):.3f},"
                f" mean |Δ| {float(self.comparison.attention_mean[layer, head]):.4f}"
            ]


class DivergenceView(MatrixWidget):
    """`lw.DivergenceView(lw.diverge(a, b, prompt))`: how far b's residual stream is from a's at each
    layer and position (relative error), the first split and KL per generated token above, the
    blame below; click a cell for every site's error there, the layer's blame and its most changed
    head (opened in `view=`, an AttentionView of either model's trace)."""

    def __init__(self, divergence: Divergence, *, view: AttentionView | None = None, **kwargs: Any):
        if not isinstance(divergence, Divergence):
            raise WrongTypeError(f"DivergenceView takes the result of lw.diverge, got {type(divergence).__name__}")
        self.divergence, self.view = divergence, linked(view, AttentionView, "view")
        d = divergence
        if "residual" not in d.errors:
            raise InputError(
                "this divergence has no residual stream to show (models of different shapes, or sites without "
                "'residual'): read d.kl and d.first_split"
            )
        errors = d.errors["residual"]
        super().__init__(
            kind="divergence",
            values=errors.tolist(),
            words=[],
            row_labels=[f"layer {i}" for i in range(errors.shape[0])],
            column_labels=[f"{i}:{t}" for i, t in enumerate(d.tokens[: errors.shape[1]])],
            scale="sequential",
            vmax=max(float(errors.max()), 1e-12),
            value_name="relative error of the residual stream",
            title=f"where {d.b_name} parts from {d.a_name}",
            summary=_divergence_lines(d),
            notes=list(d.notes),
            strip_values=d.kl.tolist(),
            strip_labels=d.tokens[d.n_prompt : d.n_prompt + len(d.kl)],
            strip_name="KL(a||b)",
            strip_mark=-1 if d.first_split is None else d.first_split,
            bar_labels=[_blamed(layer, site) for layer, site, _ in d.blame[:BARS]],
            bar_values=[share for _, _, share in d.blame[:BARS]],
            bar_name="blame: the share of the divergence gone when b takes a's output there",
            **kwargs,
        )

    def figure(self) -> export.MatrixFigure:
        figure = super().figure()
        # what the strip and the bars show on screen, in words
        kl = " | ".join(f"{t!r} {v:.3g}" for t, v in zip(self.strip_labels[:12], self.strip_values))
        shares = [f"blame: {label} {share:.1%}" for label, share in zip(self.bar_labels, self.bar_values)]
        figure.notes[len(self.summary) : len(self.summary)] = [f"KL(a||b) per generated token: {kl}", *shares]
        return figure

    def _on_select(self, change) -> None:
        if len(self.selected) != 2:
            return
        layer, position = self.selected
        d = self.divergence
        sites = ", ".join(f"{site} {float(e[layer, position]):.3g}" for site, e in d.errors.items())
        lines = [f"layer {layer}, position {position} ({d.tokens[position]!r}): relative error {sites}"]
        shares = [f"{site} {share:.1%}" for lay, site, share in d.blame if lay == layer]
        if shares:
            lines.append(f"blame at layer {layer}: " + ", ".join(shares))
        alone = [f"{site} {share:.1%}" for lay, site, share in d.alone if lay == layer]
        if alone:
            lines.append(f"b's layer {layer} alone, on a's inputs, causes: " + ", ".join(alone))
        if d.attention is not None:
            head = int(d.attention[layer].argmax())
            lines.append(
                f"most changed head of layer {layer}: head {head} (max |Δ| {float(d.attention[layer, head]):.3g})"
            )
            if self.view is not None:
                self.view.layer, self.view.head = layer, head
        self.detail = lines


def _blamed(layer: int, site: str) -> str:
    return "output (norm, unembedding)" if site == "output" else f"layer {layer} {site}"


def _divergence_lines(d: Divergence) -> list[str]:
    n = d.n_prompt
    if d.first_split is None:
        split = f"the greedy choices never split in {len(d.a_generated)} tokens"
    else:
        i = d.first_split
        b_choice = d.b_tokens[i] if i < len(d.b_tokens) else "(end)"
        split = f"first split at generated token {i}: a chose {d.tokens[n + i]!r}, b {b_choice!r}"
    return [f"a: {d.a_text!r}", f"b: {d.b_text!r}", split]
