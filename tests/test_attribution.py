"""Attribution of a traced output: against autograd, completeness, contrast, and nothing changed after."""

from __future__ import annotations

import pytest
import torch

import llm_widgets as lw

from .test_trace_architectures import CONFIGS, PROMPT, build

TEXT = "It was a truth universally acknowledged, that a single man"


@pytest.fixture(scope="module")
def trace(tiny_gpt2):
    return tiny_gpt2.trace(TEXT, max_new_tokens=4)


def _model_state(model):
    return (
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        model.training,
        model.config._attn_implementation,
        [p.detach().clone() for p in list(model.parameters())[:3]],
    )


def _direct_grad_x_input(lm, ids, target, contrast=None):
    """grad x input by plain autograd: the reference."""
    model = lm.model
    embeds = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits[0, -1].float()
    score = torch.log_softmax(logits, -1)[target] if contrast is None else logits[target] - logits[contrast]
    (grad,) = torch.autograd.grad(score, embeds)
    return (grad * embeds)[0].sum(-1).detach()


def test_grad_x_input_matches_autograd(trace, tiny_gpt2):
    before = _model_state(tiny_gpt2.model)
    attr = trace.attribute(" the")
    target = tiny_gpt2.tokenizer.encode(" the")[0]
    expected = _direct_grad_x_input(tiny_gpt2, trace.input_ids[: trace.n_prompt], target)
    torch.testing.assert_close(attr.scores, expected, atol=1e-5, rtol=1e-5)
    assert attr.tokens == trace.tokens[: trace.n_prompt] and attr.target == " the" and attr.step == 0
    assert attr.p_target == pytest.approx(trace.probability(" the"), rel=1e-4)
    after = _model_state(tiny_gpt2.model)
    assert before[:4] == after[:4] and all(torch.equal(a, b) for a, b in zip(before[4], after[4]))


def test_default_target_is_the_generated_token_at_each_step(trace):
    for step in (0, 2):
        attr = trace.attribute(step=step)
        assert attr.target_id == trace.generated_ids[step]
        assert len(attr.scores) == trace.n_prompt + step
        assert attr.p_target == pytest.approx(trace.chosen_probability(step), rel=1e-3)
    with pytest.raises(ValueError, match="step 9 is out of range"):
        trace.attribute(step=9)


def test_contrast_is_the_difference_of_the_two_targets(trace, tiny_gpt2):
    why = trace.attribute(" the", contrast=" a")
    the, a = trace.attribute(" the"), trace.attribute(" a")
    torch.testing.assert_close(why.scores, the.scores - a.scores, atol=1e-5, rtol=1e-4)
    target, contrast = (tiny_gpt2.tokenizer.encode(t)[0] for t in (" the", " a"))
    torch.testing.assert_close(
        why.scores,
        _direct_grad_x_input(tiny_gpt2, trace.input_ids[: trace.n_prompt], target, contrast),
        atol=1e-5,
        rtol=1e-5,
    )
    assert why.quantity == "logit(' the') - logit(' a')" and why.p_contrast is not None


def test_integrated_gradients_are_complete(trace):
    attr = trace.attribute(" the", method="integrated_gradients", n_steps=64)
    baseline_gap = attr.scores.sum().item()
    assert attr.delta is not None
    # completeness: the scores add up to f(x) - f(baseline), within 5%
    assert abs(attr.delta) <= 0.05 * abs(baseline_gap - attr.delta) + 1e-4


def test_integrated_gradients_from_the_eos_embedding(trace, tiny_gpt2):
    attr = trace.attribute(" the", method="integrated_gradients", n_steps=64, baseline="eos")
    assert abs(attr.delta) <= 0.05 * abs(attr.scores.sum().item() - attr.delta) + 1e-4
    occluded = trace.attribute(" the", method="occlusion", baseline="eos")
    assert occluded.scores.shape == attr.scores.shape and not torch.equal(
        occluded.scores, trace.attribute(" the", method="occlusion").scores
    )
    with pytest.raises(ValueError, match="unknown baseline 'mean'"):
        trace.attribute(method="integrated_gradients", baseline="mean")


def test_attention_x_grad_gives_head_importance_and_restores_sdpa(trace, tiny_gpt2):
    attr = trace.attribute(method="attention_x_grad")
    assert attr.head_importance.shape == (4, 8) and torch.isfinite(attr.head_importance).all()
    assert attr.scores.shape == (trace.n_prompt,) and attr.scores.abs().sum() > 0
    assert tiny_gpt2.model.config._attn_implementation == "sdpa"
    # the per-head sums and the per-token sums are two views of the same contributions
    assert attr.head_importance.sum().item() == pytest.approx(attr.scores.sum().item(), rel=1e-3, abs=1e-5)


