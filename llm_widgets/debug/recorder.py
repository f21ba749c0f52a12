"""One recorded run: hooks on every module for its duration (removed after, on any stop, error
or interrupt), each call entered into the timeline, breakpoints checked as each call returns,
and the run stopped (`Stop`) at the first hit wanted, or at the call whose tensors are asked for.
"""

from __future__ import annotations

import fnmatch
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

from ..analysis.targets import first_token_id
from ..errors import InputError
from ..models import LanguageModel
from ..models.anatomy import anatomy
from ..models.language_model import torch_module
from .breakpoints import Breakpoint, NonFinite
from .ops import Operation, nonfinite, nonfinite_source, raising_operation
from .timeline import Call, ModuleMap, first_tensor, shapes_of, stats_of


class Stop(BaseException):
    """Ends a recorded run early. A BaseException: model code that catches Exception lets it by."""


def _detached(value: Any) -> Any:
    """A copy of every tensor in a call's inputs or output (tuples, lists, dicts, model outputs)."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, value)


@dataclass
class Captured:
    """The tensors of one call, copied as its hooks saw them: positional and keyword inputs, output."""

    args: tuple
    kwargs: dict
    output: Any = None


@dataclass
class Hit:
    call: int
    breakpoint: Breakpoint
    reason: str


class Recorder:
    """Records runs of one model: `record(execute, ...)` runs `execute` with the hooks installed."""

    def __init__(
        self,
        lm: LanguageModel | torch.nn.Module,
        breakpoints: tuple[Breakpoint, ...],
        watches: list[tuple[str, str, Callable]],
        *,
        n_layers: int | None = None,
    ):
        """lm: a LanguageModel, or a bare module (a training replay's copy: no tokenizer, so no TargetDrop)
        with its number of layers."""
        self.lm = lm if isinstance(lm, LanguageModel) else None
        self.model = torch_module(lm)
        self.name = self.lm.name if self.lm is not None else type(self.model).__name__
        self.n_layers = self.lm.facts.n_layers if self.lm is not None else n_layers or 0
        self.modules = ModuleMap(self.model, self.n_layers)
        self.watches = watches
        self.target_id: int | None = None
        self.target_text = ""
        self.breakpoints = breakpoints
        for point in breakpoints:
            point.bind(self)

    def example_paths(self) -> list[str]:
        paths = [p for p in self.modules.paths.values() if p]
        return [p for p in paths if ".0." in p or p.endswith(".0")][:4] or paths[:4]

    def watch_target(self, target: Any) -> None:
        """Read the lens's p(target) at each block (for TargetDrop)."""
        if self.lm is None:
            raise InputError("TargetDrop reads the logit lens through a tokenizer: a training replay has none")
        if self.lm.plain:
            raise InputError(
                f"TargetDrop reads the logit lens, which needs a Hugging Face transformers model; {self.name} is "
                "a plain PyTorch model"
            )
        self.target_id = first_token_id(self.lm.tokenizer, target, "target", [], self.lm.facts.vocab_size)
        self.target_text = self.lm.tokenizer.decode([self.target_id])
        self.parts = anatomy(self.model, self.n_layers)
        if self.parts.unembedding is None:
            raise InputError(f"TargetDrop reads predictions, and {self.name} has no unembedding (lm_head)")
        self.head_dtype = next(self.parts.unembedding.parameters()).dtype

    # --- one run ---

    def record(
        self, execute: Callable[[], Any], *, stop_after: int | None, capture: int | None = None, grad: bool = False
    ) -> None:
        """Run `execute` with every module hooked. Stop at the first breakpoint hit returning after
        exit number `stop_after` (None: never stop at hits), or when call `capture` returns (or is
        entered, where it never returns) with its tensors kept; a capturing run only counts the
        calls before it (no statistics: the timeline has them), so it costs the forward up to it."""
        self.calls: list[Call] = []
        self.stack: list[Call] = []
        self.open: dict[int, tuple[torch.nn.Module, tuple, dict]] = {}
        self.hits: list[Hit] = []
        self.root_calls = self.exits = 0
        self.last_block: dict[tuple[str, int], Call] = {}
        self.stop_after, self.capture, self.grad = stop_after, capture, grad
        self.backward_nonfinite = False
        self.stopped: Call | None = None
        self.reason = ""
        self.operation: Operation | None = None
        self.captured: Captured | None = None
        self.error: BaseException | None = None
        self.error_text = ""
        self.result: Any = None
        self.finished = False
        self.paused = False
        handles = []
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
                handles.append(module.register_forward_hook(self._leave, with_kwargs=True))
            self.result = execute()
            self.finished = True
        except Stop:
            pass
        except Exception as error:  # the forward raised: kept, for the post-mortem
            self._post_mortem(error)
        finally:
            self.paused = True
            for handle in handles:
                handle.remove()

    def _enter(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.paused:
            return
        if module is self.model:
            self.root_calls += 1
        parent = self.stack[-1] if self.stack else None
        call = Call(
            call=len(self.calls),
            module=self.modules.path(module),
            kind=self.modules.kind(module),
            layer=self.modules.layer(module),
            step=max(0, self.root_calls - 1),
            depth=len(self.stack),
            parent=parent.call if parent is not None else None,
            inputs=shapes_of(args, kwargs),
        )
        self.calls.append(call)
        self.stack.append(call)
        self.open[call.call] = (module, args, kwargs)

    def _leave(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.paused or not self.stack:
            return
        call = self.stack.pop()
        self.open.pop(call.call, None)
        out = first_tensor(output)
        if out is not None and (self.capture is None or self.capture == call.call):
            call.output_shape, call.output_dtype = tuple(out.shape), str(out.dtype).removeprefix("torch.")
            call.stats = stats_of(out)
            if not call.stats.finite:  # only then: were its inputs finite?
                call.input_finite = not nonfinite((args, kwargs))
                if self.stack and (call.input_finite or call.child_nonfinite):
                    self.stack[-1].child_nonfinite = True  # made here (or below): its parent only carries it
            if self.grad and out.requires_grad:
                out.register_hook(self._backward_hook(call))
        call.exit_order = self.exits
        self.exits += 1
        if self.capture == call.call:
            self.captured = Captured(_detached(args), _detached(kwargs), _detached(output))
            raise Stop
        if self.capture is not None:
            return
        self._watch(call, out)
        self._check(call, out, lambda: module(*args, **kwargs))
        if call.kind == "block":
            self.last_block[(call.phase, call.step)] = call

    def _watch(self, call: Call, out: torch.Tensor | None) -> None:
        if out is None:
            return
        self.paused = True  # what a watch or the lens runs (the final norm, the head) is not the run's
        try:
            for name, pattern, fn in self.watches:
                if fnmatch.fnmatchcase(call.module, pattern):
                    call.watched[name] = float(fn(out.detach()))
            if self.target_id is not None and call.kind == "block" and call.phase == "forward":
                with torch.no_grad():
                    logits = self.parts.logits(out.detach()[0, -1].to(self.head_dtype))
                    call.watched["p_target"] = float(torch.softmax(logits.float(), -1)[self.target_id])
        finally:
            self.paused = False

    def _check(self, call: Call, out: torch.Tensor | None, again: Callable[[], Any] | None) -> None:
        for point in self.breakpoints:
            reason = point.check(call, out, self)
            if not reason:
                continue
            self.hits.append(Hit(call.call, point, reason))
            if self.stop_after is not None and call.exit_order is not None and call.exit_order > self.stop_after:
                self.stopped, self.reason = call, reason
                if isinstance(point, NonFinite) and again is not None:
                    self.paused = True
                    self.operation = nonfinite_source(again, nan=call.stats is not None and call.stats.nan > 0)
                    self.reason += self.bad_parameters(call)
                raise Stop

    def bad_parameters(self, call: Call) -> str:
        """'; its own weight holds non-finite values' where it does (the cause is in the module), else ''."""
        module = self.model.get_submodule(call.module) if call.module else self.model
        bad = [
            name
            for name, p in module.named_parameters(recurse=False)
            if p.is_floating_point() and not bool(torch.isfinite(p).all())
        ]
        return f"; its own {', '.join(bad)} hold{'s' if len(bad) == 1 else ''} non-finite values" if bad else ""

    def previous_block(self, call: Call) -> Call | None:
        return self.last_block.get((call.phase, call.step))

    def _backward_hook(self, forward: Call) -> Callable[[torch.Tensor], None]:
        """The gradient reaching a call's output, entered as a backward call when it arrives."""

        def hook(grad: torch.Tensor) -> None:
            if self.paused:
                return
            call = Call(
                call=len(self.calls),
                module=forward.module,
                kind=forward.kind,
                layer=forward.layer,
                step=forward.step,
                depth=forward.depth,
                parent=None,
                phase="backward",
                output_shape=tuple(grad.shape),
                output_dtype=str(grad.dtype).removeprefix("torch."),
                stats=(stats := stats_of(grad)),
                exit_order=self.exits,
            )
            self.exits += 1
            if not stats.finite:  # gradients flow back: after the first non-finite one, the rest carry it
                call.input_finite, self.backward_nonfinite = not self.backward_nonfinite, True
            self.calls.append(call)
            self._check(call, grad, None)
            if call.kind == "block":
                self.last_block[(call.phase, call.step)] = call

        return hook

    def _post_mortem(self, error: BaseException) -> None:
        """The forward raised: stop at the innermost call still open, and name the operation."""
        self.error = error
        self.error_text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.paused = True
        if not self.stack:
            return
        failing = self.stack[-1]
        self.stopped, self.reason = failing, f"{type(error).__name__}: {error}"
        module, args, kwargs = self.open[failing.call]
        if self.capture == failing.call:
            self.captured = Captured(_detached(args), _detached(kwargs))
        self.operation = raising_operation(lambda: module(*args, **kwargs))
