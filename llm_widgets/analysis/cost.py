"""What an expensive call will cost before it runs: `lw.estimate(lw.patch, model, clean, corrupted)`.

Every analysis here is made of forwards (and, for gradients, backwards) of known shapes: a patching
sweep is a few thousand forwards of one prompt, batched within a memory budget; integrated gradients
are n_steps forwards and backwards; a sample tree decodes n rows a token at a time. Each expensive
call registers a planner (`@plans(patch)`) that lists that work without running it, reusing the
call's own chunking, so the plan is the call's plan. The time and memory of one forward of a
given shape come from a `Pace`: a short calibration of this model on this machine (forwards at three
lengths, a decoding step, the attention kernel alone, one backward, and the peak tensor bytes of a
forward with and without gradients: about 3.5 s for SmolLM2 on the 2-core CPU), kept per model. A
forward costs a fixed part + tokens x (per token) + query-key pairs x (per pair), which covers the
linear layers and attention at any length; its memory, a part per token (and per pair where the
attention is eager), or its logits if they are larger. The constants below that no calibration
measures were measured against the calls on the 2-core CPU (benchmarks/bench_estimate.py).
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.compat import cache_kwargs, output_cache, takes_logits_to_keep
from ..models.devices import input_device
from ..models.modes import model_mode
from ..trace import Trace
from ..trace.runner import held

_PLANNERS: dict[Any, Callable[..., Plan]] = {}
# Recomputing one head's probabilities from kept queries and keys, against the model's own fused
# attention per (query, key) pair and head: a float32 matmul, a softmax and their copies in Python.
ATTENTION_REDO = 3.0
# A decoding step's cache grows by torch.cat, which reads and writes all of it: seconds per byte of
# cache (measured on the 2-core CPU: SmolLM2, 32 rows decoding against 48 tokens)
COPY_S_PER_BYTE = 0.4e-9


@dataclass(frozen=True)
class Work:
    """`count` forwards of `rows` x `tokens` new tokens through `share` of the model's blocks, each
    token attending `past` cached keys besides the new ones; `grad`: with a backward to the inputs
    (`checkpointed`: each block's activations recomputed in the backward, only its input kept)."""

    what: str
    count: int
    rows: int
    tokens: int
    past: int = 0
    share: float = 1.0
    below: float = 0.0  # share of the blocks run with one row before the rows fan out (patching)
    grad: bool = False
    checkpointed: bool = False
    eager: bool = False  # attention as one score matrix per layer (attention weights asked for)
    logits: int = 1  # positions per row whose logits are computed
    copied: int | None = None  # tokens of each row's cache a step copies (default: all, past + tokens)
    logit_copies: float = 1.0  # vocabulary-sized float32 tensors per such position alive at once (a softmax: 2)
    model: LanguageModel | None = None  # another model than the plan's (lw.diverge's second)
    extra_s: float = 0.0  # Python work per forward that no forward measures (hooks that copy, scoring)
    modes: float = 0.0  # Python dispatch modes watching every op (FLOP counting, memory counting, the profiler)
    implementation: str | None = None  # the attention implementation it runs with (default: the model's)
    kind: str = "forward"  # "unembed": `rows` positions' logits alone (the lens); "attention": every head's
    # probabilities recomputed from kept queries and keys, `tokens` queries over `past` + `tokens` keys


@dataclass
class Plan:
    """What a call will do: its forwards, what it keeps (bytes held to its end), notes for the user."""

    model: LanguageModel
    work: list[Work]
    kept_bytes: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Pace:
    """One model's measured costs on this machine (see the module's docstring)."""

    overhead_s: float
    token_s: float  # per token through every block
    pair_s: float  # per (query, key) pair through every block
    logit_s: float  # per position whose logits are computed
    grad_factor: float  # a forward with a backward to the inputs, over the forward alone
    attention_grad_factor: float  # the same for attention alone (a fused kernel's backward)
    base_bytes: float  # transient whatever the length (a forward's fixed buffers)
    token_bytes: float  # transient per token, no gradients
    pair_bytes: float
    saved_token_bytes: float  # held for the backward, per token, every block
    saved_pair_bytes: float
    logit_bytes: float  # per position whose logits are computed (float32)
    eager_pair_bytes: float  # one layer's score and probability matrices, per (query, key) pair
    kv_token_bytes: float  # the KV cache's bytes per token (a decoding step copies it: its cat)
    step_s: float  # a decoding step's own work beyond its forward (the cache's update, the masks)
    ops: int  # aten ops in one forward
    op_s: float  # a Python dispatch mode's time per op
    n_layers: int
    input_bytes: float  # one block's input per token (what a checkpointed backward keeps)
    calibration_s: float

    def seconds(self, w: Work) -> float:
        pairs = w.tokens * (w.past + (w.tokens + 1) / 2)
        if w.kind == "attention":  # (whole rows, none skipped as causal attention skips)
            return w.count * (w.rows * self.pair_s * w.tokens * (w.past + w.tokens) * ATTENTION_REDO + w.extra_s)
        rows = w.rows * w.share + w.below
        linear = (self.overhead_s if w.kind == "forward" else 0.0) + rows * self.token_s * w.tokens
        linear += w.rows * w.logits * self.logit_s + w.modes * self.ops * self.op_s
        attention = rows * self.pair_s * pairs
        if w.past:  # a step against the cache, which grows by a copy
            copied = w.past + w.tokens if w.copied is None else w.copied
            linear += self.step_s + w.rows * copied * self.kv_token_bytes * COPY_S_PER_BYTE
        if w.grad:  # (a checkpointed backward runs each block's forward again)
            again = 1.0 if w.checkpointed else 0.0
            linear *= self.grad_factor + again
            attention *= self.attention_grad_factor + again
        one = linear + attention
        return w.count * (one + w.extra_s)

    def bytes(self, w: Work) -> float:
        """The peak one forward of `w` allocates above what was held before it: the blocks' transient
        work or, after them, the logits (and what is computed from them), whichever is larger, over
        what a backward keeps."""
        keys = w.past + w.tokens
        logits = w.rows * w.logits * self.logit_bytes * w.logit_copies
        if w.kind == "attention":  # one head's scores, probabilities and a copy at a time
            return 3.0 * 4 * w.rows * w.tokens * keys
        pairs = self.pair_bytes + (self.eager_pair_bytes if w.eager and not self.pair_bytes else 0.0)
        transient = self.base_bytes + w.rows * (self.token_bytes * w.tokens + pairs * w.tokens * keys)
        if not w.grad:
            return max(transient, logits)
        saved_pairs = self.saved_pair_bytes + (
            self.eager_pair_bytes * self.n_layers if w.eager and not self.saved_pair_bytes else 0.0
        )
        saved = w.rows * w.share * (self.saved_token_bytes * w.tokens + saved_pairs * w.tokens * keys)
        if w.checkpointed:  # every block's input, and one block's activations at a time
            saved = w.rows * self.n_layers * w.share * self.input_bytes * w.tokens + saved / max(1, self.n_layers)
        return saved + max(transient, logits)


@dataclass
class Estimate:
    """What a call will cost: `.seconds` of wall time and `.peak_bytes` allocated above what is held
    when it starts (the weights are not counted), from its `plan` and each model's `Pace`."""

    call: str
    seconds: float
    peak_bytes: int
    plan: Plan = field(repr=False)
    parts: list[tuple[str, float, int]] = field(default_factory=list)  # (what, seconds, peak bytes)

    @property
    def notes(self) -> list[str]:
        return self.plan.notes

    def to_dataframe(self):
        """One row per kind of work: what, forwards, rows, tokens, seconds, peak_bytes."""
        import pandas as pd

        rows = [
            {"what": w.what, "forwards": w.count, "rows": w.rows, "tokens": w.tokens, "seconds": s, "peak_bytes": b}
            for w, (_, s, b) in zip(self.plan.work, self.parts)
        ]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"Estimate({self.call}: about {describe_seconds(self.seconds)}, peak {describe_bytes(self.peak_bytes)})"


def describe_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def describe_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def plans(*calls: Any) -> Callable[[Callable[..., Plan]], Callable[..., Plan]]:
    """Register `planner` for `calls` (the functions or the declared methods users call). The planner
    takes the call's arguments and returns the `Plan`: the work the call would do."""

    def register(planner: Callable[..., Plan]) -> Callable[..., Plan]:
        for call in calls:
            _PLANNERS[call] = planner
        return planner

    return register


def estimate(call: Any, *args: Any, **kwargs: Any) -> Estimate:
    """What `call(*args, **kwargs)` would cost, without running it: an `Estimate` with `.seconds`
    and `.peak_bytes`. `call` is one of the expensive calls: `lw.patch`, `lw.ablation_sweep`,
    `trace.attribute` (a trace's bound method), `trace.logit_lens`, `trace.explain_attention`,
    `lw.profile`, `lw.scaling`, `lw.diverge`, `lw.sample_tree`, `lw.search_steering`, `lw.debug`.
    The first estimate for a model calibrates it on this machine (about a second on a small model)."""
    target = getattr(call, "__func__", call)
    planner = _PLANNERS.get(target)
    if planner is None:
        names = sorted({getattr(c, "__qualname__", str(c)) for c in _PLANNERS})
        raise InputError(
            f"no estimate for {getattr(call, '__qualname__', call)!r}; estimates exist for {', '.join(names)}"
        )
    if hasattr(call, "__self__"):  # a bound method: its object is the first argument
        args = (call.__self__, *args)
    plan = planner(*args, **kwargs)
    qualified = getattr(target, "__qualname__", str(target))
    owner, _, name = qualified.rpartition(".")
    return priced(f"{owner.lower()}.{name}" if owner else f"lw.{name}", plan)


def deferred(call: Any, scope: dict[str, Any]) -> Callable[[], Estimate]:
    """estimate(call, ...) for later, with the call's own arguments read from its `scope` (its
    locals()): a call refusing its budget names its estimate."""
    names = inspect.signature(call).parameters
    return lambda: estimate(call, **{name: scope[name] for name in names})


def priced(call: str, plan: Plan) -> Estimate:
    """The plan's seconds and peak: forwards run one after another, so the peak is what the call keeps
    plus the largest single forward."""
    parts = []
    for w in plan.work:
        pace = pace_of(w.model or plan.model, w.implementation)
        parts.append((w.what, pace.seconds(w), int(pace.bytes(w)) if w.count else 0))
    seconds = sum(s for _, s, _ in parts)
    peak = plan.kept_bytes + max((b for _, _, b in parts), default=0)
    return Estimate(call=call, seconds=seconds, peak_bytes=int(peak), plan=plan, parts=parts)


def free_bytes(device: torch.device) -> int:
    """Memory a call may still take on `device`: the GPU's free memory, or the system's available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def default_budget(model: torch.nn.Module) -> int:
    """Half of what the model's device has free: the share a call takes unless told otherwise."""
    return free_bytes(input_device(model)) // 2


def checked_budget(budget_bytes: Any, model: torch.nn.Module) -> int:
    """`budget_bytes` as given (a positive integer), or the default share of free memory for None."""
    if budget_bytes is None:
        return default_budget(model)
    return checks.integer(budget_bytes, "budget_bytes", low=1)


def over_budget(call: str, cost: Estimate, budget: int, lower: str) -> InputError:
    """The error for a call whose estimate needs more than its budget: the estimate, and how to lower it."""
    return InputError(
        f"{call} would need about {describe_bytes(cost.peak_bytes)} at its peak (estimated; it would take about "
        f"{describe_seconds(cost.seconds)}), over its budget_bytes of {describe_bytes(budget)}. {lower}, or raise "
        f"budget_bytes"
    )


# --- measuring memory ---


class LiveBytes(TorchDispatchMode):
    """The bytes of CPU tensors made under it that are still alive, and their peak (torch keeps no
    allocator statistics on the CPU, and its profiler takes seconds on a forward). Each op's new
    storages are counted until the last tensor on them is freed; a view of a tensor made before
    (a weight transposed) is not new. Tensors autograd keeps for the backward stay counted while the
    graph holds them (saved_tensors_hooks), also when no Python object refers to them."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.ops = 0
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        given = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                key = _storage_key(t)
                if key in self._refs or (key not in given and key):
                    self._hold(key, t.untyped_storage().nbytes(), t)
        return out

    def _hold(self, key: int, size: int, owner: Any) -> None:
        if key not in self._refs:
            self._refs[key], self._sizes[key] = 0, size
            self.live += size
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(owner, self._release, key)

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._sizes.pop(key)

    def pack(self, t: torch.Tensor) -> Any:
        """saved_tensors_hooks: the saved tensor, in a holder that keeps its storage counted."""
        holder = _Saved(t)
        key = _storage_key(t)
        if key in self._refs:
            self._hold(key, 0, holder)
        return holder


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # (a tensor without storage: nothing allocated)
        return 0


def peak_allocated(run: Callable[[], Any], device: torch.device) -> tuple[Any, int, LiveBytes | None]:
    """run()'s result and the most bytes it had allocated at once above its start: the CUDA
    allocator's peak statistic, or on the CPU the tensors' own bytes (and the `LiveBytes` counter)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = run()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base, None
    counter = LiveBytes()
    with counter, torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda held: held.tensor):
        result = run()
    return result, counter.peak, counter


