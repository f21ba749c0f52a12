"""`lw.diverge` with blame on SmolLM2-135M vs the naive loop, side by side in one run.

b is SmolLM2 with noise planted in one layer's MLP (a copy). The naive loop patches a's output of
each layer's residual stream, attention and MLP into b with a forward hook, one forward per layer
and site (90 forwards), as one would write it by hand; `lw.diverge` runs the patched rows as
batches (fanned out at the patched layer, so the layers below run once). Shares checked equal.

    .venv/bin/python benchmarks/bench_diverge.py [--repeats 3] [--tokens 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import llm_widgets as lw
from llm_widgets.analysis.diverge import _kl
from llm_widgets.models.anatomy import anatomy, block_output

PROMPT = "When Mary and John went to the store, John gave a drink to"


def naive_shares(a: lw.LanguageModel, b: lw.LanguageModel, ids: torch.Tensor, keep: int, sites) -> dict:
    """One hooked forward of b per layer and site, a's output of that site put in its place."""
    parts_a, parts_b = anatomy(a.model, a.facts.n_layers), anatomy(b.model, b.facts.n_layers)
    groups = {"residual": "blocks", "attention": "attentions", "mlp": "mlps"}
    with torch.no_grad():
        la = a.model(ids[None]).logits[0, -keep:].float()
        base = float(_kl(la, b.model(ids[None]).logits[0, -keep:].float()).mean())
        shares = {}
        for site in sites:
            kept: list[torch.Tensor] = []
            handles = [
                m.register_forward_hook(lambda _m, _a, out, kept=kept: kept.append(block_output(out).clone()))
                for m in getattr(parts_a, groups[site])
            ]
            a.model(ids[None])
            for h in handles:
                h.remove()
            values = []
            for layer, module in enumerate(getattr(parts_b, groups[site])):

                def swap(_m, _a, out, layer=layer, kept=kept):
                    return (kept[layer], *out[1:]) if isinstance(out, tuple) else kept[layer]

                handle = module.register_forward_hook(swap)
                try:
                    lb = b.model(ids[None]).logits[0, -keep:].float()
                finally:
                    handle.remove()
                values.append(1.0 - float(_kl(la, lb).mean()) / base)
            shares[site] = values
    return shares


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    a = lw.load_model("smollm2-135m", progress=False)
    model = copy.deepcopy(a.model)
    torch.manual_seed(0)
    mlp = anatomy(model, a.facts.n_layers).mlps[12]
    for p in mlp.parameters():
        p.add_(torch.randn_like(p) * 0.3 * p.std())
    b = lw.LanguageModel(model, a.tokenizer, name="smollm2, layer 12 noisy")
    sites = ("residual", "attention", "mlp")
    ours = lw.diverge(a, b, PROMPT, args.tokens, alone=False)
    ids = a.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    forced = torch.cat([ids, torch.tensor(ours.a_generated[:-1])])
    keep = len(ours.a_generated)
    reference = naive_shares(a, b, forced, keep, sites)
    mine = {site: [v for _, v in sorted((layer, v) for layer, st, v in ours.blame if st == site)] for site in sites}
    residual = reference["residual"]
    reference["residual"] = [v - (residual[i - 1] if i else 0.0) for i, v in enumerate(residual)]
    worst = max(abs(x - y) for site in sites for x, y in zip(mine[site], reference[site], strict=True))
    t_ours, t_plain, t_naive, t_alone = [], [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        lw.diverge(a, b, PROMPT, args.tokens, alone=False)
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        lw.diverge(a, b, PROMPT, args.tokens)  # and each of b's modules alone
        t_alone.append(time.perf_counter() - start)
        start = time.perf_counter()
        lw.diverge(a, b, PROMPT, args.tokens, blame=False)
        t_plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        naive_shares(a, b, forced, keep, sites)
        t_naive.append(time.perf_counter() - start)
    o, p, n = statistics.median(t_ours), statistics.median(t_plain), statistics.median(t_naive)
    print("| measure | lw.diverge | naive loop | faster by | max |diff| of shares |")
    print("|---|---|---|---|---|")
    where = f"SmolLM2, {len(forced)} tokens ({keep} generated), 30 layers x 3 sites"
    blame = o - p
    ratio = f"**{n / blame:.1f}x**"
    print(f"| {where}: the blame (less the call without) | {blame:.2f} s | {n:.2f} s | {ratio} | {worst:.1e} |")
    print(f"| {where}: the whole call | {o:.2f} s | | {n / o:.1f}x | |")
    print(f"| {where}: the whole call with `alone` | {statistics.median(t_alone):.2f} s | | | |")
    print(f"\nblame: {ours.blame[:3]}; first split {ours.first_split}; mean KL {float(ours.kl.mean()):.3g}")


if __name__ == "__main__":
    main()
