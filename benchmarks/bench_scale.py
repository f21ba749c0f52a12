"""Long contexts on the CPU: SmolLM2-135M at 2k, 4k and 8k tokens (its context is 8,192).

Measured side by side in one run, median of --repeats, runs alternating:

(a) traced forward (queries and keys of every layer kept) vs the plain forward   (target <= 1.05x)
(b) first paint of AttentionView: one head's 512 x 512 overview + the layers x heads grid
(c) AttentionEditor regenerate after an edit vs a plain `generate` of as many tokens   (target <= 1.3x)
(d) peak memory above the loaded model (RSS), traced vs plain (target <= 1.2x + the captured queries and keys)

    .venv/bin/python benchmarks/bench_scale.py [--lengths 2048 4096 8192] [--repeats 2] [--new-tokens 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import llm_widgets as lw

sys.path.insert(0, str(Path(__file__).parent))
from bench_trace import alternate, first_paint, plain_generate  # noqa: E402  (the same clock, memory sampling and paint)

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on his "
    "first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families. "
)


def prompt_of(lm: lw.LanguageModel, length: int) -> list[int]:
    ids = lm.tokenizer(TEXT)["input_ids"]
    return (ids * (length // len(ids) + 1))[:length]


def captured_bytes(tr: lw.Trace) -> int:
    return sum(layer.queries.nbytes + layer.keys.nbytes for layer in tr._layers if layer is not None)


def bench(lm: lw.LanguageModel, length: int, repeats: int, new_tokens: int) -> list[str]:
    model, cpu = lm.model, torch.device("cpu")
    length = min(length, lm.facts.context_length - new_tokens)  # the prompt and what it generates fit the context
    ids = prompt_of(lm, length)
    batch = torch.tensor([ids])
    last = {"logits_to_keep": 1}  # the trace computes the last position's logits only; so does the baseline
    edits = [[lw.ScaleAttention(3.0, keys=(0, 16), layers=[layer])] for layer in (4, 20)]
    editor = lw.AttentionEditor(lm, ids, max_new_tokens=new_tokens, seed=None)  # its own first runs: untimed
    traces, flip = [], [0]

    def plain():
        with torch.no_grad():
            model(input_ids=batch, use_cache=False, **last)

    def traced():
        traces.append(lm.trace(ids))

    def paint():  # on the trace just made: nothing of it is computed yet
        first_paint(traces.pop())

    def generate_plain():
        plain_generate(lm, batch, new_tokens)

    def regenerate():  # what a slider's release does: the editor reruns with the new edits and publishes them
        flip[0] ^= 1
        editor.edits = edits[flip[0]]
        assert not editor.error, editor.error

    cases = {"plain": plain, "traced": traced, "paint": paint, "gen_plain": generate_plain, "regenerate": regenerate}
    t, m = alternate(cases, repeats, cpu)
    qk = captured_bytes(lm.trace(ids)) / 2**20
    allowed = 1.2 * m["plain"] + qk
    rows = [
        f"| {length} | (a) traced forward, every layer captured | {t['traced']:.2f} s vs {t['plain']:.2f} s "
        f"| **{t['traced'] / t['plain']:.2f}x** (target <= 1.05x) |",
        f"| {length} | (b) first paint: a head's 512 x 512 overview + the {lm.facts.n_layers} x {lm.facts.n_heads} "
        f"grid | {t['paint']:.2f} s | |",
        f"| {length} | (c) editor regenerate ({new_tokens} tokens, an edit on one layer) vs plain generate "
        f"| {t['regenerate']:.2f} s vs {t['gen_plain']:.2f} s | **{t['regenerate'] / t['gen_plain']:.2f}x** "
        f"(target <= 1.3x) |",
        f"| {length} | (d) peak memory above the model, traced vs plain forward | {m['traced']:.0f} vs "
        f"{m['plain']:.0f} MiB (captured q/k {qk:.0f} MiB) | **{m['traced'] / allowed:.2f}** of the target "
        f"(1.2 x plain + q/k = {allowed:.0f} MiB) |",
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    lm = lw.load_model("smollm2-135m", progress=False)
    lm.trace(prompt_of(lm, 64), max_new_tokens=2)  # warm-up
    print(
        f"SmolLM2-135M (float32), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"median of {args.repeats}\n"
    )
    print("| tokens | case | time (ours vs plain) | ratio |")
    print("|---|---|---|---|")
    for length in args.lengths:
        bench(lm, length, args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
