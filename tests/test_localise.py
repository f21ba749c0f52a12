"""Logit lens, activation patching, ablation sweeps and run comparison: exact where exactness
can be stated, across the architecture matrix, and on the bundled SmolLM2."""

from __future__ import annotations

import pytest
import torch

import llm_widgets as lw
from llm_widgets.analysis.patching import _site_modules, capture_site, kept_bytes, row_bytes, run_patched
from llm_widgets.models.anatomy import anatomy
from tests.test_trace_architectures import CONFIGS, MASKED, PROMPT, build

CAUSAL = sorted(set(CONFIGS) - MASKED)
CLEAN = PROMPT
CORRUPTED = PROMPT[:5] + [88] + PROMPT[6:]  # one token swapped
TARGET, CONTRAST = 7, 11


def _last_logits(lm, ids, **kwargs):
    return lm.trace(ids, keep_logits=True, **kwargs).logits[-1]


@pytest.fixture(scope="module", params=CAUSAL)
def causal(request):
    return build(request.param)


def test_lens_at_the_last_layer_is_the_models_prediction(causal):
    tr = causal.trace(PROMPT, keep_logits=True)
    lens = tr.logit_lens(k=4, target=TARGET)
    probs = torch.softmax(tr.logits.float(), dim=-1)
    torch.testing.assert_close(lens.top_probs[-1], probs.topk(4, dim=-1).values, atol=1e-5, rtol=0)
    assert torch.equal(lens.top_ids[-1], probs.topk(4, dim=-1).indices)
    torch.testing.assert_close(lens.target_probs[-1], probs[:, TARGET], atol=1e-5, rtol=0)
    assert lens.top_ids.shape == (causal.facts.n_layers, len(PROMPT), 4)
    assert (lens.target_ranks[-1] == (probs > probs[:, TARGET : TARGET + 1]).sum(-1)).all()


def test_lens_follows_the_traces_edits():
    lm = build("llama")
    edits = [lw.ScaleAttention(8.0, keys=(0, 3))]
    tr = lm.trace(PROMPT, keep_logits=True, edits=edits)
    lens = tr.logit_lens(k=1)
    assert torch.equal(lens.top_ids[-1, :, 0], tr.logits.argmax(-1))


def test_patching_clean_into_clean_changes_nothing(causal):
    device_ids = torch.tensor([CLEAN])
    parts = anatomy(causal.model, causal.facts.n_layers)
    with torch.no_grad():
        for site in ("residual", "attention", "mlp", "heads"):
            source, clean_logits = capture_site(causal, device_ids, site, parts)
            patches = [(layer, 3, None) for layer in range(causal.facts.n_layers)]
            if site == "heads":
                patches = [(layer, 1, None) for layer in range(causal.facts.n_layers)]
            for row in run_patched(causal, device_ids, site, patches, source):
                torch.testing.assert_close(row, clean_logits[0], atol=1e-5, rtol=0)
    result = lw.patch(causal, CLEAN, CLEAN, TARGET, CONTRAST, progress=False)
    assert result.clean_score == result.corrupted_score
    torch.testing.assert_close(result.raw, torch.full_like(result.raw, result.clean_score), atol=1e-5, rtol=0)


def test_patching_a_whole_layer_gives_the_source_run(causal):
    """Every position of layer l's residual from the clean run: what follows is the clean run."""
    clean_logits = _last_logits(causal, CLEAN)
    parts = anatomy(causal.model, causal.facts.n_layers)
    with torch.no_grad():
        source, _ = capture_site(causal, torch.tensor([CLEAN]), "residual", parts)
        rows = run_patched(
            causal,
            torch.tensor([CORRUPTED]),
            "residual",
            [(layer, slice(None), None) for layer in range(causal.facts.n_layers)],
            source,
        )
    for row in rows:
        torch.testing.assert_close(row, clean_logits, atol=1e-4, rtol=0)


def test_a_head_patched_from_zeros_is_the_zero_ablation(causal):
    layer, head = causal.facts.n_layers - 1, 1
    ablated = _last_logits(causal, PROMPT, edits=[lw.AblateHead(layer, head)])
    parts = anatomy(causal.model, causal.facts.n_layers)
    with torch.no_grad():
        source, _ = capture_site(causal, torch.tensor([PROMPT]), "heads", parts)
        zeros = [torch.zeros_like(s) for s in source]
        patched = run_patched(causal, torch.tensor([PROMPT]), "heads", [(layer, head, None)], zeros)[0]
    torch.testing.assert_close(patched, ablated, atol=1e-5, rtol=0)


