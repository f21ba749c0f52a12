"""Gradients, measured side by side in one run (median of alternating repeats).

1. A training step of tiny-gpt2 (AdamW, batch 8 x 128) and of SmolLM2-135M (batch 2 x 64) with the
   GradientMonitor (norms every step, histograms every 50, update ratios) vs the same step without.
2. Attribution cost vs a plain forward of the same prompt, on SmolLM2:
   grad x input (one forward + backward) and integrated gradients (64 steps).

    .venv/bin/python benchmarks/bench_gradients.py [--steps 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import llm_widgets as lw

PROMPT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. The capital of France is"
)


def training(name: str, steps: int, repeats: int, batch: tuple[int, int]) -> None:
    """A training step of `name` (AdamW) with the monitor at every step, and without, alternating."""
    lm = lw.load_model(name, progress=False)
    text = (lw.models.loading.TINY_GPT2_DIR / "MODEL_CARD.md").read_text() * 3
    ids = lm.tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    rows, length = batch

    def run(monitored: bool) -> float:
        torch.manual_seed(0)
        model = copy.deepcopy(lm.model).float().train().requires_grad_(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        monitor = lw.GradientMonitor(model, histograms_every=50, warn=False) if monitored else None
        g = torch.Generator().manual_seed(0)
        batches = [
            torch.stack([ids[s : s + length] for s in torch.randint(0, len(ids) - length - 1, (rows,), generator=g)])
            for _ in range(steps)
        ]
        start = time.perf_counter()
        for batch in batches:
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            if monitor:
                monitor.step(loss=loss)
            opt.step()
        elapsed = time.perf_counter() - start
        if monitor:
            monitor.detach()
        return elapsed / steps

    run(True), run(False)  # warm up
    ours, plain = [], []
    for _ in range(repeats):
        ours.append(run(True))
        plain.append(run(False))
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"{name} training step (AdamW, batch {rows} x {length}, {steps} steps, median of {repeats})\n")
    print("| with GradientMonitor (norms every step, histograms every 50) | without | ratio |\n|---|---|---|")
    print(f"| {o * 1000:.1f} ms | {p * 1000:.1f} ms | **{o / p:.3f}x** (target <= 1.03x) |\n", flush=True)


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
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--training-only", action="store_true", help="the training steps, not attribution")
    args = parser.parse_args()
    training("tiny-gpt2", args.steps, args.repeats, (8, 128))
    training("smollm2-135m", max(4, args.steps // 6), args.repeats, (2, 64))
    if not args.training_only:
        attribution(args.repeats)
