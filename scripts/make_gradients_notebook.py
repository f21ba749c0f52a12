"""Writes notebooks/02_gradients.ipynb (committed without outputs, run by nbval)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# Gradients: why did the model say X, and is my training healthy\n\n"
        "Two questions, one notebook, all offline on a CPU: which input tokens drove an output (attribution of a "
        "traced run on **SmolLM2-135M**), and what the gradients do while a model trains (the `GradientMonitor` on "
        "the bundled **tiny-gpt2**, with a learning rate that makes them explode, and steering that fixes it)."
    ),
    new_code_cell("import llm_widgets as lw\n\nmodel = lw.load_model(\"smollm2-135m\")\n"
                  "tr = model.trace(\"The capital of France is\", max_new_tokens=3)\ntr.output_text"),
    new_markdown_cell("## Why Paris, not London\n\n`trace.attribute(target, contrast=...)` scores each input token for "
                      "logit(target) - logit(contrast): positive scores pushed towards \" Paris\" rather than "
                      "\" London\". The default method is gradient x input (Captum); the model's parameters are "
                      "frozen for it and restored after."),
    new_code_cell(
        "why = tr.attribute(\" Paris\", contrast=\" London\")\n"
        "print(why)\n"
        "print(f\"p(Paris) {why.p_target:.2f}, p(London) {why.p_contrast:.3f}\")\n"
        "why.top(5)"
    ),
    new_markdown_cell("Integrated gradients (64 steps from an all-zero embedding) satisfy completeness: the scores "
                      "add up to the change in the score from the baseline; `delta` is how far off the numerical "
                      "integral is. Occlusion removes one token at a time instead."),
    new_code_cell(
        "for method in (\"integrated_gradients\", \"occlusion\"):\n"
        "    a = tr.attribute(\" Paris\", contrast=\" London\", method=method)\n"
        "    print(f\"{method:>22}:\", [(t, round(s, 2)) for _, t, s in a.top(3)],\n"
        "          f\"(delta {a.delta:.3g})\" if a.delta is not None else \"\")"
    ),
    new_markdown_cell("## Which heads mattered\n\n`method=\"attention_x_grad\"` multiplies each attention weight by "
                      "the score's gradient with respect to it: summed per head, a layer x head importance grid. "
                      "Open the strongest head in the attention view."),
    new_code_cell(
        "heads = tr.attribute(\" Paris\", contrast=\" London\", method=\"attention_x_grad\")\n"
        "importance = heads.head_importance\n"
        "layer, head = divmod(int(importance.abs().argmax()), importance.shape[1])\n"
        "print(f\"strongest head: layer {layer}, head {head} ({importance[layer, head]:+.3f})\")\n"
        "lw.AttentionView(tr, layer=layer, head=head)"
    ),
    new_markdown_cell("## Training that goes wrong\n\nFine-tune tiny-gpt2 on its own model card with plain SGD "
                      "(momentum 0.9) and a learning rate of 0.3: too high. The monitor reads every layer's gradient "
                      "norm before the optimizer step (it hooks the optimizer: `with monitor:`), the update size "
                      "after it, histograms every 25 steps, and raises alerts when a layer's norm jumps far above "
                      "its own recent median or over an absolute threshold. Its charts update while the cell runs."),
    new_code_cell(
        "import copy\n\nimport torch\n\n"
        "tiny = lw.load_model(\"tiny-gpt2\")\n"
        "text = (lw.models.loading.TINY_GPT2_DIR / \"MODEL_CARD.md\").read_text()\n"
        "ids = tiny.tokenizer(text * 3, return_tensors=\"pt\", verbose=False)[\"input_ids\"][0]  # longer than 512: we slice it\n\n"
        "def train(monitor, model, optimizer, steps=150, seed=0):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    with monitor:\n"
        "        for _ in range(steps):\n"
        "            starts = torch.randint(0, len(ids) - 65, (8,), generator=g)\n"
        "            batch = torch.stack([ids[s:s + 64] for s in starts])\n"
        "            loss = model(input_ids=batch, labels=batch).loss\n"
        "            optimizer.zero_grad()\n"
        "            loss.backward()\n"
        "            optimizer.step()  # the monitor reads (and steers) the gradients in the optimizer's pre-hook\n"
        "            monitor.log(loss=loss)\n\n"
        "def fresh():\n"
        "    model = copy.deepcopy(tiny.model).float().train().requires_grad_(True)\n"
        "    return model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)"
    ),
    new_code_cell(
        "torch.manual_seed(0)\n"
        "model_a, opt_a = fresh()\n"
        "monitor = lw.GradientMonitor(model_a, optimizer=opt_a, histograms_every=25, exploding=100, warn=False)\n"
        "monitor.widget"
    ),
    new_code_cell(
        "train(monitor, model_a, opt_a)\n"
        "first = monitor.alerts[0]\n"
        "print(len(monitor.alerts), \"alerts; the first:\", first[\"message\"])\n"
        "print(\"loss: first\", round(monitor.steps[0][\"loss\"], 2), \"last\", f\"{monitor.steps[-1]['loss']:.3g}\")\n"
        "assert monitor.steps[-1][\"loss\"] > 10 * monitor.steps[0][\"loss\"]  # it diverged"
    ),
    new_code_cell("frame = monitor.to_dataframe()\nframe[frame.step.isin([1, 10, 20])].pivot(index=\"step\", "
                  "columns=\"group\", values=\"grad_norm\").round(2)"),
    new_markdown_cell("## Steering fixes it\n\nThe same run, with every group's gradient clipped to norm 0.5 before "
                      "the optimizer step (`monitor.steer(pattern, scale=..., clip=...)`; the sliders under "
                      "\"steer gradients\" in the widget do the same per group, between cells or live when the loop "
                      "runs in a thread). Each change is logged with the step it took effect."),
    new_code_cell(
        "torch.manual_seed(0)\n"
        "model_b, opt_b = fresh()\n"
        "steered = lw.GradientMonitor(model_b, optimizer=opt_b, histograms_every=25, exploding=100, warn=False)\n"
        "steered.steer(\".*\", clip=0.5)\n"
        "steered.widget"
    ),
    new_code_cell(
        "train(steered, model_b, opt_b)\n"
        "print(\"loss: first\", round(steered.steps[0][\"loss\"], 2), \"last\", round(steered.steps[-1][\"loss\"], 2))\n"
        "print(\"steering log:\", steered.steering_log)\n"
        "assert steered.steps[-1][\"loss\"] < steered.steps[0][\"loss\"] and not steered.alerts"
    ),
    new_markdown_cell("Export the charts: `.html` is standalone bokeh (resources inline, no network), `.png` and "
                      "`.svg` are drawn with matplotlib from the same data."),
    new_code_cell(
        "from pathlib import Path\n\n"
        "Path(\"figures\").mkdir(exist_ok=True)\n"
        "for name in (\"monitor.png\", \"monitor.svg\", \"monitor.html\"):\n"
        "    print(steered.widget.save(Path(\"figures\") / name))"
    ),
]
nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
path = Path(__file__).resolve().parent.parent / "notebooks" / "02_gradients.ipynb"
nbformat.write(nb, path)
print(path)