def test_patching_is_the_same_on_sdpa_and_eager():
    results = {}
    for attn in ("sdpa", "eager"):
        lm = build("llama", attn=attn)
        results[attn] = [
            lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, site=site, progress=False).effect
            for site in ("residual", "heads")
        ]
    for a, b in zip(results["sdpa"], results["eager"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_batched_patching_equals_one_forward_per_patch():
    lm = build("qwen2")  # GQA: 4 query heads over 2 key/value heads
    n = len(CLEAN)
    one_row = kept_bytes(lm, n) + row_bytes(lm, n)  # a patched row at a time (and its reference)
    result = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, site="heads", progress=False, budget_bytes=one_row)
    batched = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, site="heads", progress=False)
    torch.testing.assert_close(result.raw, batched.raw, atol=1e-5, rtol=0)
    assert result.effect.shape == (2, 4)
    per_position = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, site="heads", per_position=True, progress=False)
    assert per_position.effect.shape == (2, 4, len(CLEAN))


def test_patching_effects_at_the_ends():
    """Patching the last layer's residual at the last position gives the clean answer exactly (1);
    a position before the swapped token changes nothing (0)."""
    lm = build("llama")
    result = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, progress=False)
    assert result.effect[-1, -1] == pytest.approx(1.0, abs=1e-4)
    assert result.effect[:, :5].abs().max() < 1e-4
    assert result.axes == ("layer", "position") and result.effect.shape == (2, len(CLEAN))


def test_sweep_ranks_heads_and_layers(causal):
    tr = causal.trace(PROMPT)
    sweep = lw.ablation_sweep(tr, TARGET, CONTRAST, progress=False)
    assert sweep.effect.shape == (causal.facts.n_layers, causal.facts.n_heads)
    layer, head, change = sweep.top_heads(1)[0]
    ablated = _last_logits(causal, PROMPT, edits=[lw.AblateHead(layer, head)])
    assert float(ablated[TARGET] - ablated[CONTRAST]) - sweep.clean_score == pytest.approx(change, abs=1e-4)
    assert sweep.attention.shape == (causal.facts.n_layers,)
    mean = lw.ablation_sweep(tr, TARGET, CONTRAST, method="mean", layers=False, progress=False)
    ablated = _last_logits(causal, PROMPT, edits=[lw.AblateHead(0, 0, mode="mean")])
    assert float(ablated[TARGET] - ablated[CONTRAST]) - mean.clean_score == pytest.approx(
        float(mean.effect[0, 0]), abs=1e-4
    )


def test_compare_before_and_after_an_edit():
    lm = build("llama")
    a = lm.trace(PROMPT, max_new_tokens=3)
    b = lm.trace(PROMPT, max_new_tokens=3, edits=[lw.ScaleAttention(20.0, keys=(0, 2), layers=[1], heads=[2])])
    c = lw.compare(a, b)
    assert c.positions >= len(PROMPT)
    assert c.attention_max[0].max() == 0  # layer 0 is untouched by an edit on layer 1
    assert c.attention_max[1, 2] > 0.01 and c.top_heads(1)[0][:2] == (1, 2)
    assert c.steps[0]["p_a"] == pytest.approx(a.chosen_probability(0))
    same = lw.compare(a, a)
    assert same.attention_max.max() == 0 and same.first_diverging_step is None


def test_bad_input_is_named():
    lm = build("llama")
    with pytest.raises(ValueError, match="same number of tokens"):
        lw.patch(lm, CLEAN, CLEAN[:-1], TARGET, progress=False)
    with pytest.raises(ValueError, match="unknown site 'neurons'"):
        lw.patch(lm, CLEAN, CORRUPTED, TARGET, site="neurons")
    with pytest.raises(ValueError, match="same token"):
        lw.patch(lm, CLEAN, CORRUPTED, TARGET, TARGET)
    parts = anatomy(lm.model, 2)
    with pytest.raises(ValueError, match=r"has no mlp module in layer\(s\) \[0, 1\]"):
        _site_modules(parts.__class__(**{**parts.__dict__, "mlps": (None, None)}), "mlp", "tiny")
    with pytest.raises(ValueError, match="masked model"):
        lw.patch(build("bert"), CLEAN, CORRUPTED, TARGET)
    with pytest.raises(TypeError, match="compare takes two Traces"):
        lw.compare(lm.trace(PROMPT), "x")


