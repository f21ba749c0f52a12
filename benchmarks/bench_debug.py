"""The debugger's costs on SmolLM2-135M, side by side in one run.

(a) the recording run (`lw.debug`, every module call hooked, statistics of every output) vs a
plain forward of the same prompt (only the last position's logits, as the debugger's run keeps),
and vs the engine's own run without hooks (`model.trace(capture=False)`), at 256 and 1024 tokens;
(b) the timeline's memory per 1,000 calls (Python allocations, traced); (c) moving back one call
and inspecting a call in the middle of the 1024-token prompt (a replay up to it).

    .venv/bin/python benchmarks/bench_debug.py [--repeats 5] [--lengths 256 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import torch

import llm_widgets as lw


def _median(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = lw.load_model("smollm2-135m", progress=False)
    print("| measure | debugger | plain forward | ratio | engine alone (no hooks) | ratio |\n|---|---|---|---|---|---|")
    for length in args.lengths:
        ids = torch.randint(100, 40_000, (length,))
        plain = _median(lambda ids=ids: lm.model(ids[None], logits_to_keep=1), args.repeats)
        engine = _median(lambda ids=ids: lm.trace(ids, capture=False), args.repeats)
        ours = _median(lambda ids=ids: lw.debug(lm, ids), args.repeats)
        print(
            f"| recording run, {length} tokens | {ours:.3f} s | {plain:.3f} s | **{ours / plain:.2f}x** | "
            f"{engine:.3f} s | {ours / engine:.2f}x |"
        )
    ids = torch.randint(100, 40_000, (max(args.lengths),))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    dbg = lw.debug(lm, ids)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    per_thousand = grown / len(dbg.calls) * 1000 / 2**20
    mib = grown / 2**20
    print(f"\n| timeline memory | {len(dbg.calls)} calls | {mib:.2f} MiB | {per_thousand:.3f} MiB per 1,000 calls |")
    middle = len(dbg.calls) // 2
    dbg.goto(middle)
    start = time.perf_counter()
    dbg.back()
    back = time.perf_counter() - start
    inspect = []
    for _ in range(args.repeats):
        dbg._captured = None  # no cached copy: each inspect replays up to the call
        start = time.perf_counter()
        dbg.inspect("output")
        inspect.append(time.perf_counter() - start)
    print(
        f"| at call {dbg.position} of {len(dbg.calls)} ({dbg.current.module}, {max(args.lengths)} tokens) | "
        f"back(): {back * 1e3:.3f} ms | inspect(): {statistics.median(inspect):.3f} s |"
    )


if __name__ == "__main__":
    main()
