"""The operation inside a module call: the first that made NaN or Inf from finite inputs
(re-running the call under a dispatch mode, which sees every aten op), or the one that raised
(under a function mode, which sees every torch function the module's Python calls)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Operation:
    """An operation and where the model's code called it: "aten.log" at "modeling.py:41 in
    forward: return torch.log(x)"."""

    name: str
    where: str

    def __str__(self) -> str:
        return f"{self.name} at {self.where}" if self.where else self.name


def nonfinite(value: Any, test: Callable[[torch.Tensor], torch.Tensor] = torch.isfinite) -> bool:
    """Whether a value holds a tensor with an element that fails `test` (finite, by default)."""
    return any(
        isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(test(t).all())
        for t in tree_leaves(value)
    )


def _not_nan(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(t)


# frames of the call machinery, not of a model's code (torch.nn.Linear's forward is a model's code)
_MACHINERY = (
    "/torch/overrides.py",
    "/torch/utils/",
    "/torch/_",
    "/torch/nn/modules/module.py",
    "/torch/nn/functional.py",
    "/contextlib.py",
    "/llm_widgets/debug/",
)


def _caller() -> str:
    """The innermost frame of the model's own code (not the call machinery's, not ours)."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if any(part in name for part in _MACHINERY):
            continue
        return f"{name.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
    return ""


class _FirstNonFinite(TorchDispatchMode):
    def __init__(self, nan: bool):
        super().__init__()
        self.found: Operation | None = None
        # NaN in the output: the first op that gave NaN (a mask's -inf is no fault, softmax over it
        # is); else the first that gave Inf. The call's inputs were finite: that op made them, from
        # finite values or from a weight that holds them
        self.test = _not_nan if nan else torch.isfinite

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.found is None and nonfinite(out, self.test):
            self.found = Operation(str(func.overloadpacket), _caller())
        return out


class _Raising(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.raised: Operation | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            return func(*args, **(kwargs or {}))
        except Exception:
            if self.raised is None:
                self.raised = Operation(
                    getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func)), _caller()
                )
            raise


def nonfinite_source(run: Callable[[], Any], nan: bool) -> Operation | None:
    """Run `run` (one module call again, its inputs finite) and name the first op that gave NaN
    (`nan`) or Inf."""
    mode = _FirstNonFinite(nan)
    try:
        with mode, torch.no_grad():
            run()
    except Exception:  # noqa: BLE001 - the call ran once already; a second run only looks
        pass
    return mode.found


def raising_operation(run: Callable[[], Any]) -> Operation | None:
    """Run `run` (the call that raised) again and name the torch function that raised."""
    mode = _Raising()
    try:
        with mode, torch.no_grad():
            run()
    except Exception:  # noqa: BLE001 - expected: it raises again
        pass
    return mode.raised
