"""`lw.estimate`: each expensive call's plan is the work the call does (its forwards counted), the
memory counter agrees with torch.profiler, and a budget adapts an attribution or refuses it with
the estimate. How close the estimates come to measured runs is benchmarks/bench_estimate.py's
(timings do not belong in tests)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import llm_widgets as lw
from llm_widgets.analysis.cost import peak_allocated
from llm_widgets.analysis.profile import allocation_levels
from llm_widgets.models.modes import checkpointed

from .test_trace_architectures import ToyTokenizer, build


@pytest.fixture(scope="module")
def llama() -> lw.LanguageModel:
    return build("llama")


def forwards(lm: lw.LanguageModel, call, *args, **kwargs) -> int:
    """How many times `call` runs the model's forward."""
    count = [0]
    handle = lm.model.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        call(*args, **kwargs)
    finally:
        handle.remove()
    return count[0]


def planned(lm: lw.LanguageModel, call, *args, **kwargs) -> int:
    """How many forwards of `lm` the estimate of `call` counts."""
    estimate = lw.estimate(call, *args, **kwargs)
    assert estimate.seconds > 0 and estimate.peak_bytes > 0
    plan = estimate.plan
    return sum(w.count for w in plan.work if w.kind == "forward" and (w.model or plan.model) is lm)


def test_each_plan_makes_the_forwards_its_call_makes(llama):
    ids = list(range(3, 15))
    tr = llama.trace(ids, max_new_tokens=1)
    other = copy.deepcopy(llama.model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    b = lw.LanguageModel(other, ToyTokenizer(), name="other")
    calls = [
        (lw.patch, (llama, ids, list(range(4, 16)), 7), {"progress": False}),
        (lw.patch, (llama, ids, list(range(4, 16)), 7), {"site": "heads", "progress": False, "budget_bytes": 1 << 17}),
        (lw.ablation_sweep, (tr,), {"progress": False}),
        (tr.attribute, (), {}),
        (tr.attribute, (), {"method": "integrated_gradients", "n_steps": 20}),
        (tr.attribute, (), {"method": "occlusion"}),
        (tr.logit_lens, (), {}),
        (lw.sample_tree, (llama, ids), {"n": 4, "max_new_tokens": 5, "seed": 0}),
        (lw.profile, (llama, ids), {"max_new_tokens": 3}),
        (lw.scaling, (llama,), {"lengths": (16, 32), "repeats": 2}),
        (lw.diverge, (llama, b, ids), {"max_new_tokens": 3}),
        (lw.search_steering, (llama, ids, 7, 9), {"span": (2, 5), "budget": 40, "batch_size": 8, "continuation": 4}),
        (lw.debug, (llama, ids), {"max_new_tokens": 3}),
        (lw.debug, (llama, ids), {"backward": 7}),
        (tr.explain_attention, (1, 1, 11), {}),
        (tr.explain_attention, (1, 1, 11, 4), {"depth": 2}),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call, args, kwargs in calls:
            assert forwards(llama, call, *args, **kwargs) == planned(llama, call, *args, **kwargs), (call, kwargs)


def test_the_memory_counter_agrees_with_the_profiler(tiny_gpt2):
    net = tiny_gpt2.model
    ids = torch.randint(1, 100, (1, 96), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            return net(input_ids=ids, use_cache=False).logits

    def backward():
        embeds = net.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = net(inputs_embeds=embeds, use_cache=False).logits
        torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), embeds)

    for run in (forward, backward):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        expected = max(allocation_levels(prof.events(), cuda=False)[1])
        assert peak_allocated(run, torch.device("cpu"))[1] == pytest.approx(expected, rel=0.05), run.__name__


def test_a_budget_recomputes_blocks_and_the_scores_stay_the_same(llama):
    tr = llama.trace(list(range(3, 67)))
    plain = tr.attribute(method="integrated_gradients", n_steps=8)
    cost = lw.estimate(tr.attribute, method="integrated_gradients", n_steps=8)
    # between what one step with recomputed blocks needs and what a step keeping everything needs
    one = lw.estimate(tr.attribute, method="grad_x_input")
    fitted = tr.attribute(method="integrated_gradients", n_steps=8, budget_bytes=int(one.peak_bytes * 0.7))
    assert any("recomputed" in note for note in fitted.notes), fitted.notes
    assert cost.peak_bytes > one.peak_bytes
    torch.testing.assert_close(fitted.scores, plain.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(lw.InputError, match=r"trace.attribute would need about .* over its budget_bytes of 100 B"):
        tr.attribute(budget_bytes=100)
    with pytest.raises(lw.InputError, match=r"lw.patch would need about .* over its budget_bytes of 1.0 KiB"):
        lw.patch(llama, list(range(3, 15)), list(range(4, 16)), 7, budget_bytes=1024)


def test_checkpointed_blocks_get_their_own_forward_back_after_an_error(llama):
    blocks = list(llama.model.model.layers)
    with pytest.raises(RuntimeError), checkpointed(blocks):
        assert all("forward" in b.__dict__ for b in blocks)
        raise RuntimeError("interrupted")
    assert not any("forward" in b.__dict__ for b in blocks)


def test_estimate_refuses_what_it_cannot_estimate(tiny_gpt2):
    with pytest.raises(lw.InputError, match="no estimate for 'compare'; estimates exist for"):
        lw.estimate(lw.compare, tiny_gpt2)
