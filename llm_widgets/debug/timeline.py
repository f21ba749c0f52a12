"""A run's timeline: one `Call` per module call (forward, and backward when asked), each with
where it sits (module path, kind, layer, generation step, depth in the call stack), the shapes
and dtypes it took and gave, and cheap statistics of what it gave. Statistics only: memory grows
with the number of calls, never with the activations; tensors are recomputed by replaying the run.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..models.anatomy import anatomy

FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65504
STAT_NAMES = ("min", "max", "mean", "rms", "nan", "inf", "beyond_float16")


@dataclass(frozen=True)
class Stats:
    """Of one tensor: min and max over its finite values, mean and RMS (not finite where a value is
    not), how many values are NaN, infinite, and finite but beyond float16's range (65504)."""

    min: float
    max: float
    mean: float
    rms: float
    nan: int
    inf: int
    beyond_float16: int
    numel: int

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0

    def brief(self, digits: int = 4) -> str:
        """ "max |x| 7.9e+04, rms 2e+04, 15 NaN": what a line about a call says of its output."""
        text = f"max |x| {max(abs(self.min), abs(self.max)):.{digits}g}, rms {self.rms:.{digits}g}"
        return text + (f", {self.nan} NaN" if self.nan else "") + (f", {self.inf} Inf" if self.inf else "")

    def beyond(self, limit: float) -> bool:
        """Whether a finite value exceeds `limit` in magnitude (the range of a narrower dtype)."""
        return max(abs(self.min), abs(self.max)) > limit if self.numel else False


def stats_of(x: torch.Tensor) -> Stats:
    """Three reductions on the fast path (min/max, sum, norm: one device sync); counting NaN, Inf and
    values beyond float16 only where the fast path shows some."""
    x = x.detach()
    n = x.numel()
    if n == 0:
        return Stats(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0)
    if not x.is_floating_point():
        x = x.float()
    low, high = torch.aminmax(x)
    low_v, high_v, total, norm = torch.stack(
        [low.float(), high.float(), x.sum(dtype=torch.float32), torch.linalg.vector_norm(x, dtype=torch.float32)]
    ).tolist()
    nan = inf = 0
    if not all(math.isfinite(v) for v in (low_v, high_v, total, norm)):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if nan or inf:  # min and max over the finite values only
            finite = x[torch.isfinite(x)]
            low_v, high_v = (float(finite.min()), float(finite.max())) if finite.numel() else (math.nan, math.nan)
    beyond = 0
    if max(abs(low_v), abs(high_v)) > FLOAT16_MAX:
        beyond = int((x.abs() > FLOAT16_MAX).sum()) - inf
    return Stats(low_v, high_v, total / n, norm / math.sqrt(n), nan, inf, beyond, n)


def first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a module's output (or input) carries: itself, the first of a tuple or list, an
    output object's first tensor field (logits, last_hidden_state)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
        return None
    if hasattr(value, "to_tuple"):  # transformers' ModelOutput
        return first_tensor(value.to_tuple())
    return None


def shapes_of(args: tuple, kwargs: dict) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(name, shape, dtype) of each tensor argument: positional ones named by position."""
    named = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    return tuple(
        (name, tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for name, value in named
        if isinstance(value, torch.Tensor)
    )


@dataclass
class Call:
    """One module call. `call` is its index in entry order (a parent before its children), `module`
    its dotted path in the model; `layer` the block it is in (None outside the blocks), `step` the
    generation step (0: the prompt pass), `parent` the call it ran inside. `stats` describe its
    output (forward) or the gradient it passes back (backward); None until it has returned."""

    call: int
    module: str
    kind: str
    layer: int | None
    step: int
    depth: int
    parent: int | None
    phase: str = "forward"
    inputs: tuple[tuple[str, tuple[int, ...], str], ...] = ()
    output_shape: tuple[int, ...] | None = None
    output_dtype: str | None = None
    stats: Stats | None = None
    input_finite: bool = True
    child_nonfinite: bool = False  # a call inside it gave NaN or Inf first
    exit_order: int | None = None  # when it returned, counted over the run; None: it never did
    watched: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        where = f"layer {self.layer}, " if self.layer is not None else ""
        shape = f" -> {list(self.output_shape)} {self.output_dtype}" if self.output_shape is not None else ""
        numbers = f"; {self.stats.brief()}" if self.stats is not None else ""
        back = " (backward)" if self.phase == "backward" else ""
        name = self.module or "<model>"
        return f"Call({self.call}{back}: {name} [{self.kind}], {where}step {self.step}{shape}{numbers})"


_LAYER_IN_PATH = re.compile(r"\.(\d+)(?:\.|$)")


class ModuleMap:
    """Each module of the model: its dotted path, its kind (model, embedding, block, attention,
    mlp, norm, head, linear, activation, dropout, module) and the layer it belongs to."""

    def __init__(self, model: torch.nn.Module, n_layers: int):
        self.root = model
        self.paths = {id(m): path for path, m in model.named_modules()}
        parts = None
        try:
            parts = anatomy(model, n_layers) if hasattr(model, "config") else None
        except InputError:
            parts = None
        self.layers: dict[int, int] = {}
        self.special: dict[int, str] = {}
        if parts is not None:
            for i, block in enumerate(parts.blocks):
                for module in block.modules():
                    self.layers[id(module)] = i
                self.special[id(block)] = "block"
            for group, kind in ((parts.attentions, "attention"), (parts.mlps, "mlp")):
                for module in group:
                    if module is not None:
                        self.special[id(module)] = kind
            if parts.unembedding is not None:
                self.special[id(parts.unembedding)] = "head"
        self.special[id(model)] = "model"

    def path(self, module: torch.nn.Module) -> str:
        return self.paths.get(id(module), type(module).__name__)

    def layer(self, module: torch.nn.Module) -> int | None:
        if id(module) in self.layers:
            return self.layers[id(module)]
        found = _LAYER_IN_PATH.search(self.path(module))  # a plain model's blocks: "blocks.3.attn"
        return int(found.group(1)) if found else None

    def kind(self, module: torch.nn.Module) -> str:
        if id(module) in self.special:
            return self.special[id(module)]
        name = type(module).__name__.lower()
        leaf = self.path(module).rsplit(".", 1)[-1].lower()
        if isinstance(module, torch.nn.Embedding):
            return "embedding"
        if "attention" in name or leaf in ("attn", "self_attn", "attention"):
            return "attention"
        if "norm" in name:
            return "norm"
        if isinstance(module, torch.nn.Linear) or "linear" in name or "conv1d" in name:
            return "linear"
        if "dropout" in name:
            return "dropout"
        if "mlp" in name or leaf in ("mlp", "feed_forward", "ffn"):
            return "mlp"
        if "act" in name or "gelu" in name or "silu" in name or "relu" in name or leaf.startswith("act"):
            return "activation"
        if name.endswith(("layer", "block")) and self.layer(module) is not None:
            return "block"
        return "module"

    def matching(self, pattern: str) -> list[str]:
        """The module paths a glob names ("model.layers.*.mlp"); "" is the model itself."""
        return [path for path in self.paths.values() if fnmatch.fnmatchcase(path, pattern)]
