"""Attention edits: what a user changes in a run, as plain data.

Positions are absolute token positions of the traced sequence (prompt then
generated tokens; an encoder-decoder's source tokens, then the decoder's), never
cache slots. Spans are (start, stop), stop exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import checks
from ..errors import InputError, WrongTypeError
from .direction import as_direction, finite_strength

Span = tuple[int, int]
STACK_NAMES = ("self", "encoder", "decoder", "cross")  # as trace.stacks names them


def _check_stack(edit: Any) -> None:
    if edit.stack is not None and edit.stack not in STACK_NAMES:
        raise InputError(
            f"{type(edit).__name__} stack must be None or one of {list(STACK_NAMES[1:])} (an "
            f"encoder-decoder's attention); got {edit.stack!r}"
        )


def as_spans(value: Any, what: str) -> tuple[Span, ...] | None:
    """Accept (start, stop), [(start, stop), ...], an int, or a list of ints."""
    if value is None:
        return None
    if checks.is_int(value):
        return ((value, value + 1),)
    if not isinstance(value, (tuple, list, range)):
        raise InputError(f"{what} must be a position, a (start, stop) span or a list of them; got {value!r}")
    items: Sequence[Any] = value
    if len(items) == 2 and all(checks.is_int(v) for v in items):
        items = [tuple(items)]
    spans = []
    for item in items:
        if checks.is_int(item):
            item = (item, item + 1)
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(checks.is_int(v) for v in item)):
            raise InputError(f"{what} must be a position, a (start, stop) span or a list of them; got {value!r}")
        start, stop = item
        if start < 0 or stop <= start:
            raise InputError(
                f"{what} span {tuple(item)} is empty or negative: use (start, stop) with 0 <= start < stop"
            )
        spans.append((int(start), int(stop)))
    if not spans:
        raise InputError(f"{what} is empty: give at least one position or (start, stop) span")
    return tuple(spans)


def _as_ints(value: Any, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if checks.is_int(value):
        return (int(value),)
    if not isinstance(value, (tuple, list, range)):
        raise InputError(f"{what} must be a non-empty list of non-negative integers (or None for all); got {value!r}")
    out = tuple(value)
    if not out or not all(checks.is_int(v) and v >= 0 for v in out):
        raise InputError(f"{what} must be a non-empty list of non-negative integers (or None for all); got {value!r}")
    return out


@dataclass(frozen=True)
class ScaleAttention:
    """Multiply the attention on `keys` by `factor` and renormalise each row.

    Equivalent to adding log(factor) to those scores, so it rides on the model's
    own attention as an additive mask. `factor=0` masks the keys; a query row
    whose every key would be masked is left unchanged (with a warning).
    `queries`, `layers`, `heads` default to all. In an encoder-decoder, `stack`
    picks "encoder", "decoder" or "cross" attention (e.g. keys = source words,
    stack="cross": the output attends more to them); None: every attention whose
    keys include them.
    """

    factor: float
    keys: Any
    queries: Any = None
    layers: Any = None
    heads: Any = None
    stack: str | None = None
    kind: str = field(default="scale_attention", init=False)

    def __post_init__(self):
        # (0 masks the keys, 1 changes nothing)
        object.__setattr__(self, "factor", checks.number(self.factor, "ScaleAttention factor", low=0))
        if self.keys is None:
            raise InputError("ScaleAttention needs keys: the positions whose attention to scale, e.g. keys=(7, 12)")
        object.__setattr__(self, "keys", as_spans(self.keys, "keys"))
        object.__setattr__(self, "queries", as_spans(self.queries, "queries"))
        object.__setattr__(self, "layers", _as_ints(self.layers, "layers"))
        object.__setattr__(self, "heads", _as_ints(self.heads, "heads"))
        _check_stack(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("keys", "queries"):
            if d[key] is not None:
                d[key] = [list(span) for span in d[key]]
        for key in ("layers", "heads"):
            if d[key] is not None:
                d[key] = list(d[key])
        if d["stack"] is None:  # a decoder-only model's edit: records stay as they were before stacks
            del d["stack"]
        return d


@dataclass(frozen=True)
class AblateHead:
    """Remove one head's contribution at its output (before the output projection).

    mode="zero" sets it to zero; mode="mean" replaces it by its mean over the
    prompt's positions, a gentler ablation that keeps the output's scale.
    In an encoder-decoder, `stack` says which attention's head: "encoder",
    "decoder" or "cross". `positions` (a position, a (start, stop) span or a
    list of them): only there, the head's output elsewhere untouched; None: at
    every position.
    """

    layer: int
    head: int
    mode: str = "zero"
    stack: str | None = None
    positions: Any = None
    kind: str = field(default="ablate_head", init=False)

    def __post_init__(self):
        for name in ("layer", "head"):
            checks.integer(getattr(self, name), f"AblateHead {name}", low=0)
        if self.mode not in ("zero", "mean"):
            raise InputError(f"AblateHead mode must be 'zero' or 'mean'; got {self.mode!r}")
        _check_stack(self)
        object.__setattr__(self, "positions", as_spans(self.positions, "AblateHead positions"))

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["stack"] is None:
            del d["stack"]
        if d["positions"] is None:  # (records of a whole head's ablation stay as they were)
            del d["positions"]
        else:
            d["positions"] = [list(span) for span in d["positions"]]
        return d


@dataclass(frozen=True)
class AblateMLP:
    """Remove block `layer`'s MLP output (set it to zero) at `positions` (a position, a (start, stop)
    span or a list of them; None: everywhere): what the MLP adds to the residual stream there is
    gone, the rest of the run as it was. A decoder-only transformers model's blocks."""

    layer: int
    positions: Any = None
    kind: str = field(default="ablate_mlp", init=False)

    def __post_init__(self):
        checks.integer(self.layer, "AblateMLP layer", low=0)
        object.__setattr__(self, "positions", as_spans(self.positions, "AblateMLP positions"))

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "layer": self.layer}
        if self.positions is not None:
            d["positions"] = [list(span) for span in self.positions]
        return d


