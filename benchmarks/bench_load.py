"""Model loading: what lw.load_model adds on top of plain from_pretrained.

Side by side in one run, alternating, median of N: this machine is shared and
noisy, so only the ratios are meant to be compared across runs.

    .venv/bin/python benchmarks/bench_load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import llm_widgets as lw
from llm_widgets.models import loading


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lw.load_model("smollm2-135m")  # make sure the cache exists; not timed
    cached = str(loading.cache_dir() / "smollm2-135m")
    cases = {
        "smollm2-135m": (
            lambda: lw.load_model("smollm2-135m", progress=False),
            lambda: (
                AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32),
                AutoTokenizer.from_pretrained(cached),
            ),
        ),
        "tiny-gpt2": (
            lambda: lw.load_model("tiny-gpt2"),
            lambda: (
                AutoModelForCausalLM.from_pretrained(str(loading.TINY_GPT2_DIR), dtype=torch.float32),
                AutoTokenizer.from_pretrained(str(loading.TINY_GPT2_DIR)),
            ),
        ),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| model | lw.load_model (s) | plain from_pretrained (s) | ratio |")
    print("|---|---|---|---|")
    for name, (ours, plain) in cases.items():
        ours_t, plain_t = [], []
        for _ in range(args.repeats):
            ours_t.append(timed(ours))
            plain_t.append(timed(plain))
        a, b = statistics.median(ours_t), statistics.median(plain_t)
        print(f"| {name} (cached) | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
