"""Where time and memory go, module by module, in the model's own terms.

`profile(model, prompt, max_new_tokens)` runs the model as `model.trace` would
(prompt pass, then generation with the KV cache) and measures:

- per-module wall time, total and self, split into prefill and decode: forward
  hooks with a clock (the profiler's module hierarchy exists only for
  TorchScript, so eager modules need hooks), over `repeats` runs after a warm-up;
- FLOPs per module: torch's FlopCounterMode, in a pass of its own;
- memory: torch.profiler's allocator events (profile_memory), a timeline of the
  bytes allocated over the run with the steps marked, the peak inside each
  module, and the KV cache's bytes per step; RSS on the CPU;
- the Chrome trace of that pass, which Perfetto and HTA open.
"""

from __future__ import annotations

import bisect
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import anatomy
from ..models.compat import output_cache
from ..models.devices import input_device
from ..models.structure import modules_of
from ..trace import Trace, prompt_ids
from ..trace.edits import validate_edits
from ..trace.runner import held
from .cost import Plan, Work, kv_bytes, over, plans

ROOT = "<model>"  # the root module's range name (its children may be called "model")
COLUMNS = ["module", "depth", "kind", "calls", "total_s", "self_s", "prefill_s", "decode_s", "flops", "peak_bytes"]


@dataclass
class Profile:
    """One profiled run. `modules` has a row per module (see COLUMNS); `timeline` is
    (seconds, bytes allocated above the start) over the memory pass; `steps` the wall
    time and KV cache bytes after each forward (step 0 is the prompt's)."""

    model_name: str
    device: str
    prompt_tokens: int
    new_tokens: int
    total_s: float
    prefill_s: float
    decode_s: float
    kv_cache_bytes: int
    peak_bytes: int  # the allocator's peak above the start of the run
    parameter_bytes: int
    rss_peak_bytes: int | None
    modules: list[dict]
    steps: list[dict]
    timeline: list[tuple[float, int]]
    step_times: list[float]  # when each forward started, on the timeline's clock
    repeats: int
    chrome_trace: str = field(default="", repr=False)  # JSON of the memory pass, for Perfetto / HTA

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of decode (prompt tokens per second of prefill without generation)."""
        if self.new_tokens > 1 and self.decode_s > 0:
            return (self.new_tokens - 1) / self.decode_s
        return self.prompt_tokens / self.prefill_s if self.prefill_s else float("nan")

    def to_dataframe(self):
        """One row per module: module (dotted name), depth, kind, calls, total_s, self_s, prefill_s,
        decode_s, flops, peak_bytes."""
        import pandas as pd

        return pd.DataFrame(self.modules, columns=COLUMNS)

    def share(self, kind: str, phase: str = "prefill") -> float:
        """The fraction of a phase's time spent in modules of a kind ("attention", "mlp", "head", ...)."""
        total = self.prefill_s if phase == "prefill" else self.decode_s
        key = f"{phase}_s"
        spent = sum(m[key] for m in self.modules if m["kind"] == kind and not _inside_same_kind(m, self.modules))
        return spent / total if total else float("nan")

    def findings(self) -> list[str]:
        """The main facts in words."""
        out = []
        for phase, seconds in (("prefill", self.prefill_s), ("decode", self.decode_s)):
            if seconds <= 0:
                continue
            parts = [(kind, self.share(kind, phase)) for kind in ("attention", "mlp", "head", "embedding", "norm")]
            parts = [(k, s) for k, s in parts if s == s and s > 0.01]
            parts.sort(key=lambda p: -p[1])
            words = ", ".join(f"{kind} {share:.0%}" for kind, share in parts[:3])
            tokens = self.prompt_tokens if phase == "prefill" else max(self.new_tokens - 1, 0)
            out.append(f"{phase} of {tokens} tokens took {seconds * 1e3:.0f} ms: {words} of it")
        if self.new_tokens > 1:
            out.append(f"decode runs at {self.tokens_per_s:.1f} tokens/s")
        if self.peak_bytes > 0:
            out.append(
                f"the KV cache ({_bytes(self.kv_cache_bytes)}) is {self.kv_cache_bytes / self.peak_bytes:.0%} of "
                f"the peak memory allocated during the run ({_bytes(self.peak_bytes)}; the weights, "
                f"{_bytes(self.parameter_bytes)}, come on top)"
            )
        flops = next((m["flops"] for m in self.modules if m["depth"] == 0), 0)
        if flops and self.total_s:
            out.append(f"{flops / 1e9:.2f} GFLOP in all, {flops / self.total_s / 1e9:.1f} GFLOP/s")
        slowest = max((m for m in self.modules if m["depth"] > 0), key=lambda m: m["self_s"], default=None)
        if slowest is not None and self.total_s:
            out.append(
                f"the most time in one module itself: {slowest['module']} ({slowest['self_s'] / self.total_s:.0%})"
            )
        return out

    def save_chrome_trace(self, path: str | Path) -> Path:
        """The memory pass as a Chrome trace (JSON): open it in Perfetto (ui.perfetto.dev) or HTA."""
        path = Path(path)
        checks.folder_exists(path, "the Chrome trace")
        path.write_text(self.chrome_trace)
        return path

    def __repr__(self) -> str:
        return (
            f"Profile({self.model_name!r}: {self.prompt_tokens} prompt + {self.new_tokens} new tokens, total "
            f"{self.total_s * 1e3:.1f} ms (prefill {self.prefill_s * 1e3:.1f}, decode {self.decode_s * 1e3:.1f}), "
            f"KV cache {_bytes(self.kv_cache_bytes)}, peak {_bytes(self.peak_bytes)})"
        )


