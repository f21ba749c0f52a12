"""Bytes on the wire for an AttentionView's first paint, against the JSON lists
of every head that bertviz-style viewers write into the page.

First paint = the widget state (tokens and selection, as JSON) + the selected
head's overview (max-pooled to at most 512 x 512, uint8 with a float32 scale per
row) + the layers x heads grid (24 x 24 per head). The JSON figure is measured
on one head's full T x T matrix (json.dumps of its list) and multiplied by the
number of heads, which is what a viewer that embeds every head sends.

    .venv/bin/python benchmarks/bench_widgets.py [--lengths 512 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import llm_widgets as lw

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    model = lw.load_model(args.model, progress=False)
    ids = model.tokenizer(TEXT * 400)["input_ids"]
    print(f"{args.model}, first paint of lw.AttentionView; JSON = one head's T x T list, times every head\n")
    print("| tokens | state (JSON) | overview | grid | first paint in all | JSON of all heads | smaller by | "
          "compute time |")
    print("|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        trace = model.trace(ids[:length])
        view = lw.AttentionView(trace)
        start = time.perf_counter()
        state = len(json.dumps({k: v for k, v in view.get_state().items() if not k.startswith("_")}).encode())
        _, overview = view.answer({"what": "overview", "layer": 0, "head": 0, "size": 512})
        _, grid = view.answer({"what": "grid", "size": 24})
        elapsed = time.perf_counter() - start
        ours = state + sum(map(len, overview)) + sum(map(len, grid))
        one_head = trace.attention(0, 0) if length <= 1024 else trace.attention(0, 0, queries=(0, 1024))
        per_number = len(json.dumps(one_head.tolist()).encode()) / one_head.numel()  # bytes per weight as JSON
        json_bytes = per_number * length * length * trace.n_layers * trace.n_heads
        print(f"| {length} | {state / 1024:.0f} KiB | {sum(map(len, overview)) / 2**20:.2f} MiB "
              f"| {sum(map(len, grid)) / 2**20:.2f} MiB | **{ours / 2**20:.2f} MiB** | {json_bytes / 2**30:.1f} GiB "
              f"| **{json_bytes / ours:,.0f}x** | {elapsed:.1f} s |", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
