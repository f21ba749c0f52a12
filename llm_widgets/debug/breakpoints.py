"""Conditions checked at every module call while a debugged run goes (`lw.debug(...,
breakpoints=[...])`): the run stops at the first call where one holds. Each returns why it
holds (a sentence shown with the stop), or None.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from .timeline import Call

if TYPE_CHECKING:
    from .recorder import Recorder


class Breakpoint:
    """One condition. `bind` checks it against the model before the run (a module path that does
    not exist, a target that is not a token: a clear error, nothing run); `check` says why it holds
    at a call that has just returned, or None."""

    def bind(self, recorder: Recorder) -> None:
        """Check the condition against the model; nothing to check by default."""

    def check(self, call: Call, output: torch.Tensor | None, recorder: Recorder) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class NonFinite(Breakpoint):
    """The first call whose output holds NaN or Inf while its inputs did not: where they are made
    (not the modules around it, whose outputs carry them on). The stop names the operation inside
    the module that made them."""

    def check(self, call, output, recorder):
        s = call.stats
        if s is None or s.finite or not call.input_finite or call.child_nonfinite:
            return None
        what = " and ".join(f"{n} {name}" for n, name in ((s.nan, "NaN"), (s.inf, "Inf")) if n)
        source = "gradient" if call.phase == "backward" else "output"
        return f"its {source} holds {what} of {s.numel} values, from finite inputs"


@dataclass(frozen=True)
class Overflow(Breakpoint):
    """Values beyond a narrower dtype's range (default float16, 65504): where a model trained in
    bfloat16 or float32 would overflow if run in that dtype."""

    dtype: Any = "float16"
    limit: float = field(init=False, default=0.0)

    def __post_init__(self):
        dtype = getattr(torch, self.dtype, None) if isinstance(self.dtype, str) else self.dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InputError(
                f"Overflow takes a floating-point dtype, e.g. 'float16' or torch.bfloat16; got {self.dtype!r}"
            )
        object.__setattr__(self, "limit", float(torch.finfo(dtype).max))

    def check(self, call, output, recorder):
        s = call.stats
        if s is None or not s.beyond(self.limit):
            return None
        return f"max |x| {max(abs(s.min), abs(s.max)):.4g} is beyond {self.dtype}'s range ({self.limit:.6g})"


@dataclass(frozen=True)
class NormJump(Breakpoint):
    """The residual stream's RMS grows by more than `factor` from one block to the next (of the
    same step; backward: the gradient's)."""

    factor: float = 10.0

    def __post_init__(self):
        checks.number(self.factor, "NormJump's factor", low=1.0, low_open=True)

    def check(self, call, output, recorder):
        if call.kind != "block" or call.stats is None:
            return None
        before = recorder.previous_block(call)
        if before is None or before.stats is None or not before.stats.rms > 0:
            return None
        ratio = call.stats.rms / before.stats.rms
        if ratio > self.factor:
            rms = f"{before.stats.rms:.4g} -> {call.stats.rms:.4g}"
            return f"the residual RMS grew {ratio:.3g}x over layer {call.layer} ({rms})"
        return None


@dataclass(frozen=True)
class TargetDrop(Breakpoint):
    """The logit lens's probability of `target` at the last position falls below `below` from one
    block to the next (read through the model's final norm and unembedding)."""

    target: Any
    below: float = 0.1

    def __post_init__(self):
        checks.number(self.below, "TargetDrop's below", low=0.0, high=1.0, low_open=True)

    def bind(self, recorder):
        recorder.watch_target(self.target)

    def check(self, call, output, recorder):
        if call.kind != "block" or call.phase != "forward":
            return None
        now = call.watched.get("p_target")
        before = recorder.previous_block(call)
        then = before.watched.get("p_target") if before is not None else None
        if now is None or then is None or not (now < self.below <= then):
            return None
        return f"p({recorder.target_text!r}) fell from {then:.3g} to {now:.3g} at layer {call.layer}"


@dataclass(frozen=True)
class At(Breakpoint):
    """A location: every given part must match (`module` a dotted path or glob,
    "model.layers.12.mlp" or "model.layers.*.self_attn"; `step` 0 for the prompt pass)."""

    module: str | None = None
    step: int | None = None
    layer: int | None = None
    call: int | None = None
    phase: str = "forward"

    def __post_init__(self):
        if self.module is not None and not isinstance(self.module, str):
            raise WrongTypeError(
                f"At's module must be a dotted module path (a string); got {type(self.module).__name__}"
            )
        for name in ("step", "layer", "call"):
            value = getattr(self, name)
            if value is not None:
                checks.integer(value, f"At's {name}", low=0)
        checks.choice(self.phase, "At's phase", ("forward", "backward"))
        if self.module is None and self.step is None and self.layer is None and self.call is None:
            raise InputError("At names no location: give module=, step=, layer= or call=")

    def bind(self, recorder):
        if self.module is not None and not recorder.modules.matching(self.module):
            raise InputError(
                f"At(module={self.module!r}) names no module of {recorder.name}: its paths look like "
                f"{recorder.example_paths()}"
            )
        if self.layer is not None and self.layer >= recorder.n_layers:
            raise InputError(f"At(layer={self.layer}) is out of range: {recorder.name} has {recorder.n_layers} layers")

    def check(self, call, output, recorder):
        if call.phase != self.phase:
            return None
        if self.module is not None and not fnmatch.fnmatchcase(call.module, self.module):
            return None
        if any(
            want is not None and want != got
            for want, got in ((self.step, call.step), (self.layer, call.layer), (self.call, call.call))
        ):
            return None
        return "the location asked for"


@dataclass(frozen=True)
class When(Breakpoint):
    """A condition of your own: `fn(call, output)` is true (output: the tensor the call gave)."""

    fn: Callable[[Call, Any], Any]
    name: str = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise WrongTypeError(f"When takes a function fn(call, output) -> bool; got {type(self.fn).__name__}")

    def check(self, call, output, recorder):
        return f"{self.name or getattr(self.fn, '__name__', 'your condition')} holds" if self.fn(call, output) else None


def checked_breakpoints(breakpoints: Any) -> tuple[Breakpoint, ...]:
    if breakpoints is None:
        return ()
    if isinstance(breakpoints, Breakpoint):
        return (breakpoints,)
    if not isinstance(breakpoints, (list, tuple)) or not all(isinstance(b, Breakpoint) for b in breakpoints):
        raise WrongTypeError(
            "breakpoints must be a list of lw.NonFinite(), lw.Overflow('float16'), lw.NormJump(10), "
            f"lw.TargetDrop(target, below), lw.At(module=...), lw.When(fn); got {breakpoints!r:.80}"
        )
    return tuple(breakpoints)