def test_occlusion_scores_each_token_by_removing_it(trace, tiny_gpt2):
    attr = trace.attribute(" the", method="occlusion")
    model = tiny_gpt2.model
    ids = trace.input_ids[: trace.n_prompt]
    embeds = model.get_input_embeddings()(ids[None]).detach()
    target = attr.target_id

    def f(x):
        with torch.no_grad():
            return torch.log_softmax(model(inputs_embeds=x, use_cache=False).logits[0, -1], -1)[target].item()

    hidden = embeds.clone()
    hidden[0, 3] = 0
    assert attr.scores[3].item() == pytest.approx((f(embeds) - f(hidden)), rel=1e-3, abs=1e-5)


def test_bad_targets_are_handled_clearly(trace):
    with pytest.warns(UserWarning, match="using its first token"):
        attr = trace.attribute(" universally acknowledged")
    assert attr.notes and attr.target == trace.model.tokenizer.decode(
        [trace.model.tokenizer.encode(" universally acknowledged")[0]]
    )
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        trace.attribute(method="magic")
    with pytest.raises(ValueError, match="same token"):
        trace.attribute(" the", contrast=" the")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trace.attribute(10**7)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt2", "bert"])
def test_every_method_runs_on_each_architecture(arch):
    lm = build(arch, "eager" if arch == "gemma2" else "sdpa")
    if arch == "bert":  # a masked model: attribution of what it predicts at the mask
        with pytest.raises(ValueError, match="put its mask token"):
            lm.trace(PROMPT).attribute()
        return
    tr = lm.trace(PROMPT, max_new_tokens=2)
    before = _model_state(lm.model)
    for method in ("grad_x_input", "attention_x_grad", "occlusion"):
        attr = tr.attribute(method=method, step=1)
        assert attr.scores.shape == (tr.n_prompt + 1,) and torch.isfinite(attr.scores).all()
    after = _model_state(lm.model)
    assert before[:4] == after[:4]
    expected = _direct_grad_x_input(lm, tr.input_ids[: tr.n_prompt], tr.generated_ids[0])
    torch.testing.assert_close(tr.attribute().scores, expected, atol=1e-5, rtol=1e-4)


def test_arch_list_is_the_engine_matrix():
    assert {"llama", "qwen3", "gemma2", "phi3", "gpt2"} <= set(CONFIGS)


# --- the widget and its exports ---


def test_attribution_view_state_recompute_and_head_link(trace, tmp_path):
    attr = trace.attribute(" the", contrast=" a")
    view = lw.AttentionView(trace)
    widget = lw.AttributionView(attr, view=view)
    assert widget.tokens == attr.tokens and widget.scores == pytest.approx(attr.scores.tolist())
    assert (widget.target, widget.contrast, widget.method, widget.step) == (" the", " a", "grad_x_input", 0)
    assert widget.head_importance == [] and len(widget.step_labels) == 4
    widget.method = "attention_x_grad"  # as the select in the browser would
    assert widget.attribution.method == "attention_x_grad" and len(widget.head_importance) == 4
    assert widget.target == " the" and widget.error == ""
    widget.layer, widget.head = 2, 5  # a click in the grid opens that head in the linked view
    assert (view.layer, view.head) == (2, 5)
    widget.step = 2
    assert widget.attribution.step == 2 and len(widget.tokens) == trace.n_prompt + 2
    for ext in ("png", "svg", "html"):
        path = widget.save(tmp_path / f"why.{ext}")
        assert path.stat().st_size > 500
    svg = (tmp_path / "why.svg").read_text()
    assert "logit(&#x27; the&#x27;) - logit(&#x27; a&#x27;)" in svg and "<text" in svg
    html = (tmp_path / "why.html").read_text()
    assert "llm-widgets-data" in html and "https://" not in html


def test_attribution_view_default_target_follows_the_step(trace):
    widget = lw.AttributionView(trace.attribute())
    widget.step = 1
    assert widget.attribution.target_id == trace.generated_ids[1]


def test_attribution_view_shows_a_failed_recompute_and_keeps_the_old(trace, monkeypatch):
    widget = lw.AttributionView(trace.attribute(" the"))

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(type(trace), "attribute", boom)
    widget.method = "occlusion"
    assert widget.error == "RuntimeError: out of memory" and widget.method == "grad_x_input"
    assert widget.attribution.method == "grad_x_input" and not widget.busy
    with pytest.raises(TypeError, match="takes an Attribution"):
        lw.AttributionView(trace)
