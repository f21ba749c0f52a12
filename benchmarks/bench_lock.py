"""The cost of the per-model run lock for a single caller, side by side in one run.

A traced run holds its model's lock (llm_widgets.trace.locking) so overlapping
runs take turns. With one caller the lock is never contended: this measures the
same traces with and without it (the lock replaced by a no-op), alternating.

    .venv/bin/python benchmarks/bench_lock.py [--repeats 7] [--runs 40]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import llm_widgets as lw
from llm_widgets.trace import run as run_module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    lm = lw.load_model("tiny-gpt2", progress=False)
    locked = run_module.exclusive

    def batch(with_lock: bool) -> float:
        run_module.exclusive = locked if with_lock else (lambda model: contextlib.nullcontext())
        try:
            start = time.perf_counter()
            for _ in range(args.runs):
                lm.trace("Call me Ishmael.", max_new_tokens=2)
            return (time.perf_counter() - start) / args.runs
        finally:
            run_module.exclusive = locked

    batch(True)  # warm up
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for with_lock in (True, False):
            times[with_lock].append(batch(with_lock))
    ours, plain = statistics.median(times[True]), statistics.median(times[False])
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        with locked(lm.model):
            pass
    per_lock = (time.perf_counter() - start) / n
    print("| measure | with the lock | without | ratio |\n|---|---|---|---|")
    print(
        f"| tiny-gpt2 trace, 5 tokens + 2 generated, one caller | {ours * 1e3:.2f} ms | {plain * 1e3:.2f} ms | "
        f"**{ours / plain:.3f}x** |"
    )
    print(
        f"| the lock alone (uncontended acquire and release) | {per_lock * 1e6:.2f} µs | | "
        f"{per_lock / plain:.5%} of that trace |"
    )


if __name__ == "__main__":
    main()