POSITION_WORDS = ("prompt", "generated")  # SteerResidual positions by name


@dataclass(frozen=True)
class SteerResidual:
    """Add `strength` x `direction` to the residual stream after each of `layers` blocks.

    `direction`: an `lw.Direction` (lw.steering_vector, lw.token_direction, Direction.load) or a
    vector of the residual stream's width; a Direction made from another model is refused.
    `positions`: None (every position), "prompt", "generated" (the generated tokens only), or
    positions and (start, stop) spans. Strength 0 adds nothing (the run is the plain one). The sum
    is taken in float32 and cast to the residual's dtype. In an encoder-decoder, `stack` is
    "encoder" or "decoder" (the default: the residual stream the output is read from).
    """

    direction: Any
    layers: Any
    strength: float
    positions: Any = None
    stack: str | None = None
    kind: str = field(default="steer_residual", init=False)

    def __post_init__(self):
        object.__setattr__(self, "direction", as_direction(self.direction))
        if self.layers is None:
            raise InputError("SteerResidual needs layers: the blocks after which to add the direction, e.g. [6]")
        object.__setattr__(self, "layers", _as_ints(self.layers, "SteerResidual layers"))
        object.__setattr__(self, "strength", finite_strength(self.strength))
        if not (self.positions is None or self.positions in POSITION_WORDS):
            object.__setattr__(self, "positions", as_spans(self.positions, "SteerResidual positions"))
        if self.stack not in (None, "encoder", "decoder"):
            raise InputError(
                f"SteerResidual stack must be None, 'encoder' or 'decoder' (an encoder-decoder's residual "
                f"streams); got {self.stack!r}"
            )

    def to_dict(self) -> dict:
        d = {
            "kind": self.kind,
            "direction": self.direction.to_dict(),
            "layers": list(self.layers),
            "strength": self.strength,
            "positions": self.positions
            if not isinstance(self.positions, tuple)
            else [list(span) for span in self.positions],
        }
        if self.stack is not None:
            d["stack"] = self.stack
        return d

    def __repr__(self) -> str:
        at = "" if self.positions is None else f", positions={self.positions!r}"
        name = self.direction.name or "direction"
        return f"SteerResidual({name!r}, layers={list(self.layers)}, strength={self.strength:g}{at})"


Edit = ScaleAttention | AblateHead | SteerResidual | AblateMLP
EDIT_TYPES = {
    "scale_attention": ScaleAttention,
    "ablate_head": AblateHead,
    "steer_residual": SteerResidual,
    "ablate_mlp": AblateMLP,
}


def edit_from_dict(d: dict) -> Edit:
    """An edit from its `to_dict()` form (as run records hold it); a ValueError names what is wrong."""
    if not isinstance(d, dict):
        raise InputError(f"an edit must be a dict with a 'kind' (from edit.to_dict()); got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in EDIT_TYPES:
        raise InputError(f"unknown edit kind {kind!r}; known: {sorted(EDIT_TYPES)}")
    fields = set(EDIT_TYPES[kind].__dataclass_fields__) - {"kind"}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise InputError(f"{kind} edit: unknown field(s) {unknown}; it takes {sorted(fields)}")
    try:
        return EDIT_TYPES[kind](**d)
    except TypeError as error:  # a missing field
        raise InputError(f"{kind} edit: {error}") from None


def _listed(edits: Any) -> Iterable[Any]:
    """Edits as given: a list of them, one on its own, or None (none)."""
    if edits is None:
        return ()
    if isinstance(edits, (ScaleAttention, AblateHead, SteerResidual, AblateMLP, dict)):
        return (edits,)
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Iterable):
        raise InputError(
            f"edits must be a list of lw.ScaleAttention / lw.AblateHead / lw.SteerResidual (or one of them); got "
            f"{type(edits).__name__}"
        )
    return edits


