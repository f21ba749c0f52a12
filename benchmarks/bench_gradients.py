"""Gradients, measured side by side in one run (median of alternating repeats).

Attribution cost vs a plain forward of the same prompt, on SmolLM2: grad x input (one forward +
backward), attention x grad, occlusion and integrated gradients (64 steps). (The gradient
monitor's cost on a training step is in bench_monitor.py.)

    .venv/bin/python benchmarks/bench_gradients.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llm_widgets as lw

PROMPT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. The capital of France is"
)


def attribution(repeats: int) -> None:
    model = lw.load_model("smollm2-135m", progress=False)
    trace = model.trace(PROMPT)
    ids = trace.input_ids[None]

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.model(input_ids=ids, use_cache=False)
        return time.perf_counter() - start

    def attribute(method: str) -> float:
        start = time.perf_counter()
        trace.attribute(" Paris", contrast=" London", method=method)
        return time.perf_counter() - start

    methods = ["grad_x_input", "attention_x_grad", "occlusion", "integrated_gradients"]
    forward(), [attribute(m) for m in methods]  # warm up (and import Captum)
    times = {m: [] for m in ["forward", *methods]}
    for _ in range(repeats):
        times["forward"].append(forward())
        for m in methods:
            times[m].append(attribute(m))
    base = statistics.median(times["forward"])
    print(f"smollm2-135m attribution of ' Paris' vs ' London', {len(trace)} prompt tokens, median of {repeats}\n")
    print("| method | time | vs a plain forward |\n|---|---|---|")
    print(f"| plain forward | {base * 1000:.0f} ms | 1x |")
    for m in methods:
        t = statistics.median(times[m])
        print(f"| {m} | {t * 1000:.0f} ms | {t / base:.1f}x |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    attribution(args.repeats)
