"""`trace.explain_attention` on SmolLM2-135M at 1,024 tokens: one (query, key) pair, the same
pair at depth 2, and a whole row (every key the last query sees), at the last layer (the most
components: 29 layers x 9 heads, 29 MLPs), beside a plain forward of the same tokens; and the
peak resident memory each adds (sampled every 5 ms; the trace's own capture is held before).

    .venv/bin/python benchmarks/bench_explain.py [--tokens 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

import llm_widgets as lw

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _sample(base: int, peak: list[int], done: threading.Event) -> None:
    """The largest resident memory above `base` until `done`, into peak[0]."""
    while not done.is_set():
        peak[0] = max(peak[0], rss() - base)
        time.sleep(0.005)


def measured(fn, repeats: int) -> tuple[float, float, object]:
    """Median seconds of `fn()` over `repeats`, the peak RSS it added (MiB), its last result."""
    times, peaks, result = [], [], None
    for _ in range(repeats):
        base, peak, done = rss(), [0], threading.Event()
        sampler = threading.Thread(target=_sample, args=(base, peak, done))
        sampler.start()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        done.set()
        sampler.join()
        peaks.append(peak[0] / 2**20)
    return statistics.median(times), max(peaks), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = lw.load_model("smollm2-135m", progress=False)
    ids = torch.randint(100, 20000, (args.tokens,), generator=torch.Generator().manual_seed(0))
    trace = lm.trace(ids)
    layer, head, query, key = lm.facts.n_layers - 1, 3, args.tokens - 1, args.tokens // 2
    plain, _, _ = measured(lambda: lm.model(ids[None]), args.repeats)
    rows = [
        ("one (query, key) pair", lambda: trace.explain_attention(layer, head, query, key), 2.0),
        ("the same pair, depth 2", lambda: trace.explain_attention(layer, head, query, key, depth=2), None),
        (f"the whole row ({args.tokens} keys)", lambda: trace.explain_attention(layer, head, query), 10.0),
    ]
    print(f"SmolLM2, {args.tokens} tokens, head {layer}.{head}, query {query}; a plain forward: {plain:.2f} s\n")
    print("| explain_attention | seconds | x a plain forward | target | peak memory added | residual error |")
    print("|---|---|---|---|---|---|")
    for name, fn, target in rows:
        seconds, peak, result = measured(fn, args.repeats)
        goal = f"< {target:g} s" if target else ""
        print(
            f"| {name} | {seconds:.2f} s | {seconds / plain:.1f}x | {goal} | {peak:.0f} MiB | "
            f"{result.residual_error:.1e} |"
        )


if __name__ == "__main__":
    main()