# --- calibration ---

_PACES: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, Pace]] = weakref.WeakKeyDictionary()


def pace_of(lm: LanguageModel, implementation: str | None = None) -> Pace:
    """The model's `Pace` on its device (with another attention `implementation` if given), measured
    once (again when its dtype, device, attention implementation or torch's threads change)."""
    model = lm.model
    first = next(model.parameters(), None)
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    key = (
        None if first is None else (first.device, first.dtype),
        implementation or current,
        torch.get_num_threads(),
    )
    kept = _PACES.setdefault(model, {})
    if key not in kept:
        if implementation in (None, current):
            kept[key] = calibrate(lm)
        else:
            with held(model), model_mode(model, attn_implementation=implementation):
                kept[key] = calibrate(lm)
    return kept[key]


CALIBRATION_LENGTHS = (16, 128, 512)  # timed: the fixed part, per token (and per pair, where it shows)
MEMORY_LENGTHS = (64, 256)  # memory is a line in the length: two short runs tell it


def calibrate(lm: LanguageModel) -> Pace:
    """Time forwards at three lengths and one with a backward; count the peak bytes of a forward at
    two lengths, with and without gradients. The forwards compute the last position's logits only
    (where the model can), as the analyses do; the unembedding's cost per position, and attention's
    per query-key pair where short runs hide it, are the per-token cost scaled by their multiplies."""
    start = time.perf_counter()
    model, facts = lm.model, lm.facts
    context = facts.context_length or 1024
    lengths = [max(2, min(n, context)) for n in CALIBRATION_LENGTHS]
    short = [max(2, min(n, context)) for n in MEMORY_LENGTHS]
    with held(model):
        _timed(lm, lengths[0])  # (the first forward sets up kernels and caches)
        times = [min(_timed(lm, n) for _ in range(2 if n < lengths[-1] else 1)) for n in lengths]
        step = min(_decoding_step(lm, lengths[1]) for _ in range(2))
        mem, ops, mode_s = zip(*(_peak(lm, n, grad=False) for n in short))
    with held(model, grad=True):
        grad_time = _timed(lm, lengths[1], grad=True)
        saved = [_peak(lm, n, grad=True)[0] for n in (short[0], short[0] * 2)]
    eager = getattr(getattr(model, "config", None), "_attn_implementation", None) == "eager"
    attention = (1.0, 3.0) if lm.plain else _attention_pace(lm)
    overhead, token_s, pair_s = _fit_times(lengths, times, _pair_ratio(lm) * attention[0], free=eager)
    logit_s = token_s * _head_ratio(lm)
    base_bytes, token_bytes = _fit_line(short, list(mem))
    plain_s = overhead + token_s * short[0] + pair_s * short[0] * (short[0] + 1) / 2
    saved_token = _fit_line([short[0], short[0] * 2], saved)[1]
    pair_bytes, saved_pair = _pair_bytes(lm)
    return Pace(
        overhead_s=overhead,
        token_s=token_s,
        pair_s=pair_s,
        logit_s=logit_s,
        grad_factor=max(1.0, grad_time / max(times[1], 1e-9)),
        attention_grad_factor=attention[1],
        base_bytes=base_bytes,
        token_bytes=token_bytes,
        pair_bytes=pair_bytes,
        saved_token_bytes=max(saved_token - token_bytes, 0.0),
        saved_pair_bytes=saved_pair,
        logit_bytes=facts.vocab_size * 4.0,
        eager_pair_bytes=2.0 * facts.n_heads * first_itemsize(model),
        kv_token_bytes=kv_bytes(lm),
        step_s=max(0.0, step - overhead - token_s - logit_s - lengths[1] * kv_bytes(lm) * COPY_S_PER_BYTE),
        ops=ops[0],
        op_s=max(mode_s[0] - plain_s, 0.0) / max(ops[0], 1),
        n_layers=max(1, facts.n_layers),
        input_bytes=facts.hidden_size * first_itemsize(model),
        calibration_s=time.perf_counter() - start,
    )