def test_smollm2_names_the_indirect_object(smollm2):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    tr = smollm2.trace(clean)
    assert tr.top_k(0, 1)[0][0] == " Mary"
    lens = tr.logit_lens(target=" Mary")
    assert lens.target_ranks[-1, -1] == 0 and lens.target_ranks[0, -1] > 100  # found late, not early
    result = lw.patch(smollm2, clean, corrupted, " Mary", " John", progress=False)
    assert result.clean_score > 3 and result.corrupted_score < -3
    # the swapped name's position carries it early; the last position from the late layers on
    assert result.effect[0, 9] == pytest.approx(1.0, abs=0.05) and result.effect[-1, -1] == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="using its first token"):
        multi = lw.patch(smollm2, clean, corrupted, " Mary Ann", " John", site="heads", progress=False)
    assert multi.notes and multi.effect.shape == (30, 9)


# --- the views ---


def test_lens_view_windows_and_details(tiny_gpt2, tmp_path):
    tr = tiny_gpt2.trace(
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife, and so",
        max_new_tokens=2,
    )
    view = lw.LensView(tr, target=" the")
    n = len(tr)
    assert n > 24 and view.window_total == n and view.window_start == n - 24
    assert len(view.values) == 4 and len(view.values[0]) == 24 and len(view.words[0]) == 24
    assert view.value_name == "p(' the')"
    view.window_start = 0  # the front end's "earlier" button
    assert view.column_labels[0].startswith("0:") and len(view.values[0]) == 24
    lens = tr.logit_lens(k=10, target=" the", positions=list(range(24)))
    assert view.words[3][5] == lens.top_tokens[3][5][0]
    view.selected = [3, 5]
    assert view.detail[0].startswith("layer 3") and len(view.detail) == 12
    for ext in ("png", "svg", "html"):
        assert view.save(tmp_path / f"lens.{ext}").stat().st_size > 1000


def test_patching_and_sweep_views_open_and_ablate_heads(tiny_gpt2, tmp_path):
    prompt = "It is a truth universally acknowledged"
    tr = tiny_gpt2.trace(prompt, max_new_tokens=4)
    attention = lw.AttentionView(tr)
    result = lw.patch(tiny_gpt2, prompt, "It is a lie universally acknowledged", " that", site="heads", progress=False)
    view = lw.PatchingView(result, view=attention)
    assert view.kind == "patching" and view.column_labels[0] == "head 0" and len(view.values) == 4
    view.selected = [2, 5]
    assert (attention.layer, attention.head) == (2, 5)
    editor = lw.AttentionEditor(tiny_gpt2, prompt, max_new_tokens=4)
    sweep = lw.PatchingView(lw.ablation_sweep(tr, progress=False), editor=editor)
    assert sweep.kind == "sweep" and sweep.column_labels[-2:] == ["attention", "mlp"]
    sweep.selected = [1, 3]
    assert editor.edits == [lw.AblateHead(1, 3)] and "ablated layer 1 head 3" in sweep.detail[0]
    residual = lw.PatchingView(
        lw.patch(tiny_gpt2, prompt, "It is a lie universally acknowledged", " that", progress=False)
    )
    assert residual.column_labels[3].startswith("3:") and residual.scale == "diverging"
    for ext in ("png", "svg", "html"):
        assert sweep.save(tmp_path / f"sweep.{ext}").stat().st_size > 1000


def test_compare_view_of_an_editor(tiny_gpt2):
    editor = lw.AttentionEditor(tiny_gpt2, "Call me Ishmael.", max_new_tokens=4)
    editor.edits = [lw.ScaleAttention(0.0, keys=(0, 2))]
    view = lw.CompareView(editor)
    assert view.kind == "compare" and view.summary[0].startswith("a: ")
    assert len(view.values) == 4 and max(max(r) for r in view.values) > 0
    view.selected = [1, 2]
    assert view.detail[0].startswith("layer 1 head 2")


def test_part_of_the_map_patched_equals_the_same_cells_of_the_whole():
    """`layers` and `at` patch part of the map (NaN elsewhere); positions before the prompts' first
    difference are 0 without a run, as a run gives them."""
    lm = build("llama")
    whole = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, progress=False)
    part = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, layers=[1], at=(4, len(CLEAN)), progress=False)
    torch.testing.assert_close(part.effect[1, 4:], whole.effect[1, 4:], atol=1e-4, rtol=0)
    assert part.effect[0].isnan().all() and part.effect[1, :4].isnan().all()
    assert whole.effect[:, :5].eq(0).all()  # the swapped token is at position 5
    assert part.top(3)[0][0][0] == 1
    heads = lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, site="heads", per_position=True, at=[5, 7], progress=False)
    assert heads.effect[:, :, [5, 7]].isfinite().all() and heads.effect[:, :, 6].isnan().all()
    with pytest.raises(lw.InputError, match="at"):
        lw.patch(lm, CLEAN, CORRUPTED, TARGET, CONTRAST, at=(3, 99), progress=False)
