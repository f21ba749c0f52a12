"""`lw.sample_tree` on SmolLM2-135M vs the loop one would write: n separate `generate` calls, one
seed each. Side by side in one run, the answers checked equal (each row draws as generate alone
does, so the same seeds give the same tokens), and the memory of the cache the tree keeps (the
prompt's keys and values held once) against the same cache repeated per answer.

    .venv/bin/python benchmarks/bench_samples.py [--n 32] [--tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import llm_widgets as lw
from llm_widgets.analysis.profile import cache_bytes
from llm_widgets.trace.shared_cache import unshared

PROMPT = "The three primary colours are red, yellow and"


def separate(lm: lw.LanguageModel, ids: torch.Tensor, n: int, tokens: int, seed: int) -> list[list[int]]:
    """n plain `generate` calls, answer i with torch.manual_seed(seed + i)."""
    out = []
    with torch.no_grad():
        for i in range(n):
            torch.manual_seed(seed + i)
            row = lm.model.generate(
                ids[None], max_new_tokens=tokens, do_sample=True, top_k=0, top_p=1.0, temperature=1.0
            )[0, len(ids) :]
            eos = lm.model.generation_config.eos_token_id
            row = row.tolist()
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = lw.load_model("smollm2-135m", progress=False)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    tree = lw.sample_tree(lm, PROMPT, n=args.n, max_new_tokens=args.tokens, seed=0)
    same = tree.generated == separate(lm, ids, args.n, args.tokens, 0)
    t_tree, t_loop = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        lw.sample_tree(lm, PROMPT, n=args.n, max_new_tokens=args.tokens, seed=0)
        t_tree.append(time.perf_counter() - start)
        start = time.perf_counter()
        separate(lm, ids, args.n, args.tokens, 0)
        t_loop.append(time.perf_counter() - start)
    ours, loop = statistics.median(t_tree), statistics.median(t_loop)
    kept, repeated = _kept(tree)
    print(f"| measure | lw.sample_tree | {args.n} generate calls | faster by | same answers |")
    print("|---|---|---|---|---|")
    where = f"SmolLM2, {args.n} answers x {args.tokens} tokens, prompt {len(ids)} tokens"
    print(f"| {where} | {ours:.2f} s | {loop:.2f} s | **{loop / ours:.1f}x** | {same} |")
    print(f"\n{len(tree.leaves())} distinct answers\n")
    print("| the cache kept for force() | prompt held once | repeated per answer | smaller by |")
    print("|---|---|---|---|")
    print(f"| {where} | {kept:.1f} MiB | {repeated:.1f} MiB | {repeated / kept:.1f}x |")
    long = (PROMPT + " ") * 60
    tree = lw.sample_tree(lm, long, n=args.n, max_new_tokens=8, seed=0)
    kept, repeated = _kept(tree)
    where = f"SmolLM2, {args.n} answers x 8 tokens, prompt {len(tree.prompt_ids)} tokens"
    print(f"| {where} | {kept:.1f} MiB | {repeated:.1f} MiB | {repeated / kept:.1f}x |")


def _kept(tree) -> tuple[float, float]:
    """MiB of the tree's kept cache, and of the same cache with the prompt repeated per answer."""
    return cache_bytes(tree._cache) / 2**20, cache_bytes(unshared(copy.deepcopy(tree._cache))) / 2**20


if __name__ == "__main__":
    main()
