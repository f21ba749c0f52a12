"""The gradient monitor at every step, measured side by side in one run (median of alternating repeats).

A training step of tiny-gpt2 (AdamW, batch 8 x 128) and of SmolLM2-135M (batch 2 x 64) with the
GradientMonitor (per-group norms at every step, histograms every 50, update ratios every 10, the
flight recorder keeping the last 8 steps' inputs) vs the same step without; and the memory the
flight recorder holds per kept step.

    .venv/bin/python benchmarks/bench_monitor.py [--steps 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import llm_widgets as lw


def training(name: str, steps: int, repeats: int, batch: tuple[int, int]) -> None:
    """A training step of `name` (AdamW) with the monitor at every step, and without, alternating.
    Step 1 (the first histogram, the weight copy's allocation) and step 2 are left out of the medians:
    one-offs in a run of thousands of steps, given on their own."""
    lm = lw.load_model(name, progress=False)
    text = (lw.models.loading.TINY_GPT2_DIR / "MODEL_CARD.md").read_text() * 3
    ids = lm.tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    rows, length = batch
    kept: list[int] = []
    inside: list[float] = []  # seconds spent in monitor.step() per step (steps 3+)
    first: list[float] = []

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
        times = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            if monitor:
                before = time.perf_counter()
                monitor.step(loss=loss)
                (first if i == 0 else inside if i >= 2 else []).append(time.perf_counter() - before)
            opt.step()
            times.append(time.perf_counter() - start)
        if monitor:
            kept.append(monitor.flight.nbytes // len(monitor.flight.ring))
            monitor.detach()
        return statistics.mean(times[2:])

    run(True), run(False)  # warm up
    inside.clear(), first.clear()
    ours, plain = [], []
    for _ in range(repeats):
        ours.append(run(True))
        plain.append(run(False))
    o, p = statistics.median(ours), statistics.median(plain)
    own = statistics.mean(inside)
    print(f"{name} training step (AdamW, batch {rows} x {length}, {steps} steps, median of {repeats})\n")
    print(
        "| with GradientMonitor (every step) | without | ratio | time in monitor.step() | step 1 (one-off) "
        "| flight recorder per kept step |\n|---|---|---|---|---|---|"
    )
    print(
        f"| {o * 1000:.1f} ms | {p * 1000:.1f} ms | **{o / p:.3f}x** (target <= 1.03x) | {own * 1000:.1f} ms "
        f"(**{own / p:.1%}** of a step) | {statistics.median(first) * 1000:.0f} ms | {kept[-1] / 1024:.1f} KiB |\n",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    training("tiny-gpt2", args.steps, args.repeats, (8, 128))
    training("smollm2-135m", max(12, args.steps // 3), args.repeats, (2, 64))
