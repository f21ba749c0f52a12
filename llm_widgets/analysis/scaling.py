"""How time and memory grow with the input: attention against the rest, per attention
implementation, with power laws fitted on a log-log scale."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checks
from .._provide import provided
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import anatomy
from ..models.devices import input_device
from ..models.modes import model_mode
from ..trace.runner import held
from .cost import Plan, Work, over, peak_allocated, plans

COMPONENTS = ("attention", "mlp", "rest", "total")


@dataclass
class Scaling:
    """rows: one per (implementation, batch size, length, component) with seconds (median) and,
    per (implementation, batch, length), peak_bytes. exponents: the fitted power of length per
    (implementation, component): time ~ length ** exponent."""

    model_name: str
    rows: list[dict]
    exponents: dict[tuple[str, str], float]
    notes: list[str] = field(default_factory=list)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            self.rows, columns=["implementation", "batch_size", "length", "component", "seconds", "peak_bytes"]
        )

    @provided
    def render(self, fmt: str) -> bytes:
        """The log-log plot as "png" or "svg" (drawn by llm_widgets.export, the layer above)."""
        ...

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        checks.folder_exists(path, "the plot")
        path.write_bytes(self.render(path.suffix.lower().lstrip(".")))
        return path

    def _repr_html_(self) -> str:  # an inline SVG: static, so it shows wherever the notebook is read
        return self.render("svg").decode("utf-8")

    def __repr__(self) -> str:
        fitted = ", ".join(
            f"{impl} {c} ~L^{k:.2f}" for (impl, c), k in sorted(self.exponents.items()) if c in ("attention", "mlp")
        )
        return f"Scaling({self.model_name!r}: {fitted})"


def fit_exponent(lengths: list[int], seconds: list[float]) -> float:
    """The slope of log(seconds) against log(length): seconds ~ length ** slope."""
    points = [(math.log(n), math.log(s)) for n, s in zip(lengths, seconds) if s > 0]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def scaling(
    model: LanguageModel,
    lengths: Any = (256, 512, 1024, 2048),
    *,
    batch_sizes: Any = (1,),
    implementations: Any = ("sdpa", "eager"),
    repeats: int = 3,
    memory: bool = True,
) -> Scaling:
    """Time one forward at each length (random token ids; median of `repeats`) with hooks on each
    block's attention and MLP; the rest is the model's total minus those. Peak memory from
    torch.profiler's allocator events (one pass per point). The model's attention implementation
    is switched for each and restored."""
    lengths, batch_sizes, implementations = _checked(model, lengths, batch_sizes, implementations, repeats)
    net = model.model
    parts = anatomy(net, model.facts.n_layers)
    device = input_device(net)
    rows: list[dict] = []
    notes: list[str] = []
    g = torch.Generator().manual_seed(0)
    with held(net):
        for impl in implementations:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(model_mode(net, attn_implementation=impl))
                except (ValueError, ImportError) as error:
                    notes.append(f"{impl}: not available for this model ({error})")
                    continue
                for batch in batch_sizes:
                    for n in lengths:
                        ids = torch.randint(0, model.facts.vocab_size, (batch, n), generator=g).to(device)
                        times, peak = _measure(net, parts, ids, repeats, memory, device)
                        for component, seconds in times.items():
                            rows.append(
                                {
                                    "implementation": impl,
                                    "batch_size": batch,
                                    "length": n,
                                    "component": component,
                                    "seconds": seconds,
                                    "peak_bytes": peak,
                                }
                            )
    return Scaling(model_name=model.name, rows=rows, exponents=_fitted(rows, min(batch_sizes)), notes=notes)


def _checked(model: Any, lengths: Any, batch_sizes: Any, implementations: Any, repeats: Any) -> tuple[list, list, list]:
    """lengths (sorted, unique), batch sizes and implementations, each a list, checked."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"scaling takes an lw.LanguageModel; got {type(model).__name__}")
    model.check_analysable("lw.scaling")
    lengths = sorted(set(checks.integers(lengths, "lengths", low=2)))
    context = model.facts.context_length
    if context and lengths[-1] > context:
        raise InputError(f"lengths must be between 2 and the model's context ({context}); got {lengths}")
    batch_sizes = checks.integers(batch_sizes, "batch_sizes", low=1)
    checks.integer(repeats, "repeats", low=1)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    implementations = [implementations] if isinstance(implementations, str) else list(implementations)
    known = set(ALL_ATTENTION_FUNCTIONS) | {"eager"}
    unknown = [i for i in implementations if i not in known]
    if unknown or not implementations:
        raise InputError(f"unknown attention implementation(s) {unknown}; installed: {sorted(known)}")
    return lengths, batch_sizes, implementations


def _fitted(rows: list[dict], batch_size: int) -> dict[tuple[str, str], float]:
    """The fitted power of length per (implementation, component), at one batch size."""
    exponents = {}
    for impl in {r["implementation"] for r in rows}:
        for component in COMPONENTS:
            pts = sorted(
                (r["length"], r["seconds"])
                for r in rows
                if r["implementation"] == impl and r["component"] == component and r["batch_size"] == batch_size
            )
            exponents[(impl, component)] = fit_exponent([p[0] for p in pts], [p[1] for p in pts])
    return exponents


def _measure(net, parts, ids, repeats: int, memory: bool, device) -> tuple[dict[str, float], int]:
    sync = device.type == "cuda"
    spent = {"attention": 0.0, "mlp": 0.0}
    starts: dict[int, float] = {}

    def clock():
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def pre(module, _args):
        starts[id(module)] = clock()

    def post_for(kind):
        def post(module, _args, _out):
            spent[kind] += clock() - starts.pop(id(module))

        return post

    handles = []
    for kind, modules in (("attention", parts.attentions), ("mlp", parts.mlps)):
        for module in modules:
            if module is not None:
                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post_for(kind))]
    samples: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    try:
        net(input_ids=ids, use_cache=False)  # warm-up
        for _ in range(repeats):
            spent.update(attention=0.0, mlp=0.0)
            start = clock()
            net(input_ids=ids, use_cache=False)
            total = clock() - start
            samples["attention"].append(spent["attention"])
            samples["mlp"].append(spent["mlp"])
            samples["rest"].append(total - spent["attention"] - spent["mlp"])
            samples["total"].append(total)
    finally:
        for handle in handles:
            handle.remove()
    peak = peak_allocated(lambda: net(input_ids=ids, use_cache=False), device)[1] if memory else 0
    return {c: statistics.median(v) for c, v in samples.items()}, peak


@plans(scaling)
def plan_scaling(
    model,
    lengths=(256, 512, 1024, 2048),
    *,
    batch_sizes=(1,),
    implementations=("sdpa", "eager"),
    repeats=3,
    memory=True,
) -> Plan:
    """lw.scaling's work: per implementation, batch size and length, a warm-up and `repeats` timed
    forwards with hooks on attention and MLP, and a forward under the memory counter."""
    lengths, batch_sizes, implementations = _checked(model, lengths, batch_sizes, implementations, repeats)
    work = [
        Work(f"{impl}, {batch} x {n}", 1 + repeats, batch, n, logits=n, implementation=impl)
        for impl in implementations
        for batch in batch_sizes
        for n in lengths
    ]
    if memory:
        work += [over(w, what=w.what + ", memory", count=1, modes=1.0) for w in work]
    return Plan(model, work)
