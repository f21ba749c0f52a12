"""The engine and the analyses on a CUDA device, in float32, bfloat16 and float16.

Skipped without CUDA (CI has none). On a GPU these are the CPU suite's fidelity
checks again: traced logits identical to the plain model's, recomputed attention
equal to eager attention, edited generation the same with and without the cache,
views, attribution, patching and the gradient monitor on the device.

Tolerances against eager attention (probabilities, max abs difference): float32
1e-5, float16 2e-3, bfloat16 1.6e-2. Eager rounds its scores to the model's dtype
before the softmax and its probabilities after it; we recompute from the same
queries and keys in float32, so the difference is eager's rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

import llm_widgets as lw

from .test_trace_architectures import CONFIGS, MASKED, PROMPT, build

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def on_cuda(lm: lw.LanguageModel, dtype: torch.dtype) -> lw.LanguageModel:
    model = copy.deepcopy(lm.model).to(device="cuda", dtype=dtype)
    return lw.LanguageModel(model, lm.tokenizer, name=lm.name)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def arch(request):
    return request.param


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_traced_logits_and_attention_on_cuda(arch, dtype):
    dtype = DTYPES[dtype]
    cpu = build(arch)
    lm = on_cuda(cpu, dtype)
    ids = torch.tensor([PROMPT], device="cuda")
    with torch.no_grad():
        plain = lm.model(ids).logits[0].float().cpu()
    tr = lm.trace(PROMPT, keep_logits=True)
    assert (tr.logits - plain).abs().max().item() == 0.0  # same kernels, same numbers
    eager = on_cuda(build(arch, "eager", cpu.model.state_dict()), dtype)
    with torch.no_grad():
        reference = eager.model(ids, output_attentions=True).attentions
    for layer in range(lm.facts.n_layers):
        for head in range(lm.facts.n_heads):
            torch.testing.assert_close(
                tr.attention(layer, head), reference[layer][0, head].float().cpu(), atol=ATOL[dtype], rtol=0
            )
    # the pooled views, computed on the device, agree with the probabilities
    full = tr.attention(1, 2)
    n = len(tr)
    torch.testing.assert_close(tr.attention_overview(1, 2, size=n), full)
    grid = tr.attention_grid(size=n)
    torch.testing.assert_close(grid[(1 * lm.facts.n_heads + 2) * n : (1 * lm.facts.n_heads + 3) * n], full)


def test_edits_on_cuda_match_with_and_without_cache_and_the_cpu(arch):
    if arch in MASKED:
        pytest.skip("masked models do not generate")
    cpu = build(arch)
    lm = on_cuda(cpu, torch.float32)
    edits = [
        lw.ScaleAttention(0.05, keys=(1, 6), layers=[0]),
        lw.AblateHead(layer=1, head=3),
        lw.ScaleAttention(8.0, keys=(3, 9), layers=[1], heads=[1]),
    ]
    cached = lm.trace(PROMPT, max_new_tokens=8, edits=edits)
    uncached = lm.trace(PROMPT, max_new_tokens=8, edits=edits, use_cache=False)
    on_cpu = cpu.trace(PROMPT, max_new_tokens=8, edits=edits)
    assert cached.generated_ids == uncached.generated_ids == on_cpu.generated_ids
    torch.testing.assert_close(cached.attention(0, 1), on_cpu.attention(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.attention(1, 1), uncached.attention(1, 1), atol=1e-5, rtol=0)


def test_capture_on_the_cpu_or_in_half_precision(arch):
    lm = on_cuda(build(arch), torch.float32)
    on_device = lm.trace(PROMPT)
    moved = lm.trace(PROMPT, capture_device="cpu")
    assert moved.stack().layer(0).queries.device.type == "cpu"
    torch.testing.assert_close(moved.attention(1, 0), on_device.attention(1, 0), atol=1e-6, rtol=0)
    half = lm.trace(PROMPT, capture_dtype=torch.float16)
    assert half.stack().layer(0).keys.dtype == torch.float16
    torch.testing.assert_close(half.attention(1, 0), on_device.attention(1, 0), atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def gpt2_cuda(tiny_gpt2):
    return on_cuda(tiny_gpt2, torch.float32)


TEXT = "It was a truth universally acknowledged, that a single man"


def test_attribution_on_cuda_equals_the_cpu(gpt2_cuda, tiny_gpt2):
    for method in ("grad_x_input", "integrated_gradients", "attention_x_grad"):
        ours = gpt2_cuda.trace(TEXT).attribute(" the", method=method)
        reference = tiny_gpt2.trace(TEXT).attribute(" the", method=method)
        torch.testing.assert_close(ours.scores.cpu(), reference.scores, atol=1e-4, rtol=1e-3)


def test_patching_and_lens_on_cuda_equal_the_cpu(gpt2_cuda, tiny_gpt2):
    clean, corrupted = (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
    )
    for site in ("residual", "heads"):
        ours = lw.patch(gpt2_cuda, clean, corrupted, " Mary", " John", site=site, progress=False)
        reference = lw.patch(tiny_gpt2, clean, corrupted, " Mary", " John", site=site, progress=False)
        torch.testing.assert_close(ours.raw.cpu(), reference.raw, atol=1e-4, rtol=1e-4)
    lens = gpt2_cuda.trace(clean).logit_lens(k=3)
    torch.testing.assert_close(
        lens.top_probs.cpu(), tiny_gpt2.trace(clean).logit_lens(k=3).top_probs, atol=1e-4, rtol=0
    )


def test_gradient_monitor_on_cuda(tiny_gpt2):
    model = copy.deepcopy(tiny_gpt2.model).float().cuda().eval().requires_grad_(True)
    ids = tiny_gpt2.tokenizer(TEXT, return_tensors="pt")["input_ids"].cuda()
    monitor = lw.GradientMonitor(model)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    record = monitor.step(loss=loss, lr=1e-3)
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert record["steps"]["global_norm"] == pytest.approx(total, rel=1e-5)
    monitor.detach()


SPLIT = {
    "transformer.wte": 0,
    "transformer.wpe": 0,
    "transformer.h.0": 0,
    "transformer.h.1": 0,
    "transformer.h.2": "cpu",
    "transformer.h.3": "cpu",
    "transformer.ln_f": "cpu",
    "lm_head": 0,
}


def test_a_model_split_between_gpu_and_cpu_equals_the_whole(tiny_gpt2):
    split = lw.load_model("tiny-gpt2", device_map=SPLIT, progress=False)
    assert split.facts.device == "cuda:0 + cpu"
    edits = [lw.ScaleAttention(5.0, keys=(0, 3), layers=[1, 3]), lw.AblateHead(layer=2, head=1)]
    ours = split.trace(TEXT, max_new_tokens=5, edits=edits, keep_logits=True)
    reference = tiny_gpt2.trace(TEXT, max_new_tokens=5, edits=edits, keep_logits=True)
    assert ours.generated_ids == reference.generated_ids
    torch.testing.assert_close(ours.logits, reference.logits, atol=1e-4, rtol=0)
    # with a GPU, accelerate runs the "cpu" layers on it, their weights loaded from CPU memory for each call
    assert ours.stack().layer(3).queries.device.type == "cuda"
    for layer in (0, 3):
        torch.testing.assert_close(ours.attention(layer, 2), reference.attention(layer, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        split.trace(TEXT).attribute(" the").scores.cpu(),
        tiny_gpt2.trace(TEXT).attribute(" the").scores,
        atol=1e-4,
        rtol=1e-3,
    )
    clean, corrupted = (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
    )
    ours = lw.patch(split, clean, corrupted, " Mary", " John", site="heads", progress=False)
    reference = lw.patch(tiny_gpt2, clean, corrupted, " Mary", " John", site="heads", progress=False)
    torch.testing.assert_close(ours.raw.cpu(), reference.raw, atol=1e-4, rtol=1e-4)


def test_gradient_monitor_on_a_split_model(tiny_gpt2):
    """Layers on the GPU are monitored; those accelerate offloads to the CPU get no gradients: left out, said once."""
    split = lw.load_model("tiny-gpt2", device_map=SPLIT, progress=False).model.train(False).requires_grad_(True)
    ids = tiny_gpt2.tokenizer(TEXT, return_tensors="pt")["input_ids"].cuda()
    with pytest.warns(UserWarning, match="parameters are offloaded by accelerate"):
        monitor = lw.GradientMonitor(split)
    assert monitor.offloaded > 0 and "layer 3" not in monitor.groups and "layer 0" in monitor.groups
    loss = split(input_ids=ids, labels=ids).loss
    loss.backward()
    record = monitor.step(loss=loss, lr=1e-3)
    grads = [p.grad for p in split.parameters() if p.grad is not None]
    assert record["steps"]["global_norm"] == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-5)
    monitor.detach()
