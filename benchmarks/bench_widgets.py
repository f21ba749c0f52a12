"""AttentionView and AttentionEditor, measured side by side.

1. Bytes on the wire for an AttentionView's first paint, against the JSON lists
of every head that bertviz-style viewers write into the page.

First paint = the widget state (tokens and selection, as JSON) + the selected
head's overview (max-pooled to at most 512 x 512, uint8 with a float32 scale per
row) + the layers x heads grid (24 x 24 per head). The JSON figure is measured
on one head's full T x T matrix (json.dumps of its list) and multiplied by the
number of heads, which is what a viewer that embeds every head sends.

2. Slider release to new output: the editor's regenerate (trace with the edits,
the new state serialised for the front end) against a plain `generate` of the
same number of tokens, alternating, median of 5 (Python side).

3. With --browser: JupyterLab in chromium, SmolLM2. The heatmap's draw time
(decode, colour, paint; the canvas records it) at 1024 and 4096 tokens, the
time from picking a head to its heatmap on screen, and the time from the
slider's release to the new output on screen vs a plain generate in the kernel.

    .venv/bin/python benchmarks/bench_widgets.py [--lengths 512 1024 4096] [--browser]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import llm_widgets as lw

sys.path.insert(0, str(Path(__file__).parent))
from bench_trace import plain_generate  # noqa: E402  (the same baseline as the trace's)

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. "
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--browser", action="store_true", help="also measure in chromium (JupyterLab)")
    args = parser.parse_args()
    model = lw.load_model(args.model, progress=False)
    ids = model.tokenizer(TEXT * 400)["input_ids"]
    print(f"{args.model}, first paint of lw.AttentionView; JSON = one head's T x T list, times every head\n")
    print(
        "| tokens | state (JSON) | overview | grid | first paint in all | JSON of all heads | smaller by | "
        "compute time |"
    )
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
        print(
            f"| {length} | {state / 1024:.0f} KiB | {sum(map(len, overview)) / 2**20:.2f} MiB "
            f"| {sum(map(len, grid)) / 2**20:.2f} MiB | **{ours / 2**20:.2f} MiB** | {json_bytes / 2**30:.1f} GiB "
            f"| **{json_bytes / ours:,.0f}x** | {elapsed:.1f} s |",
            flush=True,
        )


EDITOR_PROMPT = "Write the word 'cat' or the word 'dog'. The answer is:"
DOG = (7, 12)  # the tokens of "the word 'dog'"
NEW_TOKENS = 20


def slider(model_name: str, repeats: int = 5) -> None:
    model = lw.load_model(model_name, progress=False)
    editor = lw.AttentionEditor(model, EDITOR_PROMPT, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    ids = torch.tensor([editor.unedited.input_ids[: editor.unedited.n_prompt].tolist()])
    ours, plain = [], []
    factors = [10.0, 0.0, 3.0, 0.3, 7.0, 0.5]
    for i in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        editor.edit_specs = [lw.ScaleAttention(factors[i % len(factors)], keys=DOG).to_dict()]
        state = json.dumps({k: v for k, v in editor.get_state().items() if not k.startswith("_")})
        t_ours = time.perf_counter() - start
        assert not editor.error and len(editor.new_tokens) == NEW_TOKENS and state
        start = time.perf_counter()
        plain_generate(model, ids, NEW_TOKENS)
        t_plain = time.perf_counter() - start
        if i:
            ours.append(t_ours)
            plain.append(t_plain)
    o, p = statistics.median(ours), statistics.median(plain)
    print(
        f"\n{model_name}, slider release to new output ({NEW_TOKENS} new tokens, edit on all layers and heads, "
        f"Python side, median of {repeats})\n"
    )
    print("| regenerate in the editor | plain generate | ratio |\n|---|---|---|")
    print(f"| {o * 1000:.0f} ms | {p * 1000:.0f} ms | **{o / p:.2f}x** |", flush=True)


BROWSER_CELLS = [
    "import llm_widgets as lw, statistics, time, torch\n"
    "model = lw.load_model({model!r}, progress=False)\n"
    "ids = model.tokenizer({text!r} * 400)['input_ids']",
    "lw.AttentionView(model.trace(ids[:1024]))",
    "lw.AttentionView(model.trace(ids[:4096]))",
    "editor = lw.AttentionEditor(model, {prompt!r}, max_new_tokens={n}, min_new_tokens={n})\neditor",
    "p = torch.tensor([editor.unedited.input_ids[:editor.unedited.n_prompt].tolist()])\n"
    "def plain():\n"
    "    start = time.perf_counter()\n"
    "    model.model.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens={n}, min_new_tokens={n},\n"
    "                         do_sample=False, pad_token_id=model.tokenizer.eos_token_id)\n"
    "    return time.perf_counter() - start\n"
    "plain()\n"
    "print('PLAIN_MS', 1000 * statistics.median(plain() for _ in range({repeats})))",
    "def steer(factor):\n"
    "    start = time.perf_counter()\n"
    "    editor.edits = [lw.ScaleAttention(factor, keys=(7, 12))]\n"
    "    return time.perf_counter() - start\n"
    "print('EDITOR_MS', 1000 * statistics.median(steer(f) for f in (10.0, 0.2, 9.0, 0.3, 8.0)))\n"
    "editor.reset()",
]


def browser(model_name: str, repeats: int = 5) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.browser.conftest import chromium, jupyter_app, open_notebook, run_all_cells

    root = Path(tempfile.mkdtemp(prefix="bench-widgets-"))
    (root / "notebooks").mkdir()
    cells = [
        new_code_cell(c.format(model=model_name, text=TEXT, prompt=EDITOR_PROMPT, n=NEW_TOKENS, repeats=repeats))
        for c in BROWSER_CELLS
    ]
    nbformat.write(
        new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
        root / "notebooks" / "bench.ipynb",
    )
    try:
        with jupyter_app(root, "jupyterlab") as server, chromium() as chrome:
            page = chrome.new_page(viewport={"width": 1280, "height": 1000})
            open_notebook(page, server, "bench.ipynb")
            run_all_cells(page)
            out = page.locator(".jp-OutputArea-output", has_text="PLAIN_MS")
            out.wait_for(timeout=600_000)
            plain_ms = float(out.inner_text().split()[-1])
            out = page.locator(".jp-OutputArea-output", has_text="EDITOR_MS")
            out.wait_for(timeout=600_000)
            print(
                f"\nregenerate set from Python in the kernel (no browser in the loop): "
                f"{float(out.inner_text().split()[-1]):.0f} ms"
            )
            views = page.locator(".lw-attn-view")
            print(f"\n{model_name} in chromium (JupyterLab): heatmap draw and head switch, median of {repeats}\n")
            print("| tokens | draw (decode + colour + paint) | pick a head to heatmap on screen |\n|---|---|---|")
            for i, length in enumerate((1024, 4096)):
                view = views.nth(i)
                canvas = view.locator("canvas.lw-attn-heatmap[data-drawn]")
                canvas.wait_for(timeout=300_000)
                draws, switches = [], []
                for head in range(1, repeats + 1):
                    page.evaluate("c => { delete c.dataset.drawn; }", canvas.element_handle())
                    start = time.perf_counter()
                    view.locator("select").nth(1).select_option(str(head))
                    view.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
                    switches.append(time.perf_counter() - start)
                    draws.append(float(view.locator("canvas.lw-attn-heatmap").get_attribute("data-draw-ms")))
                print(
                    f"| {length} | {statistics.median(draws):.1f} ms | {1000 * statistics.median(switches):.0f} ms |",
                    flush=True,
                )
            editor = page.locator(".lw-editor")
            after = editor.locator(".lw-ed-after")
            chips = editor.locator(".lw-tok")
            chips.nth(DOG[0]).hover()
            page.mouse.down()
            chips.nth(DOG[1] - 1).hover()
            page.mouse.up()
            box = editor.locator("input.lw-ed-factor").bounding_box()
            times, kernel = [], []
            for i in range(repeats):
                # as a user would: the previous run's maps are on screen before the slider moves again
                editor.locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
                editor.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
                runs = int(after.get_attribute("data-runs"))
                x = box["x"] + box["width"] * (0.97 if i % 2 == 0 else 0.2)  # factor about 9, then about 0.2
                page.mouse.move(x, box["y"] + box["height"] / 2)
                start = time.perf_counter()
                page.mouse.down()
                page.mouse.up()
                page.wait_for_function(
                    f"el => Number(el.dataset.runs) > {runs}", arg=after.element_handle(), timeout=120_000
                )
                times.append(time.perf_counter() - start)
                kernel.append(1000 * float(after.get_attribute("data-run-seconds")))
            ours = 1000 * statistics.median(times)
            print(
                f"\nslider release (mouse) to new output on screen, {NEW_TOKENS} new tokens, vs plain generate "
                f"in the kernel\n"
            )
            print("| release to output on screen | of which the kernel's regenerate | plain generate | ratio |")
            print("|---|---|---|---|")
            print(
                f"| {ours:.0f} ms | {statistics.median(kernel):.0f} ms | {plain_ms:.0f} ms | "
                f"**{ours / plain_ms:.2f}x** |",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
    slider("smollm2-135m")
    if "--browser" in sys.argv:
        browser("smollm2-135m")
