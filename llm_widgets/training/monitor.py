"""`GradientMonitor`: gradient health per layer while a model trains, and steering.

Call `monitor.step()` after `loss.backward()` and before `optimizer.step()` (or
let it hook the optimizer: `with GradientMonitor(model, optimizer=opt):`, or
`trainer.add_callback(monitor.callback)`). Each step it reads the gradients
already there (no hooks in the backward pass): one fused norm per parameter
(`torch._foreach_norm`), summed per group of parameters; it applies the
steering (scale, clip) to groups before the optimizer sees them; after the
optimizer step it measures the update-to-weight ratio per group. Every N steps
it adds a histogram of log10 |gradient| per group, on fixed bins (from at most 2^20 evenly spaced
values per group), and every `updates_every` steps the update-to-weight ratio (exact: it keeps a
copy of the weights; `update_sample=n` compares n evenly spaced values per parameter instead, a
small copy for a large model).

The flight recorder (flight.py) keeps the last `keep` steps' inputs; an alert that starts makes an
`Incident` (`monitor.incidents`), which `monitor.replay(incident)` runs again under the debugger's
breakpoints. Under torch.distributed every rank runs the monitor (distributed.py).
"""

from __future__ import annotations

import difflib
import math
import re
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from .. import checks
from .._version import __version__
from ..errors import InputError, WrongTypeError
from ..models.language_model import torch_module
from .alerts import KINDS, GradientWarning, TrainingStopped
from .distributed import Cluster, unwrapped
from .flight import FlightRecorder, Forward, Incident
from .replay import StepReplay, example_losses, replay

HIST_EDGES = torch.linspace(-12, 4, 65)  # log10 |g|: 64 fixed bins from 1e-12 to 1e4; zeros counted apart
HIST_SAMPLE = 1 << 20  # values per group a histogram reads (evenly spaced): its shape, at a fixed cost
MAX_INCIDENTS = 64
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")

# torch's fused multi-tensor kernels (torch.optim runs on them): private by name in torch's stubs only
_foreach_norm, _foreach_copy_, _foreach_sub_ = (
    torch._foreach_norm,  # pyright: ignore[reportPrivateImportUsage]
    torch._foreach_copy_,  # pyright: ignore[reportPrivateImportUsage]
    torch._foreach_sub_,  # pyright: ignore[reportPrivateImportUsage]
)


def _checked_module(model: Any) -> torch.nn.Module:
    """The torch module to monitor: one with no monitor attached yet."""
    module = torch_module(model)
    if not isinstance(module, torch.nn.Module):
        raise WrongTypeError(f"GradientMonitor takes a torch module or lw.LanguageModel; got {type(model).__name__}")
    current = getattr(module, "_llm_widgets_monitor", None)
    if current is not None and current() is not None:
        raise RuntimeError(
            "this model already has a GradientMonitor attached: use that one, or call its "
            ".detach() before attaching another (two would both steer the same gradients)"
        )
    return module


def _check_recorder(keep: Any, keep_weights: Any, update_sample: Any, sync_timeout: Any) -> None:
    checks.integer(keep, "keep", low=0)
    checks.integer(keep_weights, "keep_weights", low=0)
    if update_sample is not None:
        checks.integer(update_sample, "update_sample", low=1, note=" (values per parameter) or None")
    checks.number(sync_timeout, "sync_timeout", low=0, low_open=True)


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise WrongTypeError(
            f"optimizer must be a torch.optim.Optimizer (the one that steps this model), or None; got "
            f"{type(optimizer).__name__} {optimizer!r:.40}"
        )


def _checked_alerts(vanishing: Any, exploding: Any, spike: Any, stop_on: Any) -> tuple[str, ...]:
    """The alert thresholds checked; the kinds of alert that stop training, as a tuple."""
    if not (0 <= vanishing < exploding):
        raise InputError(f"thresholds must satisfy 0 <= vanishing < exploding; got {vanishing}, {exploding}")
    if spike is not None and not spike > 1:
        raise InputError(f"spike must be a factor > 1 (or None to turn it off); got {spike!r}")
    stop_on = (stop_on,) if isinstance(stop_on, str) else tuple(stop_on)
    unknown = set(stop_on) - set(KINDS)
    if unknown:
        raise InputError(f"stop_on takes {', '.join(KINDS)}; got {sorted(unknown)}")
    return stop_on


