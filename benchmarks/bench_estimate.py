"""`lw.estimate` against the calls it estimates: for each expensive call at two sizes, the
predicted seconds and peak bytes beside the measured ones (wall time of one run; the peak of the
tensors it allocated above what was held, counted in a second run). SmolLM2-135M on this machine.

    .venv/bin/python benchmarks/bench_estimate.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import captum.attr  # noqa: F401  (imported here: the first attribution in a process would pay for it)
import torch

import llm_widgets as lw
from llm_widgets.analysis.cost import describe_bytes, pace_of, peak_allocated
from llm_widgets.models.devices import input_device

warnings.filterwarnings("ignore")


def words(n: int, seed: int = 0) -> list[int]:
    return torch.randint(300, 20000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def cases(lm: lw.LanguageModel, other: lw.LanguageModel) -> dict[str, list[tuple]]:
    """name -> [(size label, call, args, kwargs)] at two sizes each."""
    tr = {n: lm.trace(words(n), max_new_tokens=1) for n in (16, 48, 64, 256, 1024)}
    clean = {n: words(n, 1) for n in (12, 24)}
    corrupt = {n: words(n, 2) for n in (12, 24)}
    return {
        "patch (residual)": [
            (f"{n} tokens", lw.patch, (lm, clean[n], corrupt[n], " the"), {"progress": False}) for n in (12, 24)
        ],
        "patch (heads)": [
            (f"{n} tokens", lw.patch, (lm, clean[n], corrupt[n], " the"), {"site": "heads", "progress": False})
            for n in (12, 24)
        ],
        "ablation_sweep": [(f"{n} tokens", lw.ablation_sweep, (tr[n],), {"progress": False}) for n in (16, 48)],
        "attribute (grad x input)": [(f"{n} tokens", tr[n].attribute, (), {}) for n in (256, 1024)],
        "attribute (integrated gradients, 16 steps)": [
            (f"{n} tokens", tr[n].attribute, (), {"method": "integrated_gradients", "n_steps": 16}) for n in (64, 256)
        ],
        "attribute (occlusion)": [(f"{n} tokens", tr[n].attribute, (), {"method": "occlusion"}) for n in (16, 64)],
        "logit_lens": [(f"{n} tokens", tr[n].logit_lens, (), {}) for n in (256, 1024)],
        "profile (4 new tokens)": [
            (f"{n} tokens", lw.profile, (lm, words(n)), {"max_new_tokens": 4}) for n in (64, 256)
        ],
        "scaling (sdpa and eager)": [
            (f"up to {n[-1]}", lw.scaling, (lm,), {"lengths": n, "repeats": 2}) for n in ((128, 256), (256, 512))
        ],
        "diverge (4 new tokens)": [
            (f"{n} tokens", lw.diverge, (lm, other, words(n)), {"max_new_tokens": 4}) for n in (16, 64)
        ],
        "sample_tree (16 new tokens)": [
            (f"n={n}", lw.sample_tree, (lm, words(32)), {"n": n, "max_new_tokens": 16, "seed": 0}) for n in (8, 32)
        ],
        "debug": [(f"{n} tokens", lw.debug, (lm, words(n)), {}) for n in (256, 1024)],
        "explain_attention (pair)": [
            (f"{n} tokens", tr[n].explain_attention, (20, 3, n - 1, 1), {}) for n in (256, 1024)
        ],
        "explain_attention (row)": [(f"{n} tokens", tr[n].explain_attention, (20, 3, n - 1), {}) for n in (256, 1024)],
        "search_steering (a span)": [
            (f"budget {b}", lw.search_steering, (lm, words(24), " blue", " red"), {"span": (2, 10), "budget": b})
            for b in (32, 96)
        ],
    }


def long_cases(lm: lw.LanguageModel, budget: int) -> dict[str, list[tuple]]:
    """Attribution and residual patching at 4,096 and 8,192 tokens within `budget` bytes."""
    out: dict[str, list[tuple]] = {"attribute (grad x input)": [], "attribute (integrated gradients, 8 steps)": []}
    out["patch (residual, layers 10 and 20, last 4 positions)"] = []
    for n in (4096, 8192):
        tr = lm.trace(words(n))
        out["attribute (grad x input)"].append((f"{n} tokens", tr.attribute, (), {"budget_bytes": budget}))
        if n == 4096:  # (8 steps at 8,192 tokens: about 4 minutes here)
            ig = {"method": "integrated_gradients", "n_steps": 8, "budget_bytes": budget}
            out["attribute (integrated gradients, 8 steps)"].append((f"{n} tokens", tr.attribute, (), ig))
        clean = words(n, 1)
        corrupted = clean[: n - 8] + words(8, 2)
        settings = {"layers": [10, 20], "at": (n - 4, n), "budget_bytes": budget, "progress": False}
        out["patch (residual, layers 10 and 20, last 4 positions)"].append(
            (f"{n} tokens", lw.patch, (lm, clean, corrupted, " the"), settings)
        )
    return out


def measure(call, args, kwargs, device, once: bool) -> tuple[float, int]:
    """Wall time of a run, then the peak of a second run under the memory counter (its Python per op
    would show in a short run's time); `once`: one run, both measured (a long run hardly feels it)."""
    start = time.perf_counter()
    if once:
        peak = peak_allocated(lambda: call(*args, **kwargs), device)[1]
        return time.perf_counter() - start, peak
    call(*args, **kwargs)
    seconds = time.perf_counter() - start
    return seconds, peak_allocated(lambda: call(*args, **kwargs), device)[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="names (or the start of names) of the calls to run")
    parser.add_argument("--long", action="store_true", help="attribution and patching at 4,096 and 8,192 tokens")
    parser.add_argument("--budget", type=float, default=2.0, help="GiB the long calls may take")
    args = parser.parse_args()
    lm = lw.load_model("smollm2-135m", progress=False)
    noisy = copy.deepcopy(lm.model)
    with torch.no_grad():
        noisy.model.layers[10].mlp.down_proj.weight.mul_(1.5)
    other = lw.LanguageModel(noisy, lm.tokenizer, name="smollm2-135m, layer 10 MLP x1.5")
    device = input_device(lm.model)
    start = time.perf_counter()
    pace_of(lm)
    print(f"calibration: {time.perf_counter() - start:.2f} s\n")
    print("| call | size | predicted s | measured s | ratio | predicted peak | measured peak | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    budget = int(args.budget * 2**30)
    todo = long_cases(lm, budget) if args.long else cases(lm, other)
    for name, runs in todo.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        for size, call, a, k in runs:
            guess = lw.estimate(call, *a, **k)
            seconds, peak = measure(call, a, k, device, once=args.long)
            times = f"{guess.seconds:.2f} | {seconds:.2f} | {guess.seconds / seconds:.2f}"
            ratio = guess.peak_bytes / max(peak, 1)
            peaks = f"{describe_bytes(guess.peak_bytes)} | {describe_bytes(peak)} | {ratio:.2f}"
            print(f"| {name} | {size} | {times} | {peaks} |", flush=True)


if __name__ == "__main__":
    main()
