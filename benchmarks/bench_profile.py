"""The cost of profiling, side by side in one run on SmolLM2 at 256 and 1024 tokens.

(a) one forward with the profile's clock (hooks on every module) vs the same forward plain:
    what profiling adds to the times it reports (target <= 1.3x);
(b) the whole `lw.profile(...)` call (warm-up, timed runs, the FLOP pass and the memory pass
    with torch.profiler) vs one plain forward: what a user waits for.

    .venv/bin/python benchmarks/bench_profile.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llm_widgets as lw
from llm_widgets.analysis.profile import _Clock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = lw.load_model("smollm2-135m", progress=False)
    net = lm.model
    print(
        "| tokens | plain forward | with the profile's clock | ratio "
        "| whole lw.profile(repeats=1) | ratio to one forward |"
    )
    print("|---|---|---|---|---|---|")
    for n in (256, 1024):
        ids = torch.randint(100, lm.facts.vocab_size - 100, (1, n), generator=torch.Generator().manual_seed(n))

        def plain(ids=ids) -> float:
            start = time.perf_counter()
            net(input_ids=ids, use_cache=False)
            return time.perf_counter() - start

        def clocked() -> float:
            with _Clock(net, sync=False):
                return plain()

        plain()
        times = {"plain": [], "clocked": []}
        for _ in range(args.repeats):  # alternating, so drift hits both alike
            times["plain"].append(plain())
            times["clocked"].append(clocked())
        a, b = statistics.median(times["plain"]), statistics.median(times["clocked"])
        start = time.perf_counter()
        lw.profile(lm, ids[0].tolist(), repeats=1)
        whole = time.perf_counter() - start
        print(f"| {n} | {a:.3f} s | {b:.3f} s | **{b / a:.2f}x** | {whole:.2f} s | {whole / a:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