def _monitored(module: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Parameter]], int]:
    """The (name, parameter) pairs that will get gradients, and how many trainable ones accelerate
    offloads (kept on the meta device, a copy loaded for each call: no gradient reaches them)."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    named = [(n, p) for n, p in trainable if p.device.type != "meta"]
    offloaded = len(trainable) - len(named)
    if offloaded:
        message = (
            f"{offloaded} parameters are offloaded by accelerate (on the meta device, loaded for each "
            f"call): they get no gradients and are not monitored. Put the layers you train on a device "
            f"(a device_map without 'cpu' or 'disk' for them)"
        )
        if not named:
            raise InputError(message.replace("are not monitored", "nothing is left to monitor"))
        warnings.warn(message, UserWarning, stacklevel=3)
    if not named:
        raise InputError(
            "every parameter of this model is frozen (requires_grad=False): there are no gradients "
            "to monitor. Unfreeze what you train, e.g. model.requires_grad_(True)"
        )
    return named, offloaded


@dataclass
class Steering:
    pattern: str
    groups: tuple[str, ...]
    scale: float = 1.0
    clip: float | None = None


def layer_group(name: str) -> str:
    """Default grouping: 'layer 3' for parameters inside block 3, else 'embeddings' or 'other'."""
    match = _LAYER.search(name)
    if match:
        return f"layer {int(match.group(1))}"
    if "embed" in name or name.split(".")[-2:-1] in (["wte"], ["wpe"]):
        return "embeddings"
    return "other"


def _sort_key(group: str):
    match = re.fullmatch(r"layer (\d+)", group)
    return (0 if group == "embeddings" else 1 if match else 2, int(match.group(1)) if match else 0, group)


class GradientMonitor:
    """Gradient norms per layer (or per group), alerts, histograms and steering while training.

    model: a torch module or lw.LanguageModel. groups: "layers" (by block index),
    "parameters" (one group each), or {name: regex} / [regex, ...] over parameter
    names. updates_every: how often the update-to-weight ratio is measured (it keeps a
    copy of the weights across the optimizer step). vanishing / exploding: thresholds on a group's gradient
    norm; spike: a norm
    above spike x the group's median over its last 20 recorded steps is exploding too
    (when it is at least spike_floor: a jump from 1e-6 to 1e-5 is no explosion).
    stop_on: alert kinds ("nonfinite", "exploding", "vanishing") that stop training.
    keep: how many recent steps' inputs the flight recorder keeps (0: none, no incidents);
    keep_weights: how many of the latest incidents keep a CPU copy of the weights (for an exact
    replay). distributed: "auto" (on when torch.distributed is initialised with several ranks),
    True or False; sync_timeout: seconds to wait for every rank to attach its monitor.
    update_sample: None (update ratios exact, from a copy of the weights) or n (from n evenly
    spaced values of each larger parameter: an estimate, with a copy that stays small).
    """

    def __init__(
        self,
        model: Any,
        *,
        every: int = 1,
        histograms_every: int = 50,
        updates_every: int = 10,
        groups: Any = "layers",
        vanishing: float = 1e-7,
        exploding: float = 1e3,
        spike: float | None = 10.0,
        spike_floor: float = 1e-3,
        stop_on: Any = (),
        optimizer: Any = None,
        warn: bool = True,
        keep: int = 8,
        keep_weights: int = 1,
        distributed: Any = "auto",
        sync_timeout: float = 60.0,
        update_sample: int | None = None,
    ):
        module = _checked_module(model)
        for name, value in (("every", every), ("histograms_every", histograms_every), ("updates_every", updates_every)):
            checks.integer(value, name, low=1)
        _check_recorder(keep, keep_weights, update_sample, sync_timeout)
        self.update_sample = update_sample
        stop_on = _checked_alerts(vanishing, exploding, spike, stop_on)
        _check_optimizer(optimizer)
        named, self.offloaded = _monitored(module)
        self.cluster = Cluster(module, distributed, sync_timeout)  # every rank attaches, or a clear error
        self.module = module
        self.every, self.histograms_every, self.updates_every = every, histograms_every, updates_every
        self.vanishing, self.exploding, self.spike, self.stop_on = vanishing, exploding, spike, stop_on
        self.warn = warn and self.cluster.rank == 0  # one voice: rank 0's
        self.spike_floor = spike_floor
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.frozen = sum(1 for p in module.parameters() if not p.requires_grad)
        self.group_of = self._assign_groups(groups)
        self.groups = sorted(set(self.group_of), key=_sort_key)
        index = {g: i for i, g in enumerate(self.groups)}
        self._group_index = torch.tensor([index[g] for g in self.group_of])
        self._optimizer, self.keep_weights = optimizer, keep_weights
        self._start_history()
        prefix = "module." if unwrapped(module) is not module else ""
        self._inner_names = [n.removeprefix(prefix) for n in self.names]  # as the unwrapped model names them
        self.flight = FlightRecorder(module, keep)
        weakref.finalize(self, self.flight.close)  # a monitor let go of takes its hooks off the model
        vars(module)["_llm_widgets_monitor"] = weakref.ref(self)  # a plain attribute (not a parameter or module)

    def _start_history(self) -> None:
        self.step_count = 0
        self.rows: list[dict] = []  # one per (step, group)
        self.steps: list[dict] = []  # one per step: loss, lr, global norm
        self.histograms: list[dict] = []  # {"step", "group", "counts", "zeros", "every"}
        self.alerts: list[dict] = []  # {"step", "group", "kind", "value", "message"}
        self.incidents: list[Incident] = []
        self.steering: dict[str, Steering] = {}
        self.steering_log: list[dict] = []  # every change, with the step it took effect from
        self._alerting: set[tuple[str, str]] = set()
        self._snapshot: int | None = None  # the step whose weights are in _buffers, until its update is measured
        self._buffers: list[torch.Tensor] | None = None
        self._listeners: list[Callable[[dict], None]] = []
        self._flushers: list[Callable[[], None]] = []
        self._hooks: list[Any] = []
        self._last_step_at: float | None = None

    # --- groups ---

    def _assign_groups(self, groups: Any) -> list[str]:
        if groups == "layers":
            return [layer_group(n) for n in self.names]
        if groups == "parameters":
            return list(self.names)
        if isinstance(groups, (list, tuple)):
            groups = {pattern: pattern for pattern in groups}
        if not isinstance(groups, dict) or not groups:
            raise InputError(
                "groups must be 'layers', 'parameters', a list of name patterns (regular expressions) "
                "or a dict {group name: pattern}"
            )
        compiled = {}
        for group, pattern in groups.items():
            if not isinstance(group, str) or not isinstance(pattern, str):
                raise InputError(f"groups maps group names to name patterns, both strings; got {group!r}: {pattern!r}")
            try:
                compiled[group] = re.compile(pattern)
            except re.error as error:
                raise InputError(
                    f"group {group!r}: {pattern!r} is not a regular expression ({error}); escape special "
                    f"characters with re.escape"
                ) from None
        out = [next((g for g, regex in compiled.items() if regex.search(n)), "other") for n in self.names]
        for group, pattern in groups.items():
            if group not in out:
                raise InputError(
                    f"group {group!r} ({pattern!r}) matches no trainable parameter; "
                    f"close names: {difflib.get_close_matches(pattern, self.names, n=5, cutoff=0.3)}"
                )
        return out

    # --- steering ---

    def steer(self, pattern: str, *, scale: float = 1.0, clip: float | None = None) -> list[str]:
        """Scale and/or clip (by group norm) the gradients of the groups matching `pattern`
        (a regex over group names, or an exact group name) before each optimizer step, from
        the next step on. scale=1 and clip=None remove the steering. Returns the groups."""
        checks.number(scale, "scale", low=0)
        if clip is not None:
            checks.number(clip, "clip", low=0, low_open=True, note=" (a maximum group norm) or None")
        if not isinstance(pattern, str):
            raise WrongTypeError(f"pattern must be a group name or a regex string; got {type(pattern).__name__}")
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise InputError(
                f"pattern {pattern!r} is not a valid regular expression ({error}); give a group name "
                f"such as {self.groups[0]!r}, or escape special characters with re.escape"
            ) from None
        hits = [g for g in self.groups if g == pattern or regex.fullmatch(g)]
        if not hits:
            close = difflib.get_close_matches(pattern, self.groups, n=5, cutoff=0.3) or self.groups[:8]
            raise InputError(
                f"{pattern!r} matches no group of this monitor; close names: {close} "
                f"(groups are {', '.join(self.groups[:3])}, ...; a regex matches whole names)"
            )
        if scale == 1.0 and clip is None:
            self.steering.pop(pattern, None)
        else:
            self.steering[pattern] = Steering(pattern, tuple(hits), float(scale), None if clip is None else float(clip))
        self.steering_log.append(
            {"step": self.step_count + 1, "pattern": pattern, "groups": hits, "scale": float(scale), "clip": clip}
        )
        return hits

    # --- the step ---

    def step(self, loss: Any = None, lr: float | None = None) -> dict:
        """Read (and steer) this step's gradients. Call after backward(), before optimizer.step().
        All or nothing: an error or an interrupt meanwhile leaves the gradients, the step count and
        the history as they were, so a retry steers once and records the step once."""
        loss, lr = _checked_loss(loss), _checked_lr(lr)  # before anything changes: a retry must not steer twice
        self._finish_update()
        kept = (self.steps, self.rows, self.histograms, self.alerts, self.incidents)
        marks = (self.step_count, *(len(k) for k in kept))
        alerting, grads_before = set(self._alerting), [p.grad for p in self.params]
        try:
            record = self._step(loss, lr)
        except TrainingStopped:
            raise  # the step is recorded, its alert decided to stop: nothing to undo
        except BaseException:
            for p, grad in zip(self.params, grads_before):
                p.grad = grad
            self.flight.untake(marks[0] + 1)
            self.step_count = marks[0]
            for kept_list, n in zip(kept, marks[1:]):
                del kept_list[n:]
            self._alerting, self._snapshot = alerting, None
            raise
        for listener in list(self._listeners):
            listener(record)
        return record

    def _step(self, loss: float | None, lr: float | None) -> dict:
        self.step_count += 1
        step, now = self.step_count, time.perf_counter()
        forwards = self.flight.take(step)
        self._follow_parameters()
        idx_list = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx_list and not self.cluster.active:  # (a rank may hold no shard of any gradient)
            raise RuntimeError(
                "no parameter has a gradient: call monitor.step() after loss.backward() and before "
                "optimizer.zero_grad()"
            )
        idx = torch.tensor(idx_list, dtype=torch.long)
        measure = step % self.every == 0 or bool(self.steering) or self.cluster.active
        record: dict = {"step": step}
        if measure:
            seconds = now - self._last_step_at if self._last_step_at is not None else 0.0
            group_norms, ranks = self._norms(idx_list, step, loss, forwards, seconds)
            applied = self._apply_steering(idx_list, group_norms)
            if step % self.every == 0:
                record.update(self._record(step, loss, lr, group_norms, applied, idx, ranks))
                started, stop = self._check(step, group_norms)
                if started and self.flight.keep:
                    record["incident"] = self._incident(step, started, ranks, forwards, loss, lr, group_norms).summary()
                if stop:
                    raise TrainingStopped(stop)
        if step % self.updates_every == 0 or step == 1:
            self._take_snapshot(step)
        self._last_step_at = now
        return record

    def _follow_parameters(self) -> None:
        """The module's parameters by name again where they were replaced since the monitor was made
        (FSDP2's fully_shard swaps them for sharded ones: the Trainer shards inside train())."""
        try:
            current = self.module.get_parameter(self.names[0])
        except AttributeError:
            return
        if current is self.params[0]:
            return
        self.params = [self.module.get_parameter(n) for n in self.names]
        self._buffers, self._snapshot = None, None  # (the update ratio's copy had the old shapes)

    def _norms(self, idx: list[int], step: int, loss, forwards: list[Forward], seconds: float):
        """The full gradient's per-group norms (over every rank), and each rank's figures."""
        parts = [self.cluster.local(g) for g in self._grads(idx)]
        local = [t for t, _ in parts]
        squares = _squared_norms(local)
        sharded = torch.tensor([s for _, s in parts], dtype=torch.bool)
        where = self._group_index[torch.tensor(idx, dtype=torch.long)]
        n = len(self.groups)
        by_shard = torch.zeros(n, dtype=torch.float64).index_add_(0, where[sharded], squares[sharded])
        whole = torch.zeros(n, dtype=torch.float64).index_add_(0, where[~sharded], squares[~sharded])
        local_loss = _local_loss(loss, forwards)
        mine = {
            "seconds": seconds,
            "forward_seconds": sum(f.seconds for f in forwards),
            "loss": local_loss if local_loss is not None and math.isfinite(local_loss) else 0.0,
            "nonfinite_loss": float(local_loss is not None and not math.isfinite(local_loss)),
            "step": float(step),
        }
        total, ranks = self.cluster.reduce(by_shard, whole, mine)
        return total.sqrt().float(), ranks

    def _take_snapshot(self, step: int) -> None:
        """Keep (a sample of) the weights before the optimizer step, in buffers reused from step to step."""
        with torch.no_grad():
            views = self._sampled_weights()
            if self._buffers is None:
                self._buffers = [v.clone() for v in views]
            else:
                _foreach_copy_(self._buffers, views)
        self._snapshot = step

    def _sampled_weights(self) -> list[torch.Tensor]:
        """Each parameter's values this rank holds (at most `update_sample` of them, evenly spaced)."""
        out = []
        for p in self.params:
            flat = self.cluster.local(p.detach())[0].reshape(-1)
            out.append(flat[:: max(1, -(-flat.numel() // self.update_sample))] if self.update_sample else flat)
        return out

    def _grads(self, idx: list[int]) -> list[torch.Tensor]:
        """The gradients of these parameters (each has one)."""
        return [g for g in (self.params[i].grad for i in idx) if g is not None]

    def _apply_steering(self, idx: list[int], group_norms: torch.Tensor) -> torch.Tensor:
        """Scale or clip the steered groups' gradients: new tensors put in .grad (the old ones are
        untouched, so an interrupted step can be undone exactly). Returns the groups' norms after.
        Under torch.distributed rank 0 decides the factors for every rank."""
        factors = torch.ones(len(self.groups))
        for rule in self.steering.values():
            for group in rule.groups:
                g = self.groups.index(group)
                factor = rule.scale
                if rule.clip is not None and group_norms[g] * factor > rule.clip:
                    factor = rule.clip / float(group_norms[g])
                factors[g] *= factor
        factors = self.cluster.from_rank0(factors)
        if (factors != 1).any() and idx:
            per_param = factors[self._group_index[torch.tensor(idx)]].tolist()
            for factor in sorted(set(per_param)):
                if factor != 1.0:
                    chosen = [i for i, f in zip(idx, per_param) if f == factor]
                    for i in chosen:
                        self.params[i].grad = self.params[i].grad * factor  # pyright: ignore[reportOptionalOperand]
        return group_norms * factors

    def _record(self, step, loss, lr, group_norms, applied, idx, ranks) -> dict:
        if lr is None and self._optimizer is not None:
            lr = self._optimizer.param_groups[0].get("lr")
        total = float(group_norms.pow(2).sum().sqrt())
        entry = {"step": step, "loss": loss, "lr": None if lr is None else float(lr), "global_norm": total}
        if self.cluster.active:
            entry["ranks"] = {k: ranks[k] for k in ("seconds", "forward_seconds", "loss")}
        self.steps.append(entry)
        rows = []
        for g, group in enumerate(self.groups):
            rows.append(
                {
                    "step": step,
                    "group": group,
                    "grad_norm": float(group_norms[g]),
                    "steered_norm": float(applied[g]),
                    "update_ratio": None,
                }
            )
        self.rows.extend(rows)
        if step % self.histograms_every == 0 or step == 1:
            self._histograms(step, idx)
        return {"steps": self.steps[-1], "rows": rows}

    def _typical(self, group: str) -> float | None:
        """The group's median norm over its last 20 recorded steps before this one (None if fewer than 3)."""
        n = len(self.groups)
        past = [
            r["grad_norm"] for r in self.rows[-21 * n : -n] if r["group"] == group and math.isfinite(r["grad_norm"])
        ]
        return float(torch.tensor(past).median()) if len(past) >= 3 else None

    def _kind(self, group: str, norm: float) -> tuple[str | None, str]:
        """The alert a group's norm raises (or None), and the limit it crossed, in words."""
        typical = self._typical(group) if self.spike else None
        spiking = (
            self.spike is not None
            and typical is not None
            and typical > 0
            and norm > self.spike * typical
            and norm >= self.spike_floor
        )
        if not math.isfinite(norm):
            return "nonfinite", ""
        if norm > self.exploding:
            return "exploding", f" > {self.exploding:g}"
        if spiking and typical:
            return "exploding", f", {norm / typical:.0f}x its median {typical:.3g}"
        if norm < self.vanishing:
            return "vanishing", f" < {self.vanishing:g}"
        return None, ""

    def _check(self, step: int, group_norms: torch.Tensor) -> tuple[list[dict], str | None]:
        """The alerts of this step: those that start now (an incident each step), and why to stop."""
        started, stop = [], None
        for g, group in enumerate(self.groups):
            norm = float(group_norms[g])
            kind, limit = self._kind(group, norm)
            for k in KINDS:
                if k != kind:
                    self._alerting.discard((k, group))
            if kind is None:
                continue
            message = f"step {step}: {kind} gradient in {group} (norm {norm:.3g}{limit})"
            alert = {"step": step, "group": group, "kind": kind, "value": norm, "message": message}
            self.alerts.append(alert)
            if (kind, group) not in self._alerting:  # warn when it starts, not every step it lasts
                self._alerting.add((kind, group))
                started.append(alert)
                if self.warn:
                    warnings.warn(message, GradientWarning, stacklevel=5)
            if kind in self.stop_on and stop is None:
                stop = f"{message}; stopping (stop_on={self.stop_on})"
        return started, stop

    def _histograms(self, step: int, idx) -> None:
        """log10 |gradient| per group, from at most HIST_SAMPLE evenly spaced values of it."""
        per_group: dict[int, list[torch.Tensor]] = {}
        for g, i in zip(self._grads(idx.tolist()), self._group_index[idx].tolist()):
            per_group.setdefault(i, []).append(self.cluster.local(g.detach())[0].reshape(-1))
        for i, parts in per_group.items():
            stride = max(1, -(-sum(p.numel() for p in parts) // HIST_SAMPLE))
            values = torch.cat([p[::stride] for p in parts]).float().abs()
            zeros = int((values == 0).sum())
            logs = torch.log10(values[values > 0]).clamp(float(HIST_EDGES[0]), float(HIST_EDGES[-1]))
            counts = torch.histc(logs, bins=len(HIST_EDGES) - 1, min=float(HIST_EDGES[0]), max=float(HIST_EDGES[-1]))
            self.histograms.append(
                {
                    "step": step,
                    "group": self.groups[i],
                    "counts": counts.long().tolist(),
                    "zeros": zeros,
                    "every": stride,  # the values read: every stride-th
                }
            )

    # --- the flight recorder ---

    def _origin(self, ranks: dict) -> int:
        """The rank a bad step came from: the first whose loss was not finite, else the highest loss."""
        bad = [r for r, flag in enumerate(ranks["nonfinite_loss"]) if flag]
        if bad:
            return bad[0]
        losses = ranks["loss"]
        return max(range(len(losses)), key=lambda r: losses[r])

    def _incident(self, step, started, ranks, forwards, loss, lr, group_norms) -> Incident:
        """Keep the step where alerts started: its batches (the origin rank's, on every rank), each
        example's loss, and a CPU copy of the weights for the latest `keep_weights` incidents."""
        origin = self._origin(ranks)
        forwards = self.cluster.from_rank(forwards, origin)
        sharded = any(self.cluster.local(p)[1] for p in self.params)
        incident = Incident(
            step=step,
            rank=origin,
            groups=tuple(dict.fromkeys(a["group"] for a in started)),
            kinds=tuple(dict.fromkeys(a["kind"] for a in started)),
            messages=tuple(a["message"] for a in started),
            group_norms={g: float(v) for g, v in zip(self.groups, group_norms)},
            lr=lr,
            loss=loss,
            forwards=forwards,
            example_losses=self._example_losses(forwards, sharded),
            weights=None if sharded or not self.keep_weights else self._weights(),
            world_size=self.cluster.world,
            rank_losses=list(ranks["loss"]),
        )
        self.incidents.append(incident)
        for old in self.incidents[: -self.keep_weights or len(self.incidents)]:
            old.weights = None
        del self.incidents[:-MAX_INCIDENTS]
        return incident

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in unwrapped(self.module).named_parameters()}

    def _example_losses(self, forwards: list[Forward], sharded: bool) -> list[list[float]] | None:
        """Each example's loss, from the step's forwards run again without gradients (the same
        random draws; the weights are still the step's). Under FSDP every rank runs them together."""
        model = self.module if sharded else unwrapped(self.module)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        out: list[list[float]] = []
        self.flight.paused = True
        training = model.training
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for forward in forwards:
                    losses = example_losses(model, forward.rerun(model, device), forward.inputs)
                    if losses is None:
                        return None
                    out.append(losses)
        finally:
            model.train(training)
            self.flight.paused = False
        return out

    def replay(
        self, incident: Incident, model: Any = None, *, state: Any = None, breakpoints: Any = None, loss_fn: Any = None
    ) -> StepReplay:
        """Run the incident's step again, forward and backward, on a copy of `model` (default: the
        monitored one) with the step's weights (kept with the incident, or `state`), its batches and
        random state; the debugger's breakpoints (default NonFinite and NormJump(10)) watch every
        module call of both passes. `loss_fn(output, inputs)` if the model computes no loss itself."""
        return replay(self, incident, model, state, breakpoints, loss_fn)

    def norms_of(self, gradients: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-group norms of gradients named as the (unwrapped) model names its parameters."""
        found = [(i, gradients[n]) for i, n in enumerate(self._inner_names) if n in gradients]
        if not found:
            return dict.fromkeys(self.groups, 0.0)
        squares = _squared_norms([g for _, g in found])  # as step() computes them
        where = self._group_index[torch.tensor([i for i, _ in found])]
        total = torch.zeros(len(self.groups), dtype=torch.float64).index_add_(0, where, squares)
        return {g: float(v) for g, v in zip(self.groups, total.sqrt().float())}

    def _finish_update(self) -> None:
        """Update-to-weight ratio of the optimizer step that followed the last snapshot (under FSDP,
        each rank's from its own shards)."""
        if self._snapshot is None or self._buffers is None:
            return
        step, before = self._snapshot, self._buffers
        self._snapshot = None
        with torch.no_grad():
            size = torch.stack(_foreach_norm(before)).double().cpu().pow(2)
            _foreach_sub_(before, self._sampled_weights())  # in place: before - after
            change = torch.stack(_foreach_norm(before)).double().cpu().pow(2)
        n = len(self.groups)
        ratios = torch.zeros(n, dtype=torch.float64).index_add_(0, self._group_index, change).sqrt() / torch.zeros(
            n, dtype=torch.float64
        ).index_add_(0, self._group_index, size).sqrt().clamp_min(1e-30)
        for row in self.rows[-n:]:
            if row["step"] == step:
                row["update_ratio"] = float(ratios[self.groups.index(row["group"])])

    @property
    def update_pending(self) -> int | None:
        """The step whose update-to-weight ratio waits for its optimizer step, if any."""
        return self._snapshot

    def log(self, loss: Any = None, lr: float | None = None) -> None:
        """Attach the loss (and lr) to the latest recorded step: for `with monitor:` loops, where
        the step is read from the optimizer's hook before the loss is at hand."""
        if not self.steps:
            return
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach().float().mean())
        if loss is not None:
            self.steps[-1]["loss"] = float(loss)
        if lr is not None:
            self.steps[-1]["lr"] = float(lr)

    def flush(self) -> None:
        """Draw every step so far now (the widget otherwise sends at most every half second)."""
        self._finish_update()
        for flush in list(self._flushers):
            flush()

    def after_optimizer_step(self) -> None:
        """Measure the update now (the next step() would do it anyway)."""
        self._finish_update()

    # --- reading it ---

    @property
    def record(self) -> dict:
        """What this monitoring run was, JSON-able: settings, groups, every steering change with
        its step, and the alerts (for the notes of an experiment, beside the trace records)."""
        return {
            "llm_widgets": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model": type(self.module).__name__,
            "groups": self.groups,
            "trainable_parameters": len(self.params),
            "frozen_parameters": self.frozen,
            "settings": {
                "every": self.every,
                "histograms_every": self.histograms_every,
                "updates_every": self.updates_every,
                "vanishing": self.vanishing,
                "exploding": self.exploding,
                "spike": self.spike,
                "spike_floor": self.spike_floor,
                "stop_on": list(self.stop_on),
                "keep": self.flight.keep,
                "keep_weights": self.keep_weights,
                "update_sample": self.update_sample,
            },
            "steps": self.step_count,
            "steering": [dict(entry) for entry in self.steering_log],
            "alerts": [{k: a[k] for k in ("step", "group", "kind", "value")} for a in self.alerts],
            "incidents": [i.summary() for i in self.incidents],
            "ranks": self.cluster.world,
        }

    def to_dataframe(self):
        """One row per (step, group): grad_norm, steered_norm, update_ratio, and the step's loss, lr, global_norm."""
        import pandas as pd

        self._finish_update()
        rows = pd.DataFrame(self.rows, columns=["step", "group", "grad_norm", "steered_norm", "update_ratio"])
        steps = pd.DataFrame(self.steps, columns=["step", "loss", "lr", "global_norm"])
        return rows.merge(steps, on="step", how="left")

    def ranks_dataframe(self):
        """Under torch.distributed, one row per (step, rank): seconds (since the rank's previous
        step), forward_seconds (its forwards alone: a straggler's are longer), loss. Empty alone."""
        import pandas as pd

        rows = [
            {"step": s["step"], "rank": r, **{k: s["ranks"][k][r] for k in ("seconds", "forward_seconds", "loss")}}
            for s in self.steps
            if "ranks" in s
            for r in range(len(s["ranks"]["seconds"]))
        ]
        return pd.DataFrame(rows, columns=["step", "rank", "seconds", "forward_seconds", "loss"])

    def subscribe(self, listener: Callable[[dict], None], flush: Callable[[], None] | None = None) -> None:
        """Call `listener` with each recorded step's summary; `flush` when `monitor.flush()` asks
        for everything so far to be drawn (what a view does)."""
        self._listeners.append(listener)
        if flush is not None:
            self._flushers.append(flush)

    def unsubscribe(self, listener: Callable[[dict], None], flush: Callable[[], None] | None = None) -> None:
        """Stop calling them (a closed view lets go of the monitor, and the monitor of it)."""
        self._listeners = [f for f in self._listeners if f != listener]
        self._flushers = [f for f in self._flushers if f != flush]

    @property
    def callback(self):
        """A transformers TrainerCallback: `trainer.add_callback(monitor.callback)`."""
        from .callback import MonitorCallback  # imports transformers' Trainer (seconds): only when asked for

        return MonitorCallback(self)

    # --- optimizer hooks: `with monitor:` ---

    def __enter__(self) -> GradientMonitor:
        if self._optimizer is None:
            raise RuntimeError(
                "`with monitor:` hooks the optimizer: create it as GradientMonitor(model, "
                "optimizer=opt), or call monitor.step() yourself after backward()"
            )

        def before(*_):
            self.step()  # a pre-hook must return None

        def after(*_):
            self.after_optimizer_step()

        self._hooks = [self._optimizer.register_step_pre_hook(before), self._optimizer.register_step_post_hook(after)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.flush()

    def detach(self) -> None:
        """Stop monitoring this model (another monitor may attach)."""
        self.__exit__()
        self.flight.close()
        if getattr(self.module, "_llm_widgets_monitor", None) is not None:
            del self.module._llm_widgets_monitor

    def __repr__(self) -> str:
        return (
            f"GradientMonitor({len(self.params)} parameters in {len(self.groups)} groups, step {self.step_count}, "
            f"{len(self.alerts)} alerts, steering {list(self.steering) or 'none'})"
        )


def _checked_loss(loss: Any) -> float | None:
    if loss is None:
        return None
    if isinstance(loss, torch.Tensor):
        if loss.numel() == 0:
            raise InputError("loss is an empty tensor; pass the loss you called backward() on")
        return float(loss.detach().float().mean())
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise InputError(f"loss must be a number or a tensor; got {type(loss).__name__} {loss!r}")
    return float(loss)


def _squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's squared norm (float64, on the CPU): one fused norm for all, and float64 again
    for a tensor whose float32 norm overflows on finite values."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    squares = torch.stack(_foreach_norm(tensors)).double().cpu().pow(2)
    for i in torch.nonzero(~torch.isfinite(squares)).flatten().tolist():
        if bool(torch.isfinite(tensors[i]).all()):
            squares[i] = float(tensors[i].double().pow(2).sum())
    return squares


def _local_loss(loss: float | None, forwards: list[Forward]) -> float | None:
    """This rank's loss: the one given to step(), else the mean of the model's own over the step's forwards."""
    if loss is not None:
        return loss
    losses = [float(f.loss.float().mean()) for f in forwards if isinstance(f.loss, torch.Tensor)]
    return sum(losses) / len(losses) if losses else None


def _checked_lr(lr: Any) -> float | None:
    if lr is None:
        return None
    return checks.number(lr, "lr", low=0, note=" (the optimizer's learning rate)")