def _check_spans(what: str, spans, sequence_length: int) -> None:
    for start, stop in spans:
        if stop > sequence_length:
            raise InputError(
                f"{what} span ({start}, {stop}) is outside the sequence: positions run from 0 to "
                f"{sequence_length - 1} (prompt plus new tokens), so stop must be <= {sequence_length}"
            )


def validate_edits(
    edits: Any,
    *,
    n_layers: int,
    n_heads: int,
    sequence_length: int,
    stacks: dict[str, tuple[int, int]] | None = None,
    model_name: str | None = None,
    width: int | None = None,
) -> tuple[Edit, ...]:
    """Check every edit against the model and the sequence; a ValueError names what is out of range.
    stacks: an encoder-decoder's {"encoder": (layers, heads), "decoder": ..., "cross": ...};
    model_name and width (the residual stream's): what a SteerResidual's direction must be made for."""
    stacks = stacks or {"self": (n_layers, n_heads)}
    out = []
    for edit in _listed(edits):
        if isinstance(edit, dict):
            edit = edit_from_dict(edit)
        if isinstance(edit, SteerResidual):
            if model_name is not None and width is not None:
                edit.direction.check_for(model_name, width)
            out.append(_checked_steering(edit, stacks, sequence_length))
            continue
        if isinstance(edit, AblateMLP):
            out.append(_checked_mlp(edit, stacks, sequence_length))
            continue
        if isinstance(edit, AblateHead):
            layers, heads = (edit.layer,), (edit.head,)
            _check_spans("AblateHead positions", edit.positions or (), sequence_length)
            if edit.stack is None and len(stacks) > 1:
                raise InputError(
                    f"{edit!r}: this encoder-decoder has three kinds of attention; say whose head it is "
                    f"with stack='encoder', 'decoder' or 'cross'"
                )
        elif isinstance(edit, ScaleAttention):
            layers, heads = edit.layers or (), edit.heads or ()
            for what, spans in (("keys", edit.keys), ("queries", edit.queries or ())):
                _check_spans(f"ScaleAttention {what}", spans, sequence_length)
        else:
            raise WrongTypeError(
                f"edits must be ScaleAttention, AblateHead, SteerResidual or AblateMLP, got {type(edit).__name__}"
            )
        _check_ranges(edit, layers, heads, stacks)
        out.append(edit)
    return tuple(out)


def _check_ranges(edit: Any, layers, heads, stacks: dict[str, tuple[int, int]]) -> None:
    """An attention edit's stack, layers and heads within the model's."""
    if edit.stack is not None and edit.stack not in stacks:
        raise InputError(
            f"{type(edit).__name__} stack {edit.stack!r}: this model's attention is "
            f"{' / '.join(repr(name) for name in stacks)}"
        )
    for name, (n_layers, n_heads) in stacks.items():
        if edit.stack not in (None, name):
            continue
        of = "" if name == "self" else f" in its {name} attention"
        for layer in layers:
            if layer >= n_layers:
                raise InputError(
                    f"{type(edit).__name__}: layer {layer} is out of range; this model has layers "
                    f"0 to {n_layers - 1}{of}"
                )
        for head in heads:
            if head >= n_heads:
                raise InputError(
                    f"{type(edit).__name__}: head {head} is out of range; this model has heads "
                    f"0 to {n_heads - 1} in each layer{of}"
                )


def _checked_steering(edit: SteerResidual, stacks: dict[str, tuple[int, int]], sequence_length: int) -> SteerResidual:
    """A SteerResidual's layers and positions against the model's residual streams (its blocks)."""
    if isinstance(edit.positions, tuple):
        _check_spans("SteerResidual positions", edit.positions, sequence_length)
    if "self" in stacks:
        if edit.stack is not None:
            raise InputError(
                f"{edit!r}: stack={edit.stack!r} is for an encoder-decoder; this model has one residual stream "
                f"(leave stack out)"
            )
        n_layers, of = stacks["self"][0], ""
    else:
        n_layers, of = stacks[steered_stack(edit, stacks)][0], f" in its {steered_stack(edit, stacks)}"
    for layer in edit.layers:
        if layer >= n_layers:
            raise InputError(f"{edit!r}: layer {layer} is out of range; this model has blocks 0 to {n_layers - 1}{of}")
    return edit


def _checked_mlp(edit: AblateMLP, stacks: dict[str, tuple[int, int]], sequence_length: int) -> AblateMLP:
    if "self" not in stacks:
        raise InputError(f"{edit!r}: MLP ablation is for decoder-only models' blocks; this is an encoder-decoder")
    _check_spans("AblateMLP positions", edit.positions or (), sequence_length)
    if edit.layer >= stacks["self"][0]:
        raise InputError(
            f"{edit!r}: layer {edit.layer} is out of range; this model has blocks 0 to {stacks['self'][0] - 1}"
        )
    return edit


def steered_stack(edit: SteerResidual, stacks: Any) -> str:
    """The residual stream a SteerResidual steers: a decoder-only model's one ("self"), else its
    stack (the decoder's by default: the one the output is read from)."""
    return "self" if "self" in stacks else (edit.stack or "decoder")
