"""`AttentionEditor`: the attention view plus steering, regenerating live.

The front end turns sliders and clicks into edit dicts (the same as
`ScaleAttention.to_dict()` / `AblateHead.to_dict()`) and sets `edit_specs`;
this side reruns the model with them and publishes the new output next to the
one without edits. A run that fails leaves the previous edits, output and model
as they were, and says why in the widget.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import traitlets

from ..analysis.steering import residual_after, typical_length
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..trace import Direction, Trace, edit_from_dict, fidelity
from ..trace.batch import one_trace
from ..trace.edits import AblateHead, AblateMLP, Edit, ScaleAttention, SteerResidual
from ..trace.locking import exclusive
from ._frontend import bundle
from .attention_view import AttentionView


def _as_spec(edit: Any) -> dict:
    if isinstance(edit, (ScaleAttention, AblateHead, SteerResidual, AblateMLP)):
        return edit.to_dict()
    if isinstance(edit, dict):
        return edit_from_dict(edit).to_dict()  # validated and normalised
    raise WrongTypeError(
        f"an edit is lw.ScaleAttention(...), lw.AblateHead(...), lw.SteerResidual(...) or their dict; got "
        f"{type(edit).__name__}"
    )


SLIDER_REACH = 0.5  # at its ends the strength slider adds a vector half as long as the residual stream


class AttentionEditor(AttentionView):
    """`lw.AttentionEditor(model, prompt, max_new_tokens=20)`: steer attention with sliders.

    Select key tokens in the strip, move the factor slider (0 masks, 1 changes
    nothing, 10 emphasises), choose the layers and heads, ablate heads; on
    release the model regenerates and the new output shows beside the old one.
    `editor.edits` is the list the UI built: pass it to `model.trace(..., edits=...)`,
    or set it from Python to update the UI.
    """

    _esm = bundle("attention_editor")
    _css = bundle("attention_editor", ".css")

    prompt_text = traitlets.Unicode(help="the prompt, as text").tag(sync=True)
    edit_specs = traitlets.List(
        traitlets.Dict(
            per_key_traits={"kind": traitlets.Enum(["scale_attention", "ablate_head", "steer_residual", "ablate_mlp"])}
        ),
        help="the edits, as ScaleAttention / AblateHead / SteerResidual .to_dict() makes them: the sliders write "
        "them, Python checks them (edit_from_dict) and regenerates",
    ).tag(sync=True)
    key_span = traitlets.List(traitlets.Int(), help="[start, stop) selected in the strip, [] for none").tag(sync=True)
    picked = traitlets.List(traitlets.List(traitlets.Int()), help="[[layer, head], ...] for 'picked'").tag(sync=True)
    unedited_tokens = traitlets.List(traitlets.Unicode(), help="generated without edits").tag(sync=True)
    new_tokens = traitlets.List(traitlets.Unicode(), help="generated with the edits").tag(sync=True)
    target = traitlets.Unicode(help="the token that followed the prompt without edits").tag(sync=True)
    p_before = traitlets.Float(help="p(target) right after the prompt, without edits").tag(sync=True)
    p_after = traitlets.Float(help="p(target) right after the prompt, with the edits").tag(sync=True)
    busy = traitlets.Bool(False, help="a regenerate is running").tag(sync=True)
    waiting = traitlets.Bool(False, help="another run holds the model: this one waits its turn").tag(sync=True)
    error = traitlets.Unicode(help="why the last regenerate failed ('' when it did not); nothing changed").tag(
        sync=True
    )
    fidelity = traitlets.Float(
        help="max |logit difference| of the instrumented vs the plain model on this prompt, no edits"
    ).tag(sync=True)
    record_json = traitlets.Unicode(help="the current run's record, as JSON (the download button's file)").tag(
        sync=True
    )
    runs = traitlets.Int(0, help="regenerations so far").tag(sync=True)
    class_bars = traitlets.List(
        traitlets.Dict(
            per_key_traits={"label": traitlets.Unicode(), "before": traitlets.Float(), "after": traitlets.Float()}
        ),
        help="a classifier's classes with p without edits and with them ([] for a generating model)",
    ).tag(sync=True)
    run_seconds = traitlets.Float(0.0, help="how long the last regenerate took in Python").tag(sync=True)
    # the directions panel (a causal transformers model): residual-stream directions to add, with a strength
    steers_directions = traitlets.Bool(False, help="the directions panel is shown (a causal LM)").tag(sync=True)
    n_blocks = traitlets.Int(0, help="blocks of the residual stream a direction can follow").tag(sync=True)
    directions = traitlets.List(
        traitlets.Dict(), help="the directions to pick from, as Direction.to_dict() makes them"
    ).tag(sync=True)
    direction_view = traitlets.Dict(
        {"index": -1, "layer": 0}, help="the direction picked in the panel (index, -1: none) and the block after which"
    ).tag(sync=True)
    direction_scale = traitlets.Float(
        1.0, help="the slider's largest strength: the picked direction then half as long as the residual stream there"
    ).tag(sync=True)
    strip = traitlets.Dict(
        help="each token's projection onto the picked direction after its block: {'before': [[token, value], ...] "
        "without the edits, 'after': with them} ({} when no direction is picked)"
    ).tag(sync=True)
    load_path = traitlets.Unicode(
        help="a direction file (Direction.save) to load into the panel: the front end sets it, Python loads it"
    ).tag(sync=True)

    def __init__(
        self,
        model: LanguageModel,
        prompt: Any,
        *,
        max_new_tokens: int = 20,
        edits: Any = (),
        seed: int | None = 0,
        do_sample: bool = False,
        layer: int | None = None,
        head: int = 0,
        directions: Any = (),
        **generation_kwargs,
    ):
        if not isinstance(model, LanguageModel):
            raise WrongTypeError(
                f"AttentionEditor takes a LanguageModel (from lw.load_model), got {type(model).__name__}"
            )
        if model.facts.kind == "masked":
            raise InputError(
                f"{model.name} does not generate (a masked model): the editor needs a causal LM, an "
                f"encoder-decoder or a classifier; use lw.AttentionView(model.trace(prompt)) to see its "
                f"attention"
            )
        self.lm = model
        if model.facts.kind in ("classifier", "token_classifier"):  # classes: the editor shows them, with p
            max_new_tokens = 0
        self._settings: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, seed=seed, do_sample=do_sample, **generation_kwargs
        )
        self.unedited = one_trace(model.trace(prompt, **self._settings), "AttentionEditor")
        # ids: what every rerun uses (an encoder-decoder's source)
        self._prompt = self.unedited.input_ids[: self.unedited.n_source or self.unedited.n_prompt].tolist()
        specs = [_as_spec(e) for e in edits]
        current = self._run(specs) if specs else self.unedited
        self._reverting = False
        self._failure: Exception | None = None
        super().__init__(
            current,
            layer=layer,
            head=head,
            prompt_text=self.unedited.prompt_text,
            unedited_tokens=_output_tokens(self.unedited),
            target=self.unedited.top_k(k=1)[0][0]
            if model.labels
            else model.tokenizer.decode([self.unedited.next_token_id]),
            p_before=self.unedited.probability(self.unedited.next_token_id),
            fidelity=fidelity(model, self._prompt),
        )
        self.edit_specs = specs
        self._offer(directions)
        self._publish(current, specs)
        self.observe(self._on_edit_specs, names="edit_specs")
        self.observe(self._on_direction_view, names="direction_view")
        self.observe(self._on_load_path, names="load_path")

    @traitlets.observe("stack")
    def _forget_picked_heads(self, change):  # (layer, head) pairs of another kind of attention
        self.picked = []

    # --- the edits, as Python objects ---

    @property
    def baseline(self) -> Trace:
        """Deprecated: `editor.unedited` (the run without edits; "baseline" means attribution's reference input)."""
        warnings.warn(
            "AttentionEditor.baseline is now AttentionEditor.unedited; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.unedited

    @property
    def edits(self) -> list[Edit]:
        """The active edits (what the sliders and toggles built)."""
        return [edit_from_dict(spec) for spec in self.edit_specs]

    @edits.setter
    def edits(self, value: Any) -> None:
        specs = [_as_spec(e) for e in value]
        self._failure = None
        self.edit_specs = specs
        if self._failure is not None:  # shown in the widget too; the previous edits are still in place
            raise self._failure

    @traitlets.validate("key_span")
    def _check_key_span(self, proposal):
        span = list(proposal.value)
        if span and (len(span) != 2 or not 0 <= span[0] < span[1] <= len(self.tokens)):
            raise traitlets.TraitError(
                f"key_span must be [] or [start, stop) within the {len(self.tokens)} tokens; got {span}"
            )
        return span

    @traitlets.validate("picked")
    def _check_picked(self, proposal):
        picked = [list(p) for p in proposal.value]
        bad = [p for p in picked if len(p) != 2 or not (0 <= p[0] < self.n_layers and 0 <= p[1] < self.n_heads)]
        if bad:
            raise traitlets.TraitError(
                f"picked heads must be [layer, head] within {self.n_layers} layers x {self.n_heads} heads; got {bad[0]}"
            )
        return picked

    def static_text(self) -> str:
        edits = "; ".join(repr(e) for e in self.edits) or "none"
        return (
            f"{self.model_name}, layer {self.layer}, head {self.head}: edits {edits}\n"
            f"prompt:        {self.unedited.prompt_text!r}\n"
            f"without edits: {self.unedited.output_text!r}\n"
            f"with edits:    {self.trace.output_text!r}"
        )

    def reset(self) -> None:
        """Back to the run without edits."""
        self.edit_specs = []

    # --- the directions panel ---

    def _offer(self, directions: Any) -> None:
        """The panel's first directions: those given, and those of SteerResidual edits given."""
        self._unedited_reads: dict[tuple[int, int], torch.Tensor] = {}  # (direction, layer) -> residual stream
        self.steers_directions = self.lm.kind == "causal" and not self.lm.plain
        self.n_blocks = self.lm.facts.n_layers
        for direction in [*directions, *(e.direction for e in self.edits if isinstance(e, SteerResidual))]:
            self.add_direction(direction)

    def add_direction(self, direction: Any) -> None:
        """Offer a direction (an lw.Direction, or a path to one saved with Direction.save) in the
        panel, and pick it; one made from another model is refused."""
        if isinstance(direction, (str, Path)):
            direction = Direction.load(direction)
        if not isinstance(direction, Direction):
            raise WrongTypeError(
                f"add_direction takes an lw.Direction or a path to one; got {type(direction).__name__}"
            )
        direction.check_for(self.lm.name, self.lm.facts.hidden_size)
        spec = direction.to_dict()
        if spec not in self.directions:
            self.directions = [*self.directions, spec]
        layer = direction.layer if direction.layer is not None else self.direction_view.get("layer", 0)
        self.direction_view = {"index": self.directions.index(spec), "layer": min(layer, self.n_blocks - 1)}

    def _on_load_path(self, change) -> None:
        if not change["new"]:
            return
        try:
            self.add_direction(change["new"].strip())
            self.error = ""
        except Exception as error:  # shown in the widget; nothing changed
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.load_path = ""

    def _on_direction_view(self, _change) -> None:
        try:
            self._draw_projections(self.trace)
        except Exception as error:  # shown in the widget; the run stands, the strip is left as it was
            self.error = f"{type(error).__name__}: {error}"

    def _draw_projections(self, trace: Trace) -> None:
        """The strip: each token's projection onto the picked direction after its block, without
        the edits and with them; and the slider's scale there."""
        index, layer = self.direction_view.get("index", -1), self.direction_view.get("layer", 0)
        if not self.steers_directions or not 0 <= index < len(self.directions):
            self.strip = {}
            return
        direction = Direction.from_dict(self.directions[index])
        unit = direction.unit().vector
        key = (index, layer)
        if key not in self._unedited_reads:
            self._unedited_reads[key] = residual_after(self.lm, self.unedited.input_ids, layer)
        plain = self._unedited_reads[key]
        steered = (
            residual_after(self.lm, trace.input_ids, layer, edits=trace.edits, n_prompt=trace.n_prompt)
            if trace.edits
            else plain
        )
        with self.hold_sync():
            self.direction_scale = SLIDER_REACH * typical_length(plain) / direction.norm
            self.strip = {
                "before": [list(pair) for pair in zip(self.unedited.tokens, (plain @ unit).tolist())],
                "after": [list(pair) for pair in zip(trace.tokens, (steered @ unit).tolist())],
            }

    # --- regenerating ---

    def _run(self, specs: list[dict]) -> Trace:
        edits = [edit_from_dict(s) for s in specs]

        def wait() -> None:
            self.waiting = True  # sent now: the front end says so until the run starts

        try:
            with exclusive(self.lm.model, on_wait=wait):
                self.waiting = False
                return one_trace(self.lm.trace(self._prompt, edits=edits, **self._settings), "AttentionEditor")
        finally:
            self.waiting = False

    def _on_edit_specs(self, change) -> None:
        if self._reverting:
            return
        self.busy = True  # sent now: the front end shows it while the model runs
        started = time.perf_counter()
        try:
            trace = self._run(change["new"]) if change["new"] else self.unedited
        except Exception as error:  # shown in the widget; the previous state stays
            self._failure = error
            self._revert(change["old"], f"{type(error).__name__}: {error}")
            return
        except BaseException:  # KeyboardInterrupt: put things back, then let it through
            self._revert(change["old"], "interrupted: the previous edits and output are kept")
            raise
        finally:
            self.busy = False
        with self.hold_sync():
            self._publish(trace, change["new"])
            self.run_seconds = time.perf_counter() - started

    def _revert(self, old: list[dict], message: str) -> None:
        self._reverting = True
        try:
            with self.hold_sync():
                self.edit_specs = old
                self.error = message
        finally:
            self._reverting = False

    def _publish(self, trace: Trace, specs: list[dict]) -> None:
        """Show `trace` (made with `specs`) as the current run."""
        self.new_tokens = _output_tokens(trace)
        self.class_bars = [
            {"label": label, "before": p, "after": trace.label_probabilities[label]}
            for label, p in self.unedited.label_probabilities.items()
        ]
        self.p_after = trace.probability(self.unedited.next_token_id)
        self.record_json = json.dumps(trace.record, indent=1)
        self.error = ""
        self.runs += 1
        self.show_trace(trace)
        if self.directions:
            self._on_direction_view(None)


def _output_tokens(trace: Trace) -> list[str]:
    """What the editor shows as a run's output: its generated tokens, a classifier's class, or a token
    classifier's class of each token."""
    if trace.model.kind == "token_classifier":
        return [label for _, label, _ in trace.token_labels]
    return [trace.output_text] if trace.model.labels else trace.tokens[trace.n_prompt :]