def _inside_same_kind(row: dict, rows: list[dict]) -> bool:
    """True when an ancestor of this module has the same kind (count each subtree once)."""
    name = row["module"]
    return any(r["kind"] == row["kind"] and name.startswith(r["module"] + ".") for r in rows if r is not row)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def cache_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors a cache holds (DynamicCache, encoder-decoder and static
    caches, tuples), each storage counted once (a broadcast view or a shared prefix is held once)."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()

    caches = [getattr(cache, "self_attention_cache", None), getattr(cache, "cross_attention_cache", None)]
    for part in [c for c in caches if c is not None] or [cache]:
        layers = getattr(part, "layers", None)
        if layers is not None:
            for layer in layers:
                for name in ("keys", "values", "prefix_keys", "prefix_values"):
                    add(getattr(layer, name, None))
        elif hasattr(part, "key_cache"):
            for t in list(part.key_cache) + list(part.value_cache):
                add(t)
        elif isinstance(part, (tuple, list)):
            for layer in part:
                for t in layer if isinstance(layer, (tuple, list)) else (layer,):
                    add(t)
    return total


# --- the clock in the modules ---


class _Clock:
    """Forward hooks on every module: total and self time per (module, phase), and calls.
    Phase: the model's first forward of a run is the prefill, later ones decode steps."""

    def __init__(self, model: torch.nn.Module, sync: bool):
        self.model, self.sync = model, sync
        self.names = {m: n or "" for n, m in model.named_modules()}
        self.stack: list[list] = []
        self.total: dict[tuple[str, str], float] = {}
        self.self_: dict[tuple[str, str], float] = {}
        self.calls: dict[str, int] = {}
        self.root_calls: list[tuple[float, float]] = []  # (start, seconds) of each forward of the model
        self.phase = "prefill"
        self.handles: list[Any] = []
        self.wall = 0.0  # the whole run's seconds, measured around it

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def pre(self, module, _args) -> None:
        self.stack.append([self.names[module], self._now(), 0.0])

    def post(self, module, _args, _output) -> None:
        name, start, children = self.stack.pop()
        elapsed = self._now() - start
        key = (name, self.phase)
        self.total[key] = self.total.get(key, 0.0) + elapsed
        self.self_[key] = self.self_.get(key, 0.0) + elapsed - children
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += elapsed
        elif module is self.model:
            self.root_calls.append((start, elapsed))
            self.phase = "decode"

    def __enter__(self) -> _Clock:
        for module in self.names:
            self.handles.append(module.register_forward_pre_hook(self.pre))
            self.handles.append(module.register_forward_hook(self.post))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _label(name: str) -> str:
    """A module's name as a range label: torch writes labels into its Chrome trace unescaped (and
    turns backslashes into slashes), so anything but name characters is percent-encoded, a lone
    surrogate included; an ordinary dotted name stays as it is."""
    return quote(name, safe="._-:[]<>()", errors="surrogatepass")


