"""`AttributionView`: which input tokens drove an output, coloured by score.

Method and step are switchable in the widget; the attribution is recomputed
here (a failure is shown and the previous one kept). With `method=
"attention_x_grad"` a layer x head importance grid appears; clicking a head
selects it, and opens it in a linked `AttentionView` (`view=`).
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from ..analysis import METHODS, Attribution
from ..errors import InputError, WrongTypeError
from ..export import attribution as export
from ._frontend import Answers, StaticFallback, bundle, linked
from .attention_view import AttentionView


class AttributionView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.AttributionView(trace.attribute(" Paris", contrast=" London"))`."""

    _esm = bundle("attribution_view")
    _css = bundle("attribution_view", ".css")

    tokens = traitlets.List(traitlets.Unicode(), help="each token as text").tag(sync=True)
    scores = traitlets.List(traitlets.Float(), help="each token's attribution score (prompt tokens; 0 after)").tag(
        sync=True
    )
    n_prompt = traitlets.Int(help="how many of the tokens are the prompt").tag(sync=True)
    target = traitlets.Unicode(help="the token explained").tag(sync=True)
    contrast = traitlets.Unicode(
        allow_none=True, help="the token it is compared with ('why target, not contrast'), or None"
    ).tag(sync=True)
    p_target = traitlets.Float(help="p(target) at the step explained").tag(sync=True)
    p_contrast = traitlets.Float(allow_none=True, help="p(contrast) at that step, or None").tag(sync=True)
    quantity = traitlets.Unicode(help="what the scores explain, e.g. 'log p(target)'").tag(sync=True)
    score = traitlets.Float(help="that quantity's value").tag(sync=True)
    delta = traitlets.Float(
        allow_none=True,
        help="integrated gradients' completeness gap (sum of scores minus the change in the quantity), or None",
    ).tag(sync=True)
    notes = traitlets.List(traitlets.Unicode(), help="caveats of the method, in words").tag(sync=True)
    method = traitlets.Unicode(help="the attribution method shown").tag(sync=True)
    methods = traitlets.List(
        traitlets.Unicode(), default_value=list(METHODS), help="the methods the select offers"
    ).tag(sync=True)
    step = traitlets.Int(0, help="the generation step explained (0: right after the prompt)").tag(sync=True)
    step_labels = traitlets.List(traitlets.Unicode(), help="the token generated at each step").tag(sync=True)
    head_importance = traitlets.List(traitlets.List(traitlets.Float()), help="[] unless attention_x_grad").tag(
        sync=True
    )
    layer = traitlets.Int(-1, help="the head picked in the grid, -1 for none").tag(sync=True)
    head = traitlets.Int(-1, help="the head picked in the grid, -1 for none").tag(sync=True)
    busy = traitlets.Bool(False, help="a recomputation is running").tag(sync=True)
    error = traitlets.Unicode(help="why the last recomputation failed ('' when it did not)").tag(sync=True)

    def __init__(self, attribution: Attribution, *, view: AttentionView | None = None, **kwargs):
        if not isinstance(attribution, Attribution):
            raise WrongTypeError(
                f"AttributionView takes an Attribution (from trace.attribute(...)), got {type(attribution).__name__}"
            )
        self.attribution = attribution
        self.view = linked(view, AttentionView, "view")
        trace = attribution.trace
        if trace is None:
            raise InputError(
                "this Attribution was made without its trace (trace.attribute(...) keeps it); "
                "AttributionView needs the trace to recompute it"
            )
        self.trace = trace
        # the target the user chose stays when the step changes; a default target follows the step
        self._explicit_target = (
            attribution.target_id if attribution.target_id != _default_target(trace, attribution.step) else None
        )
        super().__init__(
            step_labels=trace.tokens[trace.n_prompt :] or [trace.model.tokenizer.decode([trace.next_token_id])],
            **self._state(attribution),
            **kwargs,
        )
        self.observe(self._recompute, names=["method", "step"])
        self.observe(self._open_head, names=["layer", "head"])

    @staticmethod
    def _state(a: Attribution) -> dict:
        return dict(
            tokens=a.tokens,
            scores=a.scores.tolist(),
            n_prompt=a.n_prompt,
            target=a.target,
            contrast=a.contrast,
            p_target=a.p_target,
            p_contrast=a.p_contrast,
            quantity=a.quantity,
            score=a.score,
            delta=a.delta,
            notes=a.notes,
            method=a.method,
            step=a.step,
            head_importance=[] if a.head_importance is None else a.head_importance.tolist(),
        )

    def _recompute(self, change) -> None:
        a = self.attribution
        if (self.method, self.step) == (a.method, a.step):
            return
        self.busy = True
        try:
            new = self.trace.attribute(  # (the view shows it is busy: no progress bar in the cell's output)
                self._explicit_target, contrast=a.contrast_id, method=self.method, step=self.step, progress=False
            )
        except Exception as error:  # shown in the widget; the previous attribution stays
            with self.hold_sync():
                self.method, self.step = a.method, a.step
                self.error = f"{type(error).__name__}: {error}"
            return
        finally:
            self.busy = False
        self.attribution = new
        with self.hold_sync():
            for name, value in self._state(new).items():
                setattr(self, name, value)
            self.error = ""

    def _open_head(self, change) -> None:
        if self.view is not None and self.layer >= 0 and self.head >= 0:
            self.view.layer, self.view.head = self.layer, self.head

    def static_figure(self) -> bytes:
        return export.render(self.attribution, "png")

    def static_text(self) -> str:
        return str(self.attribution)

    def save(self, path: str | Path) -> Path:
        """The tokens coloured by score as .png, .svg or a standalone .html."""
        return export.save(self.attribution, path)

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: only exports ({"what": "export", "format": ...})."""
        if request.get("what") != "export":
            raise InputError(f"unknown request {request.get('what')!r}: this view answers 'export'")
        fmt = str(request.get("format"))
        data = export.render(self.attribution, fmt)
        return {"type": "file", "name": f"attribution.{fmt}", "format": fmt}, [data]


def _default_target(trace, step: int) -> int:
    return trace.generated_ids[step] if trace.generated_ids else trace.next_token_id
