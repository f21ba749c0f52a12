"""One training step broken into its parts: forward, backward, the monitor, the optimizer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models.devices import input_device
from ..models.language_model import torch_module

PHASES = ("forward", "backward", "monitor", "optimizer")


@dataclass
class StepProfile:
    """Median seconds per phase over the steps run, and the step in all."""

    seconds: dict[str, float]
    steps: int

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def shares(self) -> dict[str, float]:
        total = self.total_s
        return {phase: s / total if total else float("nan") for phase, s in self.seconds.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{p} {s * 1e3:.1f} ms ({self.shares()[p]:.0%})" for p, s in self.seconds.items())
        return f"StepProfile({self.total_s * 1e3:.1f} ms per step over {self.steps}: {parts})"


def profile_step(
    model: Any,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    *,
    monitor: Any = None,
    steps: int = 3,
    loss: Callable[[Any], torch.Tensor] | None = None,
) -> StepProfile:
    """Run `steps` real training steps (they update the weights: profile inside your loop, or on a
    copy) and time each part: forward (`model(**batch)`, the loss from `loss(output)` or
    `output.loss`), backward, `monitor.step()` when a GradientMonitor is given, and
    `optimizer.step()` with `zero_grad()`. The median of each part is kept."""
    module = _checked(model, batch, optimizer, monitor, loss)
    checks.integer(steps, "steps", low=1)
    device = input_device(module)
    sync = device.type == "cuda"

    def now() -> float:
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    samples: dict[str, list[float]] = {p: [] for p in PHASES if p != "monitor" or monitor is not None}
    for _ in range(steps):
        t0 = now()
        value = _loss(module, batch, loss)
        t1 = now()
        value.backward()
        t2 = now()
        if monitor is not None:
            monitor.step(loss=value)
        t3 = now()
        optimizer.step()
        optimizer.zero_grad()
        t4 = now()
        samples["forward"].append(t1 - t0)
        samples["backward"].append(t2 - t1)
        if monitor is not None:
            samples["monitor"].append(t3 - t2)
        samples["optimizer"].append(t4 - t3)
    return StepProfile(seconds={p: statistics.median(v) for p, v in samples.items()}, steps=steps)


def _checked(model: Any, batch: Any, optimizer: Any, monitor: Any, loss: Any) -> torch.nn.Module:
    module = torch_module(model)
    if not isinstance(module, torch.nn.Module):
        raise WrongTypeError(f"profile_step takes a torch module or lw.LanguageModel; got {type(model).__name__}")
    if not isinstance(batch, dict) or not all(isinstance(k, str) for k in batch):
        raise WrongTypeError(
            f"batch must be a dict of the model's inputs by name (with labels for the loss); got {type(batch).__name__}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise WrongTypeError(
            f"optimizer must be a torch.optim.Optimizer over the model's parameters; got {type(optimizer).__name__}"
        )
    if monitor is not None and not callable(getattr(monitor, "step", None)):
        raise WrongTypeError(f"monitor must be an lw.GradientMonitor or None; got {type(monitor).__name__}")
    if loss is not None and not callable(loss):
        raise WrongTypeError(f"loss must be a function of the model's output or None; got {type(loss).__name__}")
    return module


def _loss(module: torch.nn.Module, batch: dict, loss: Callable[[Any], Any] | None) -> torch.Tensor:
    """The forward and its loss, a scalar that backward can start from, or what is wrong named."""
    try:
        output = module(**batch)
    except (TypeError, ValueError) as err:  # inputs it does not take, or not all it needs
        if isinstance(err, TypeError) and "argument" not in str(err):
            raise
        raise InputError(f"the model does not take this batch {sorted(batch)}: {err}") from err
    value = loss(output) if loss is not None else getattr(output, "loss", None)
    if value is None:
        raise InputError("the model returned no loss: put labels in the batch, or pass loss=fn(output)")
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
        what = type(value).__name__ if not isinstance(value, torch.Tensor) else f"a tensor of shape {list(value.shape)}"
        grad = "" if not isinstance(value, torch.Tensor) or value.requires_grad else " that needs no gradient"
        raise InputError(
            f"the loss must be one number computed from trainable parameters; got {what}{grad} "
            "(reduce it, e.g. loss=lambda out: out.logits.mean(), and train with the model's parameters trainable)"
        )
    return value