def first_itemsize(model: torch.nn.Module) -> int:
    first = next(model.parameters(), None)
    return 4 if first is None else first.element_size()


def _head_ratio(lm: LanguageModel) -> float:
    """The unembedding's multiplies per position over the blocks' per token (their weights' sizes)."""
    facts = lm.facts
    head = facts.hidden_size * facts.vocab_size
    body = max(facts.n_parameters - head, head // 8)  # (the input embedding, counted here, does no multiply)
    return head / body


ATTENTION_PROBE = 2048  # query and key positions of the attention kernel timed in calibration (its speed per
# multiply still grows with the length: 1.8e-11 s at 1,024, 1.4e-11 at 2,048, 1.3e-11 at 4,096 on 2 cores)


def _attention_pace(lm: LanguageModel) -> tuple[float, float]:
    """How much slower than the blocks' matrix multiplies, per multiply, the attention kernel runs
    (SDPA, causal, the model's heads at 2,048 positions), and its forward with a backward over its
    forward: long prompts spend their time there, and short calibration runs hide it."""
    facts = lm.facts
    first = next(lm.model.parameters())
    heads, size, n = facts.n_heads, facts.head_dim, ATTENTION_PROBE
    g = torch.Generator(device=first.device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, size, generator=g, device=first.device, dtype=first.dtype) for _ in range(3))
    x = torch.randn(n, facts.hidden_size, generator=g, device=first.device, dtype=first.dtype)
    w = torch.randn(facts.hidden_size, facts.hidden_size, generator=g, device=first.device, dtype=first.dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        matmul = min(_clocked(lambda: x @ w, first.device) for _ in range(3)) / (n * facts.hidden_size**2)
        forward = min(_clocked(lambda: sdpa(q, k, v, is_causal=True), first.device) for _ in range(2))
    q.requires_grad_(True)
    with torch.enable_grad():
        both = _clocked(lambda: sdpa(q, k, v, is_causal=True).sum().backward(), first.device)
    per_multiply = forward / (heads * size * n * (n + 1))  # (QK and PV, each n(n+1)/2 rows x keys)
    return max(1.0, per_multiply / matmul), max(2.0, both / forward)


def _clocked(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds of run(), the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _pair_ratio(lm: LanguageModel) -> float:
    """Attention's multiplies per (query, key) pair over the blocks' per token (their weights)."""
    facts = lm.facts
    body = max(facts.n_parameters - facts.hidden_size * facts.vocab_size, 1)
    return 2.0 * facts.n_layers * facts.n_heads * facts.head_dim / body


def _fit_times(lengths: list[int], times: list[float], ratio: float, free: bool) -> tuple[float, float, float]:
    """overhead + b T + c T(T+1)/2 through the three points, with c = `ratio` x b: runs short enough
    for a calibration hide attention's growth on a fused kernel (a free fit of c swings fivefold
    between runs). `free`: c fitted too (eager attention, whose score matrices show early)."""
    a = torch.tensor([[1.0, n, n * (n + 1) / 2] for n in lengths], dtype=torch.float64)
    y = torch.tensor(times, dtype=torch.float64)
    if free:
        overhead, b, c = torch.linalg.lstsq(a, y).solution.tolist()
        if b > 0 and c >= ratio * b:
            return max(overhead, 0.0), b, c
    x = a[:, 1:2] + ratio * a[:, 2:3]
    overhead, b = torch.linalg.lstsq(torch.cat([a[:, :1], x], 1), y).solution.tolist()
    b = max(b, 0.0)
    return max(overhead, 0.0), b, ratio * b


def _fit_line(lengths: list[int], peaks: list[int]) -> tuple[float, float]:
    """(bytes whatever the length, bytes per token) through two measured peaks, both kept >= 0."""
    (n1, n2), (m1, m2) = lengths, peaks
    per_token = max((m2 - m1) / max(n2 - n1, 1), 0.0)
    return max(m1 - per_token * n1, 0.0), per_token


def _pair_bytes(lm: LanguageModel) -> tuple[float, float]:
    """Bytes per (query, key) pair, at once and kept for a backward: only eager attention makes the
    whole score matrix (scores and probabilities of a layer at once, every layer's kept); SDPA works
    in blocks."""
    facts = lm.facts
    if getattr(getattr(lm.model, "config", None), "_attn_implementation", None) != "eager":
        return 0.0, 0.0
    per_pair = facts.n_heads * first_itemsize(lm.model)
    return 2.0 * per_pair, 2.0 * per_pair * facts.n_layers


def _ids(lm: LanguageModel, n: int, rows: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    vocab = max(2, min(lm.facts.vocab_size, len(lm.tokenizer)))
    return torch.randint(1, vocab, (rows, n), generator=g).to(input_device(lm.model))


def _call(lm: LanguageModel, ids: torch.Tensor, grad: bool) -> None:
    """One forward as the analyses make it (the last position's logits where the model can give them
    alone), with a backward to the input embeddings for `grad`."""
    model = lm.model
    if lm.plain:
        with torch.set_grad_enabled(False):  # (a plain model's input embedding is found by hooks: time the forward)
            model(ids)
        return
    kwargs: dict[str, Any] = {"use_cache": False}
    if lm.kind == "seq2seq":
        kwargs["decoder_input_ids"] = ids[:, :1]
    else:
        kwargs.update(_last(model))
    if not grad:
        model(input_ids=ids, **kwargs)
        return
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, **kwargs).logits
    torch.autograd.grad(logits[:, -1].float().logsumexp(-1).sum(), embeds)


def _decoding_step(lm: LanguageModel, n: int) -> float:
    """Seconds of one step of one token against the cache of `n` (0 for a model without a cache)."""
    if lm.plain or lm.kind != "causal":
        return 0.0
    model = lm.model
    ids = _ids(lm, n)
    cache = output_cache(model(input_ids=ids, use_cache=True, **_last(model)))
    return _clocked(
        lambda: model(input_ids=ids[:, -1:], use_cache=True, **cache_kwargs(model, cache), **_last(model)), ids.device
    )


def _last(model: torch.nn.Module) -> dict[str, Any]:
    return {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}


def _timed(lm: LanguageModel, n: int, grad: bool = False) -> float:
    ids = _ids(lm, n)
    return _clocked(lambda: _call(lm, ids, grad), ids.device)


def _peak(lm: LanguageModel, n: int, grad: bool) -> tuple[int, int, float]:
    """A forward's peak bytes, its aten ops and its time under the counting mode."""
    ids = _ids(lm, n)
    start = time.perf_counter()
    _, peak, counter = peak_allocated(lambda: _call(lm, ids, grad), ids.device)
    return peak, counter.ops if counter else 0, time.perf_counter() - start


# --- what planners share ---


def model_of(value: Any, name: str = "model") -> LanguageModel:
    """The LanguageModel a call runs on: given, or a trace's."""
    if isinstance(value, Trace):
        return value.model
    if isinstance(value, LanguageModel):
        return value
    raise WrongTypeError(f"{name} must be an lw.LanguageModel or an lw.Trace; got {type(value).__name__}")


def kv_bytes(lm: LanguageModel) -> int:
    """A KV cache's bytes per token (keys and values of every layer)."""
    facts = lm.facts
    return 2 * facts.n_layers * facts.n_kv_heads * facts.head_dim * first_itemsize(lm.model)


def over(work: Work, **changes: Any) -> Work:
    return replace(work, **changes)
