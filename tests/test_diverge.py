"""lw.diverge: two models (or one and its changed copy) compared token by token and layer by
layer, teacher-forced; a planted defect blamed on its layer across architectures."""

from __future__ import annotations

import copy

import pytest
import torch

import llm_widgets as lw

from .test_trace_architectures import PROMPT, build

TEXT = "It is a truth universally acknowledged, that a single man"


def _noisy(lm: lw.LanguageModel, layer: int, scale: float = 0.2) -> lw.LanguageModel:
    """A copy with noise added to one layer's MLP weights (a defect planted in one place)."""
    model = copy.deepcopy(lm.model)
    parts = lw.models.anatomy.anatomy(model, lm.facts.n_layers)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in parts.mlps[layer].parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * scale * p.std())
    return lw.LanguageModel(model, lm.tokenizer, name=f"{lm.name} with layer {layer} noisy")


def test_the_same_model_twice_parts_nowhere(tiny_gpt2):
    d = lw.diverge(tiny_gpt2, tiny_gpt2, TEXT, 5)
    assert torch.equal(d.kl, torch.zeros(5)) and d.first_split is None
    assert all(float(e.abs().max()) == 0 for e in d.errors.values()) and float(d.attention.max()) == 0
    assert d.blame == [] == d.alone and "no divergence to blame" in d.notes[0]
    assert d.a_generated == d.b_generated and "never split" in repr(d)


def test_kl_is_teacher_forced_as_a_hand_loop_computes_it(tiny_gpt2):
    b = _noisy(tiny_gpt2, 1, scale=0.5)
    d = lw.diverge(tiny_gpt2, b, TEXT, 6, blame=False)
    ids = tiny_gpt2.tokenizer(TEXT, return_tensors="pt").input_ids[0].tolist()
    seq = ids + d.a_generated
    with torch.no_grad():
        for i in range(6):
            prefix = torch.tensor([seq[: len(ids) + i]])
            pa = torch.log_softmax(tiny_gpt2.model(prefix).logits[0, -1], -1)
            pb = torch.log_softmax(b.model(prefix).logits[0, -1], -1)
            assert float((pa.exp() * (pa - pb)).sum()) == pytest.approx(float(d.kl[i]), abs=1e-5)
    split = next((i for i, (x, y) in enumerate(zip(d.a_generated, d.b_generated, strict=True)) if x != y), None)
    assert d.first_split == split  # the teacher-forced split is where the two continuations part
    table = d.to_dataframe()
    assert list(table.columns) == ["step", "a_token", "b_token_alone", "kl", "split"] and len(table) == 6


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_a_planted_defect_is_blamed_on_its_layer(arch, tiny_gpt2):
    lm = tiny_gpt2 if arch == "gpt2" else build(arch)
    prompt = TEXT if arch == "gpt2" else PROMPT
    d = lw.diverge(lm, _noisy(lm, 1, scale=1.0), prompt, 4)
    assert d.kl.sum() > 0
    assert d.blame[0][0] == 1 and d.blame[0][1] in ("mlp", "residual") and d.blame[0][2] > 0.9
    # alone: b's noisy MLP on a's inputs, put into a, causes (nearly) all of it; every other module nothing
    alone = {(layer, site): share for layer, site, share in d.alone}
    assert alone[1, "mlp"] > 0.5 and alone[1, "residual"] > 0.5 and d.alone[0][0] == 1
    assert all(share == 0 for (layer, site), share in alone.items() if layer != 1 or site == "attention")
    assert float(d.errors["residual"][0].abs().max()) == 0 < float(d.errors["residual"][1].abs().max())


def test_a_bfloat16_copy(tiny_gpt2):
    half = lw.LanguageModel(copy.deepcopy(tiny_gpt2.model).bfloat16(), tiny_gpt2.tokenizer, name="bf16")
    d = lw.diverge(tiny_gpt2, half, TEXT, 4)
    assert 0 < float(d.kl.max()) < 0.5 and d.blame and d.errors["residual"].shape[0] == 4


def test_bad_input_names_the_model_and_what_differs(tiny_gpt2):
    other = build("llama")
    with pytest.raises(lw.InputError, match=r"different tokenizers \(4096 vs 96 tokens\)"):
        lw.diverge(tiny_gpt2, other, TEXT)
    with pytest.raises(lw.WrongTypeError, match="b is str"):
        lw.diverge(tiny_gpt2, "gpt2", TEXT)
    with pytest.raises(lw.InputError, match="sites must be some of residual, attention, mlp"):
        lw.diverge(tiny_gpt2, tiny_gpt2, TEXT, sites=("heads",))
    with pytest.raises(lw.InputError, match="longer than the context of tiny-gpt2"):
        lw.diverge(tiny_gpt2, tiny_gpt2, list(range(1, 510)), 8)
    with pytest.raises(lw.InputError, match="max_new_tokens must be an integer >= 1"):
        lw.diverge(tiny_gpt2, tiny_gpt2, TEXT, 0)
    with torch.device("meta"):
        meta = copy.deepcopy(tiny_gpt2.model).to("meta")
    with pytest.raises(lw.InputError, match="has weights on the meta device"):  # (two devices: CUDA tests)
        lw.diverge(tiny_gpt2, lw.LanguageModel(meta, tiny_gpt2.tokenizer, name="on-meta"), TEXT)


def test_the_view_shows_the_layers_the_split_and_the_blame(tiny_gpt2):
    d = lw.diverge(tiny_gpt2, _noisy(tiny_gpt2, 1, scale=0.5), TEXT, 5)
    attention = lw.AttentionView(tiny_gpt2.trace(TEXT, max_new_tokens=5))
    view = lw.DivergenceView(d, view=attention)
    assert view.kind == "divergence" and len(view.values) == 4 and len(view.column_labels) == len(d.tokens) - 1
    assert view.summary[2].startswith(("first split at generated token", "the greedy choices never split"))
    assert view.strip_values == d.kl.tolist() and view.strip_labels == d.tokens[d.n_prompt :]
    assert view.strip_mark == (-1 if d.first_split is None else d.first_split)
    assert view.bar_labels[0].startswith("layer 1") and view.bar_values == [share for *_, share in d.blame[:10]]
    notes = view.figure().notes  # the strip and the bars in words, in the exports
    assert notes[3].startswith("KL(a||b) per generated token:") and notes[4].startswith("blame: layer 1")
    view.selected = [2, 3]
    assert view.detail[0].startswith("layer 2, position 3") and "residual" in view.detail[0]
    assert attention.layer == 2 and attention.head == int(d.attention[2].argmax())
    assert view.request({"what": "export", "format": "svg"}, [])[1][0].startswith(b"<svg")
    with pytest.raises(lw.WrongTypeError, match="DivergenceView takes the result of lw.diverge"):
        lw.DivergenceView("x")


def test_models_of_different_depth_compare_each_layers_lens_with_the_others_output():
    import transformers

    from .test_trace_architectures import CONFIGS, build_from

    config = CONFIGS["llama"]()
    config.num_hidden_layers += 1
    deeper = build_from(config, transformers.AutoModelForCausalLM, "deeper llama")  # one more layer
    shallow = build("llama")
    d = lw.diverge(deeper, shallow, PROMPT, 3)
    assert d.errors == {} and d.blame == [] and "differ in shape" in d.notes[0]
    assert len(d.lens_kl["a"]) == deeper.facts.n_layers and len(d.lens_kl["b"]) == shallow.facts.n_layers
    assert all(v >= 0 for v in d.lens_kl["a"] + d.lens_kl["b"])
