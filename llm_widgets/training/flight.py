"""The flight recorder: what each training forward was given, kept for the last few steps, so a
step that went wrong can be looked at and run again.

A pre-hook on the monitored module copies each training forward's inputs (token ids, labels,
masks: small) and the random generators' state (dropout draws from it); a hook after it keeps the
model's loss (a tensor: no wait for the device). `step()` moves the forwards since the last step
into a ring of the last `keep` steps. An alert that starts makes an `Incident` from its step.
Forwards without gradients (evaluation, generation) are not kept.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_map

MAX_FORWARDS = 256  # per step (gradient accumulation): more is a loop that never calls step()


def _copied(value: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, value)


def rng_state(device: torch.device | None = None) -> dict:
    """The random generators a forward draws from: the CPU's, and the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def output_field(output: Any, name: str) -> Any:
    """A field of a model's output (a ModelOutput, or a dict): its loss, its logits; None if absent."""
    return output.get(name) if isinstance(output, dict) else getattr(output, name, None)


@dataclass
class Forward:
    """One training forward: its inputs as the module received them, the generators' state before it."""

    args: tuple
    kwargs: dict
    rng: dict
    names: tuple[str, ...] = ()  # the forward's positional parameter names
    training: bool = True  # the module's mode (dropout on or off)
    loss: Any = None  # the model's own loss (output.loss), when it computed one
    seconds: float = 0.0

    @property
    def inputs(self) -> dict:
        """Named inputs: positional ones under their names in the module's forward."""
        names = [*self.names, *(f"arg{i}" for i in range(len(self.names), len(self.args)))]
        return dict(zip(names, self.args)) | dict(self.kwargs)

    def rerun(self, model: torch.nn.Module, device: torch.device) -> Any:
        """This forward again on `model`: its mode, its generators' state (dropout draws the same), its inputs."""
        model.train(self.training)
        set_rng_state(self.rng, device)
        return model(*self.args, **self.kwargs)

    @property
    def nbytes(self) -> int:
        total = 0
        for t in (*self.args, *self.kwargs.values(), *self.rng.values()):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        return total


@dataclass
class Incident:
    """A training step where an alert started: what went in, what the monitor saw.

    step, rank (the process whose batch it came from: the one whose loss was not finite, or the
    highest), groups and kinds that alerted, the alerts' messages, lr and loss, `batches` (one per
    forward of the step: several under gradient accumulation), `batch` (the one holding the worst
    example), `example_losses` (one list per batch; None where the output has no logits and labels
    to compute it from), `weights` (a copy of the model's weights before the step, on the CPU, when kept)."""

    step: int
    rank: int
    groups: tuple[str, ...]
    kinds: tuple[str, ...]
    messages: tuple[str, ...]
    group_norms: dict[str, float]
    lr: float | None
    loss: float | None
    forwards: list[Forward]
    example_losses: list[list[float]] | None = None
    weights: dict[str, torch.Tensor] | None = None
    world_size: int = 1
    rank_losses: list[float] = field(default_factory=list)

    @property
    def batches(self) -> list[dict]:
        return [f.inputs for f in self.forwards]

    @property
    def worst(self) -> tuple[int, int] | None:
        """(batch, example) with the highest loss (a non-finite one first), or None if unknown."""
        if not self.example_losses:
            return None
        flat = [(b, i, v) for b, losses in enumerate(self.example_losses) for i, v in enumerate(losses)]
        if not flat:
            return None
        b, i, _ = max(flat, key=lambda t: (not _finite(t[2]), t[2] if _finite(t[2]) else 0.0))
        return b, i

    @property
    def batch(self) -> dict:
        worst = self.worst
        return self.batches[worst[0] if worst else 0]

    def summary(self) -> dict:
        """JSON-able, for the view and the record."""
        worst = self.worst
        return {
            "step": self.step,
            "rank": self.rank,
            "groups": list(self.groups),
            "kinds": list(self.kinds),
            "messages": list(self.messages),
            "loss": number(self.loss),
            "lr": self.lr,
            "batches": len(self.forwards),
            "worst": None
            if worst is None
            else {"batch": worst[0], "example": worst[1], "loss": number(self.example_losses[worst[0]][worst[1]])},  # type: ignore[index]
            "weights_kept": self.weights is not None,
        }

    def __repr__(self) -> str:
        worst = self.worst
        where = f", worst example {worst[1]} of batch {worst[0]}" if worst else ""
        return (
            f"Incident(step {self.step}, rank {self.rank}: {', '.join(self.kinds)} in {', '.join(self.groups)}"
            f"{where}{', weights kept' if self.weights is not None else ''})"
        )


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def number(value: float | None) -> float | str | None:
    """A number for JSON (the widget's messages refuse NaN and Inf): non-finite ones as text."""
    return value if value is None or _finite(value) else str(value)


class FlightRecorder:
    """The last `keep` steps' forwards of one module (the hooks come off with `close()`)."""

    def __init__(self, module: torch.nn.Module, keep: int):
        self.module, self.keep = module, keep
        self.ring: deque[tuple[int, list[Forward]]] = deque(maxlen=keep)
        self.pending: list[Forward] = []
        self.paused = False
        self._started: float | None = None
        self._names = _parameter_names(module)
        self._handles = (
            [
                module.register_forward_pre_hook(self._before, with_kwargs=True),
                module.register_forward_hook(self._after, with_kwargs=True, always_call=True),
            ]
            if keep
            else []
        )

    @property
    def hook_ids(self) -> set[int]:
        return {h.id for h in self._handles}

    def _recording(self) -> bool:
        return not self.paused and torch.is_grad_enabled()  # a forward whose loss may go backward

    def _before(self, module, args, kwargs) -> None:
        if not self._recording() or len(self.pending) >= MAX_FORWARDS:
            return
        device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.pending.append(Forward(_copied(args), _copied(kwargs), rng_state(device), self._names, module.training))
        self._started = time.perf_counter()

    def _after(self, module, args, kwargs, output) -> None:
        if self._started is None or not self.pending:
            return
        self.pending[-1].seconds = time.perf_counter() - self._started
        self._started = None
        loss = output_field(output, "loss")
        if isinstance(loss, torch.Tensor):
            self.pending[-1].loss = loss.detach()

    def take(self, step: int) -> list[Forward]:
        """The forwards since the last step, now kept under `step`."""
        forwards, self.pending = self.pending, []
        if self.keep:
            self.ring.append((step, forwards))
        return forwards

    def untake(self, step: int) -> None:
        """Undo `take` (a step that failed: its retry sees the same forwards)."""
        if self.ring and self.ring[-1][0] == step:
            self.pending = self.ring.pop()[1] + self.pending

    def forwards_of(self, step: int) -> list[Forward] | None:
        return next((f for s, f in self.ring if s == step), None)

    @property
    def nbytes(self) -> int:
        """Memory the kept steps hold."""
        return sum(f.nbytes for _, forwards in self.ring for f in forwards)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _parameter_names(module: torch.nn.Module) -> tuple[str, ...]:
    try:
        return tuple(
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
    except (TypeError, ValueError):
        return ()
