"""Activation patching and the head ablation sweep, batched, vs the naive loop of one forward
per patch (what tutorials do), side by side in one run on SmolLM2.

Residual patching: 30 layers x every position of the indirect-object prompt. Head patching
and the ablation sweep: 270 heads. The naive loop registers a hook, runs the corrupted prompt,
reads the score, removes the hook. Same numbers to 1e-5 (checked), peak memory for two chunk
budgets (sampled RSS above the loaded model).

    .venv/bin/python benchmarks/bench_localise.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trace import PeakMemory  # noqa: E402

import llm_widgets as lw  # noqa: E402
from llm_widgets.analysis.patching import _capture_site  # noqa: E402
from llm_widgets.models.anatomy import anatomy, block_output  # noqa: E402
from llm_widgets.trace.capture import RunState, instrument  # noqa: E402

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def naive(lm, site: str, mode: str = "patch") -> torch.Tensor:
    """One forward per patch: the tutorials' loop."""
    model, n_layers = lm.model, lm.facts.n_layers
    parts = anatomy(model, n_layers)
    clean = torch.tensor([lm.tokenizer(CLEAN)["input_ids"]])
    corrupted = torch.tensor([lm.tokenizer(CORRUPTED)["input_ids"]])
    mary, john = (lm.tokenizer.encode(t, add_special_tokens=False)[0] for t in (" Mary", " John"))
    with torch.no_grad():
        source, _ = _capture_site(lm, clean, "heads" if site == "heads" else "residual", parts)
        scores = []
        if site == "residual":
            for layer in range(n_layers):
                for position in range(clean.shape[1]):

                    def hook(_m, _a, out, layer=layer, position=position):
                        hidden = block_output(out).clone()
                        hidden[0, position] = source[layer][position]
                        return hidden if not isinstance(out, tuple) else (hidden, *out[1:])

                    handle = parts.blocks[layer].register_forward_hook(hook)
                    logits = model(input_ids=corrupted, use_cache=False).logits[0, -1]
                    handle.remove()
                    scores.append(float(logits[mary] - logits[john]))
        else:
            ids = corrupted if mode == "patch" else clean
            for layer in range(n_layers):
                for head in range(lm.facts.n_heads):

                    def head_hook(at, out, layer=layer, head=head):
                        if at == layer:
                            out = out.clone()
                            out[0, :, head] = 0 if mode == "zero" else source[layer][:, head]
                        return out

                    with instrument(
                        model, RunState(n_layers, lm.facts.n_heads, ids.shape[1], capture=False, head_hook=head_hook)
                    ):
                        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
                    scores.append(float(logits[mary] - logits[john]))
    return torch.tensor(scores)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = lw.load_model("smollm2-135m", progress=False)
    tr = lm.trace(CLEAN)
    cases = [
        (
            "residual patching, 30 layers x 14 positions (420 runs)",
            lambda: lw.patch(lm, CLEAN, CORRUPTED, " Mary", " John", site="residual", progress=False).raw.flatten(),
            lambda: naive(lm, "residual"),
        ),
        (
            "head patching, 270 heads",
            lambda: lw.patch(lm, CLEAN, CORRUPTED, " Mary", " John", site="heads", progress=False).raw.flatten(),
            lambda: naive(lm, "heads"),
        ),
        (
            "ablation sweep, 270 heads (zero)",
            lambda: lw.ablation_sweep(tr, " Mary", " John", layers=False, progress=False).raw.flatten(),
            lambda: naive(lm, "heads", mode="zero"),
        ),
    ]
    print("| measure | batched (ours) | one forward per patch | faster by | max |diff| of scores |")
    print("|---|---|---|---|---|")
    for name, ours, loop in cases:
        t_ours, a = timed(ours, args.repeats)
        t_loop, b = timed(loop, max(1, args.repeats - 2))
        diff = float((a - b).abs().max())
        print(f"| {name} | {t_ours:.2f} s | {t_loop:.2f} s | **{t_loop / t_ours:.1f}x** | {diff:.1e} |", flush=True)
    print()
    print("| chunk budget | rows per forward | peak memory above the model (residual patching, fresh process) |")
    print("|---|---|---|")
    for budget in (16 << 20, 64 << 20, 1 << 30):  # each in its own process: RSS never shrinks back
        out = (
            subprocess.run(
                [sys.executable, __file__, "--memory", str(budget)], capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        print(out, flush=True)


def memory(budget: int) -> None:
    from llm_widgets.analysis.patching import _rows_per_chunk

    lm = lw.load_model("smollm2-135m", progress=False)
    device = next(lm.model.parameters()).device
    lm.trace(CLEAN)  # the model's own first-run allocations, not counted below
    with PeakMemory(device) as mem:
        lw.patch(lm, CLEAN, CORRUPTED, " Mary", " John", site="residual", progress=False, budget_bytes=budget)
    rows = _rows_per_chunk(lm, 14, budget)
    print(f"| {budget >> 20} MiB | {rows} | {mem.peak / 2**20:.0f} MiB |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        memory(int(sys.argv[2]))
    else:
        main()
