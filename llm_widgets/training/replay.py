"""`monitor.replay(incident)`: the training step that went wrong, run again forward and backward on
a copy of the model, with the debugger's breakpoints on every module call of both passes.

The copy gets the weights the step had (kept with the incident, or a state you give), each
forward gets the batch and the random generators' state it had (dropout draws the same), and the
loss goes backward as in training: so on the CPU the gradients are those of the step, bit for bit.
The training model, its gradients and the process's random state are untouched.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..debug.breakpoints import Breakpoint, NonFinite, NormJump, checked_breakpoints
from ..debug.recorder import Hit, Recorder
from ..debug.timeline import Call
from ..errors import InputError, WrongTypeError
from ..models.language_model import config_layers, torch_module
from .distributed import unwrapped
from .flight import Forward, Incident, number, output_field

if TYPE_CHECKING:
    from .monitor import GradientMonitor


@dataclass
class StepReplay:
    """The step run again. `example_losses` (one list per forward), `gradients` {parameter name:
    tensor}, `group_norms` {group: norm}, `hits` (breakpoints that held, in the order the calls
    returned: forward first, then backward), `stopped_at` (the first hit's call: its `.module`,
    `.phase`), `reason`, `exact` (the step's own weights were used), `calls` (the timeline)."""

    incident: Incident
    example_losses: list[list[float]] | None
    gradients: dict[str, torch.Tensor]
    group_norms: dict[str, float]
    calls: list[Call]
    hits: list[Hit]
    exact: bool
    error: BaseException | None = None

    @property
    def stopped_at(self) -> Call | None:
        return self.calls[self.hits[0].call] if self.hits else None

    @property
    def reason(self) -> str:
        return self.hits[0].reason if self.hits else ""

    @property
    def matches(self) -> bool:
        """The per-group norms equal those the monitor saw at the step (to float32 rounding)."""
        seen = self.incident.group_norms
        return all(_same(self.group_norms.get(g, 0.0), v) for g, v in seen.items())

    def summary(self) -> dict:
        at = self.stopped_at
        worst = self.incident.worst
        return {
            "step": self.incident.step,
            "rank": self.incident.rank,
            "module": at.module if at is not None else None,
            "phase": at.phase if at is not None else None,
            "reason": self.reason,
            "hits": len(self.hits),
            "exact": self.exact,
            "matches": self.matches,
            "worst": None
            if worst is None or self.example_losses is None
            else {"batch": worst[0], "example": worst[1], "loss": number(self.example_losses[worst[0]][worst[1]])},
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }

    def to_dataframe(self):
        """The hits: call, module, phase, layer, reason."""
        import pandas as pd

        rows = [
            {
                "call": h.call,
                "module": self.calls[h.call].module,
                "phase": self.calls[h.call].phase,
                "layer": self.calls[h.call].layer,
                "reason": h.reason,
            }
            for h in self.hits
        ]
        return pd.DataFrame(rows, columns=["call", "module", "phase", "layer", "reason"])

    def __repr__(self) -> str:
        at = self.stopped_at
        where = f"first hit {at.module or 'model'} ({at.phase}): {self.reason}" if at else "no breakpoint hit"
        weights = "" if self.exact else "; weights of another step"
        return f"StepReplay(step {self.incident.step}, rank {self.incident.rank}: {where}{weights})"


def _same(a: float, b: float) -> bool:
    if a == b:
        return True
    if a != a or b != b:
        return a != a and b != b
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-30)


def _copy(monitor: GradientMonitor, model: Any) -> torch.nn.Module:
    """A copy of `model` (or the monitored module) with none of the monitor's hooks."""
    source = unwrapped(torch_module(model) if model is not None else monitor.module)
    if not isinstance(source, torch.nn.Module):
        raise WrongTypeError(f"replay's model must be a torch module or lw.LanguageModel; got {type(model).__name__}")
    mine = dict(unwrapped(monitor.module).named_parameters())
    theirs = dict(source.named_parameters())
    wrong = [n for n in mine if n not in theirs or theirs[n].shape != mine[n].shape]
    if wrong or len(theirs) != len(mine):
        name = wrong[0] if wrong else next(n for n in theirs if n not in mine)
        raise InputError(
            f"replay runs the incident on a model of the monitored architecture "
            f"({type(unwrapped(monitor.module)).__name__}, {len(mine)} parameters); {type(source).__name__} differs "
            f"at {name!r}. Pass a copy of the trained model, "
            f"or state= (its state_dict) for the weights"
        )
    clone = copy.deepcopy(source)
    hooks = monitor.flight.hook_ids
    for module in clone.modules():
        for table in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k in table if k in hooks]:
                del table[key]
    vars(clone).pop("_llm_widgets_monitor", None)
    return clone


