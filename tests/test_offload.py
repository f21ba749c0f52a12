"""Models split or offloaded by accelerate: the same numbers as the model in one piece.

tiny-gpt2 with its last two blocks offloaded to disk (weights on the meta device,
loaded by accelerate's hooks for each call), against the plain load.
"""

from __future__ import annotations

import pytest
import torch

import llm_widgets as lw

TEXT = "It was a truth universally acknowledged, that a single man"
SPLIT = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "cpu",
    "transformer.h.2": "disk",
    "transformer.h.3": "disk",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    lm = lw.load_model(
        "tiny-gpt2", device_map=SPLIT, offload_folder=str(tmp_path_factory.mktemp("offload")), progress=False
    )
    assert any(p.device.type == "meta" for p in lm.model.parameters())  # really offloaded
    return lm


def test_placement_is_described(offloaded):
    assert offloaded.facts.device == "cpu + disk"
    assert "cpu + disk" in repr(offloaded)


def test_trace_and_attention_equal_the_whole_model(offloaded, tiny_gpt2):
    ours = offloaded.trace(TEXT, max_new_tokens=6, keep_logits=True)
    reference = tiny_gpt2.trace(TEXT, max_new_tokens=6, keep_logits=True)
    assert ours.generated_ids == reference.generated_ids
    torch.testing.assert_close(ours.logits, reference.logits, atol=1e-5, rtol=0)
    for layer in (0, 3):
        torch.testing.assert_close(ours.attention(layer, 5), reference.attention(layer, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.attention_grid(8), reference.attention_grid(8), atol=1e-6, rtol=0)


def test_edits_equal_the_whole_model(offloaded, tiny_gpt2):
    edits = [lw.ScaleAttention(5.0, keys=(0, 3), layers=[2, 3]), lw.AblateHead(layer=3, head=1)]
    ours = offloaded.trace(TEXT, max_new_tokens=6, edits=edits, keep_logits=True)
    reference = tiny_gpt2.trace(TEXT, max_new_tokens=6, edits=edits, keep_logits=True)
    assert ours.generated_ids == reference.generated_ids
    torch.testing.assert_close(ours.logits, reference.logits, atol=1e-5, rtol=0)


def test_analyses_equal_the_whole_model(offloaded, tiny_gpt2):
    for method in ("grad_x_input", "attention_x_grad"):
        ours = offloaded.trace(TEXT).attribute(" the", method=method)
        reference = tiny_gpt2.trace(TEXT).attribute(" the", method=method)
        torch.testing.assert_close(ours.scores, reference.scores, atol=1e-5, rtol=1e-4)
    clean, corrupted = (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
    )
    for site in ("residual", "heads"):
        ours = lw.patch(offloaded, clean, corrupted, " Mary", " John", site=site, progress=False)
        reference = lw.patch(tiny_gpt2, clean, corrupted, " Mary", " John", site=site, progress=False)
        torch.testing.assert_close(ours.raw, reference.raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        offloaded.trace(clean).logit_lens(k=3).top_probs,
        tiny_gpt2.trace(clean).logit_lens(k=3).top_probs,
        atol=1e-5,
        rtol=0,
    )


def test_device_and_device_map_together_are_refused():
    with pytest.raises(lw.InputError, match="give device or device_map, not both"):
        lw.load_model("tiny-gpt2", device="cpu", device_map="auto")


def test_gradient_monitor_leaves_offloaded_weights_out(offloaded):
    model = offloaded.model
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    try:
        with pytest.warns(UserWarning, match="parameters are offloaded by accelerate"):
            monitor = lw.GradientMonitor(model)
        assert "layer 0" in monitor.groups and "layer 3" not in monitor.groups
        monitor.detach()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
