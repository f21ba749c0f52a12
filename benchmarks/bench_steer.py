"""Steering on SmolLM2-135M, on this machine:

1. a steering search's candidates scored per second, many per forward (each batch row its own
   edits) against one forward each: the same 64 candidates (attention on a span, single heads,
   and directions after a block), on the planted red/blue prompt and its 16-token continuation;
2. the editor's regenerate with a direction (trace with SteerResidual, 20 new tokens, and the
   projection strip) and a trace with it alone, against a plain `generate` of the same tokens.

    .venv/bin/python benchmarks/bench_steer.py [--repeats 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llm_widgets as lw
from llm_widgets.analysis.steering_search import _default_direction, _direction_proposals, _heads_edit, _Scorer

PROMPT = "Alice has a red ball. Bob has a blue ball. The color of Alice's ball is"
SPAN = ((7, 12),)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def candidates_per_second(lm: lw.LanguageModel, repeats: int, batch: int) -> tuple[float, float]:
    ids = lm.tokenizer(PROMPT)["input_ids"]
    answer = lm.trace(ids, max_new_tokens=16).generated_ids
    blue, red = lm.tokenizer.encode(" blue")[0], lm.tokenizer.encode(" red")[0]

    def success(logp: torch.Tensor) -> float:
        return float(logp[blue].exp() - logp[red].exp())

    heads = [(layer, head) for layer in range(lm.facts.n_layers) for head in range(lm.facts.n_heads)][::8][:48]
    batched, single = (_Scorer(lm, [*ids, *answer], len(ids), success, size) for size in (batch, 1))
    proposals = [_heads_edit(SPAN, [pair], 5.0) for pair in heads]
    proposals += _direction_proposals(lm, [_default_direction(lm, blue, red)], batched.norms)
    proposals = proposals[:64]
    for scorer in (batched, single):
        scorer.score(proposals[:batch])  # warm
    t_batched = median_seconds(lambda: batched.score(proposals), repeats)
    t_single = median_seconds(lambda: single.score(proposals), repeats)
    return len(proposals) / t_batched, len(proposals) / t_single


def regenerate(lm: lw.LanguageModel, repeats: int) -> tuple[float, float, float]:
    prompt = "My holiday was"
    direction = lw.token_direction(lm, " great")
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    editor = lw.AttentionEditor(lm, prompt, max_new_tokens=20, directions=[direction])
    strengths = iter(range(1, 10_000))

    def edit() -> None:  # a new strength each time: the editor runs again
        editor.edit_specs = [lw.SteerResidual(direction, [20], 0.01 * next(strengths)).to_dict()]

    def traced() -> None:
        lm.trace(prompt, max_new_tokens=20, edits=[lw.SteerResidual(direction, [20], 1.0)])

    def plain() -> None:
        with torch.no_grad():
            lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=20,
                min_new_tokens=20,
                do_sample=False,
                pad_token_id=lm.pad_token_id,
            )

    for fn in (edit, traced, plain):
        fn()  # warm
    return median_seconds(edit, repeats), median_seconds(traced, repeats), median_seconds(plain, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    lm = lw.load_model("smollm2-135m", progress=False)
    for model in (lw.load_model("tiny-gpt2"), lm):
        fast, slow = candidates_per_second(model, args.repeats, args.batch)
        print(
            f"{model.name}: search candidates per second {fast:.1f} batched ({args.batch} a forward) vs "
            f"{slow:.1f} one forward each: {fast / slow:.1f}x (target >= 5x)"
        )
    editor, traced, plain = regenerate(lm, args.repeats)
    print(
        f"20 new tokens with a direction: editor regenerate {editor:.3f} s ({editor / plain:.2f}x), trace "
        f"{traced:.3f} s ({traced / plain:.2f}x), plain generate {plain:.3f} s (target <= 1.3x)"
    )


if __name__ == "__main__":
    main()