def _unlabel(label: str) -> str:
    return unquote(label, errors="surrogatepass")


@contextmanager
def _ranges(model: Any) -> Iterator[dict]:
    """Each module's forward as a named range in torch.profiler's trace (module::name)."""
    names = {m: _label(n or ROOT) for n, m in model.named_modules()}
    open_ranges: list[Any] = []
    handles = []

    def pre(module, _args):
        rf = torch.autograd.profiler.record_function(f"module::{names[module]}")
        rf.__enter__()
        open_ranges.append(rf)

    def post(module, _args, _out):
        open_ranges.pop().__exit__(None, None, None)

    for module in names:
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


# --- the entry point ---


def profile(
    model: LanguageModel,
    prompt: Any,
    *,
    max_new_tokens: int = 0,
    edits: Any = (),
    repeats: int = 3,
    flops: bool = True,
    memory: bool = True,
) -> Profile:
    """Profile one run of `prompt` (prefill, then `max_new_tokens` of greedy generation with the KV
    cache), with `edits` applied as in model.trace. Times come from the median of `repeats` runs
    (by wall time) after a warm-up; FLOPs (FlopCounterMode) and memory (torch.profiler) come from
    passes of their own."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"profile takes an lw.LanguageModel (from lw.load_model); got {type(model).__name__}")
    lm = model
    lm.check_analysable("lw.profile")
    checks.integer(repeats, "repeats", low=1)
    checks.integer(max_new_tokens, "max_new_tokens", low=0)
    if max_new_tokens and lm.facts.kind != "causal":
        raise InputError(f"{lm.name} is a masked model: it does not generate, use max_new_tokens=0")
    ids = prompt_ids(lm, prompt)
    edits = validate_edits(
        edits, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, sequence_length=len(ids) + max_new_tokens
    )
    net = lm.model
    device = input_device(net)
    run = _one_run(lm, ids, max_new_tokens, edits)
    with held(net):
        run()  # warm-up: first-call allocations and lazy initialisation are not what a user runs into
        clocks, out = [], None
        for _ in range(repeats):
            clock, out = _clocked(net, run, device.type == "cuda")  # (one output kept at a time)
            clocks.append(clock)
        kv = cache_bytes(output_cache(out)) if not edits else 0
        counts = _flops(net, run) if flops else {}
        timeline, step_starts, peaks, chrome, peak = _memory(net, run, device) if memory else ([], [], {}, "", 0)
    middle = sorted(clocks, key=lambda c: c.wall)[len(clocks) // 2]
    return Profile(
        model_name=lm.name,
        device=str(device),
        prompt_tokens=len(ids),
        new_tokens=max_new_tokens,
        total_s=middle.wall,
        prefill_s=middle.root_calls[0][1] if middle.root_calls else 0.0,
        decode_s=sum(s for _, s in middle.root_calls[1:]),
        kv_cache_bytes=kv,
        peak_bytes=peak,
        parameter_bytes=sum(p.numel() * p.element_size() for p in net.parameters()),
        rss_peak_bytes=_rss(),
        modules=_rows(lm, middle, counts, peaks),
        steps=_steps(middle, kv, len(ids), max_new_tokens),
        timeline=timeline,
        step_times=step_starts,
        repeats=repeats,
        chrome_trace=chrome,
    )


def _steps(clock: _Clock, kv: int, n_prompt: int, max_new_tokens: int) -> list[dict]:
    """Each forward of the run (the prefill, then a decode step per token): its seconds and the KV
    cache it held (the final cache's bytes per token, times the tokens in it then)."""
    cached = n_prompt + max(max_new_tokens - 1, 0)  # generate never runs its last token
    per_token = kv / cached if cached else 0
    return [
        {"step": i, "seconds": s, "kv_cache_bytes": int(per_token * (n_prompt + i))}
        for i, (_, s) in enumerate(clock.root_calls)
    ]


def _one_run(lm: LanguageModel, ids: torch.Tensor, max_new_tokens: int, edits: tuple) -> Callable[[], Any]:
    """The run profiled: the prompt's forward, or greedy generation with the KV cache (through the
    engine when there are edits: it applies them, its own instruments off)."""
    net = lm.model
    input_ids = ids[None].to(input_device(net))

    def run():
        if edits:
            return lm.trace(ids, max_new_tokens=max_new_tokens, edits=edits, capture=False)
        if max_new_tokens == 0:  # (held: no gradients)
            return net(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
        return net.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=lm.pad_token_id,
            return_dict_in_generate=True,
        )

    return run


def _clocked(net: Any, run: Callable[[], Any], sync: bool) -> tuple[_Clock, Any]:
    """One run under the module clock (its wall time kept on the clock), and what it returned."""
    with _Clock(net, sync) as clock:
        start = time.perf_counter()
        out = run()
        if sync:
            torch.cuda.synchronize()
        clock.wall = time.perf_counter() - start
    return clock, out


def _kinds(lm: LanguageModel) -> dict[str, str]:
    """Module name -> kind, from the model's anatomy: attention, mlp, norm, embedding, head, block."""
    net = lm.model
    parts = anatomy(net, lm.facts.n_layers)
    names = {m: n for n, m in net.named_modules()}
    kinds: dict[str, str] = {}
    for block in parts.blocks:
        kinds[names[block]] = "block"
    for module in parts.attentions:
        if module is not None:
            kinds[names[module]] = "attention"
    for module in parts.mlps:
        if module is not None:
            kinds[names[module]] = "mlp"
    if parts.unembedding is not None:
        kinds[names[parts.unembedding]] = "head"
    embed = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    if embed is not None:
        kinds[names[embed]] = "embedding"
    for name, module in net.named_modules():
        if name not in kinds and "norm" in type(module).__name__.lower():
            kinds[name] = "norm"
        elif name not in kinds and "embedding" in type(module).__name__.lower():
            kinds[name] = "embedding"
    # children inherit the kind of their attention / mlp parent
    for name in [n for n, _ in net.named_modules()]:
        if name in kinds:
            continue
        parent = name.rpartition(".")[0]
        while parent and parent not in kinds:
            parent = parent.rpartition(".")[0]
        kinds[name] = kinds.get(parent, "other") if kinds.get(parent) in ("attention", "mlp") else "other"
    kinds[""] = "model"
    return kinds


def _rows(lm, clock: _Clock, counts: dict, peaks: dict) -> list[dict]:
    """A row per module that ran, from one run (the median one), so the self times add up to the total."""
    kinds = _kinds(lm)
    rows = []
    for name in clock.names.values():
        total = {p: clock.total.get((name, p), 0.0) for p in ("prefill", "decode")}
        self_ = {p: clock.self_.get((name, p), 0.0) for p in ("prefill", "decode")}
        if name not in clock.calls:
            continue
        rows.append(
            {
                "module": name or type(lm.model).__name__,
                "depth": 0 if not name else name.count(".") + 1,
                "kind": kinds.get(name, "other"),
                "calls": clock.calls[name],
                "total_s": total["prefill"] + total["decode"],
                "self_s": self_["prefill"] + self_["decode"],
                "prefill_s": total["prefill"],
                "decode_s": total["decode"],
                "flops": int(counts.get(name, 0)),
                "peak_bytes": int(peaks.get(name or ROOT, 0)),
            }
        )
    return rows


def _flops(net: Any, run) -> dict[str, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    root = type(net).__name__
    out = {}
    for name, per_op in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == root else name.removeprefix(root + ".")
        out[key] = int(sum(per_op.values()))
    return out


def _memory(net: Any, run, device: torch.device):
    """torch.profiler with profile_memory: the allocation timeline, each module's peak above its
    start, the forwards' start times, the Chrome trace and the run's peak."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _ranges(net), torch_profile(activities=activities, profile_memory=True, record_shapes=False) as prof:
        run()
    events = prof.events() or []
    times, cumulative = allocation_levels(events, cuda=device.type == "cuda")
    if not times:
        return [], [], {}, "", 0
    t0 = min(e.time_range.start for e in events)
    peaks: dict[str, int] = {}
    starts: list[float] = []
    for e in events:
        if not e.name.startswith("module::"):
            continue
        name = _unlabel(e.name.removeprefix("module::"))
        lo = bisect.bisect_left(times, e.time_range.start)
        hi = bisect.bisect_right(times, e.time_range.end)
        base = cumulative[lo - 1] if lo > 0 else 0
        inside = max(cumulative[lo:hi], default=base) - base
        peaks[name] = max(peaks.get(name, 0), inside)
        if name == ROOT:
            starts.append((e.time_range.start - t0) / 1e6)
    timeline = [((t - t0) / 1e6, c) for t, c in zip(times, cumulative)]
    if len(timeline) > 2000:  # enough points to draw
        stride = math.ceil(len(timeline) / 2000)
        timeline = timeline[::stride] + [timeline[-1]]
    with tempfile.TemporaryDirectory(prefix="llm-widgets-profile-") as folder:  # the profiler writes only to files
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        chrome = path.read_text()
    return timeline, sorted(starts), peaks, chrome, max(cumulative)


def allocation_levels(events, *, cuda: bool) -> tuple[list[float], list[int]]:
    """From torch.profiler events (profile_memory=True): the times of allocations and frees and the
    bytes allocated after each, above the start. Each op counts its own (self_) usage, so nested
    ops do not count twice; the allocator's free-standing "[memory]" events count too."""

    def usage(e) -> int:
        return e.self_device_memory_usage if cuda else e.self_cpu_memory_usage

    changes = sorted((e.time_range.start, usage(e)) for e in events if not e.name.startswith("module::") and usage(e))
    level, cumulative = 0, []
    for _, delta in changes:
        level += delta
        cumulative.append(level)
    return [t for t, _ in changes], cumulative


@provides(Trace._profiled)
def profile_trace(trace: Trace) -> Profile:
    """trace.profile(): the trace's prompt, generation length and edits, profiled."""
    generated = len(trace.generated_ids)
    return profile(trace.model, trace.input_ids[: trace.n_prompt].tolist(), max_new_tokens=generated, edits=trace.edits)


HOOK_S = 4e-6  # one module's pre and post hooks of the clock, per call (the 2-core CPU)
PROFILER_MODES = 2.0  # torch.profiler with memory events, per op, in dispatch modes' time (bench_estimate)
PROFILER_S = 1.2  # its start, stop and the Chrome trace written and read back (2-core CPU, bench_estimate)


def _run_work(lm: LanguageModel, length: int, new: int, **extra: Any) -> list[Work]:
    """The forwards of one profiled run: the prompt, then one token a step."""
    work = [Work("the prompt", 1, 1, length, logits=1 if new else length, **extra)]
    if new > 1:
        work.append(Work(f"{new - 1} more tokens", new - 1, 1, 1, past=length + new // 2, **extra))
    return work


@plans(profile)
def plan_profile(model, prompt, *, max_new_tokens=0, edits=(), repeats=3, flops=True, memory=True) -> Plan:
    """lw.profile's work: a warm-up and `repeats` runs under the module clock, a run under the FLOP
    counter, one under torch.profiler."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"profile takes an lw.LanguageModel (from lw.load_model); got {type(model).__name__}")
    checks.integer(repeats, "repeats", low=1)
    T = len(prompt_ids(model, prompt))
    hooks = len(modules_of(model.model)) * HOOK_S
    work = [over(w, count=w.count * (1 + repeats)) for w in _run_work(model, T, max_new_tokens, extra_s=hooks)]
    if flops:
        work += [over(w, what=w.what + ", FLOPs counted") for w in _run_work(model, T, max_new_tokens, modes=1.0)]
    if memory:
        profiled = _run_work(model, T, max_new_tokens, modes=PROFILER_MODES)
        work += [over(profiled[0], what="the prompt, profiled", extra_s=PROFILER_S), *profiled[1:]]
    return Plan(model, work, kept_bytes=kv_bytes(model) * (T + max_new_tokens))