def _load(clone: torch.nn.Module, incident: Incident, state: Any) -> bool:
    """The step's weights into the copy: the incident's, or `state`. Whether they are the step's own."""
    weights = incident.weights if state is None else state
    if weights is None:
        warnings.warn(
            f"incident at step {incident.step} kept no weights (GradientMonitor(keep_weights=...)): replaying on the "
            f"weights as they are now, so the gradients are not the step's. Pass state= (a checkpoint from that step)",
            UserWarning,
            stacklevel=3,
        )
        return False
    if not isinstance(weights, dict):
        raise WrongTypeError(f"state must be a state_dict (parameter name -> tensor); got {type(weights).__name__}")
    params = dict(clone.named_parameters())
    missing = [n for n in params if n not in weights]
    if missing:
        raise InputError(
            f"state has no tensor for {len(missing)} parameters, e.g. {missing[:3]}: give the full state_dict"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    return True


def example_losses(module: torch.nn.Module, output: Any, inputs: dict) -> list[float] | None:
    """Each example's mean loss, as Hugging Face models compute theirs (labels -100 ignored; causal
    language models predict the next token); None without logits and labels."""
    logits = output_field(output, "logits")
    labels = inputs.get("labels")
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return None
    logits, labels = logits.detach().float(), labels.to(logits.device)
    if logits.dim() == 3 and labels.shape == logits.shape[:2]:
        name = type(module).__name__
        seq2seq = getattr(getattr(module, "config", None), "is_encoder_decoder", False)
        if not seq2seq and ("CausalLM" in name or "LMHead" in name):  # predicts the next token
            logits, labels = logits[:, :-1], labels[:, 1:]
        each = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        kept = (labels != -100).float()
        return ((each * kept).sum(1) / kept.sum(1).clamp_min(1)).tolist()
    if logits.dim() == 2 and labels.dim() == 1 and not labels.is_floating_point():
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none").tolist()
    return None


def _execute(clone: torch.nn.Module, forwards: list[Forward], loss_fn: Any, losses: list) -> None:
    """The step: each forward with its generators' state, its loss backward (divided by the number of
    forwards under gradient accumulation, as the Trainer does)."""
    device = next(clone.parameters()).device
    for forward in forwards:
        output = forward.rerun(clone, device)
        loss = loss_fn(output, forward.inputs) if loss_fn is not None else output_field(output, "loss")
        if not isinstance(loss, torch.Tensor):
            raise InputError(
                "the model's output has no loss (the batch had no labels?): pass loss_fn=fn(output, inputs) -> loss, "
                "the loss your training computes"
            )
        losses.append(example_losses(clone, output, forward.inputs))
        (loss / len(forwards) if len(forwards) > 1 else loss).backward()


def replay(
    monitor: GradientMonitor,
    incident: Incident,
    model: Any = None,
    state: Any = None,
    breakpoints: Any = None,
    loss_fn: Any = None,
) -> StepReplay:
    if not isinstance(incident, Incident):
        raise WrongTypeError(f"replay takes one of monitor.incidents; got {type(incident).__name__}")
    if not incident.forwards:
        raise InputError(
            f"incident at step {incident.step} kept no forwards: the model ran without gradients, or outside "
            f"the monitored module"
        )
    points: tuple[Breakpoint, ...] = (NonFinite(), NormJump(10))
    if breakpoints is not None:
        points = checked_breakpoints(breakpoints)
    clone = _copy(monitor, model)
    exact = _load(clone, incident, state)
    clone.zero_grad(set_to_none=True)
    recorder = Recorder(clone, points, [], n_layers=config_layers(clone))
    losses: list = []
    device = next(clone.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        recorder.record(lambda: _execute(clone, incident.forwards, loss_fn, losses), stop_after=None, grad=True)
    if isinstance(recorder.error, InputError):
        raise recorder.error
    gradients = {n: p.grad.detach().clone() for n, p in clone.named_parameters() if p.grad is not None}
    if recorder.hits and isinstance(recorder.hits[0].breakpoint, NonFinite):  # its own weights, if they are the cause
        first = recorder.hits[0]
        first.reason += recorder.bad_parameters(recorder.calls[first.call])
    return StepReplay(
        incident=incident,
        example_losses=losses if losses and all(x is not None for x in losses) else None,
        gradients=gradients,
        group_norms=monitor.norms_of(gradients),
        calls=recorder.calls,
        hits=recorder.hits,
        exact=exact,
        error=recorder.error,
    )
