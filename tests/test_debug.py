"""The debugger (`lw.debug`): planted faults found by breakpoints and named down to the operation,
stepping and time travel, tensors equal to what a plain forward hook sees, post-mortems, the
backward pass, and the model left as it was after every stop, error and interrupt."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import llm_widgets as lw

from .test_plain_torch import PROMPT as WORDS
from .test_plain_torch import VOCAB, HandWrittenLM
from .test_trace_architectures import CONFIGS, MASKED, PROMPT, build

TEXT = "It is a truth universally acknowledged, that a single man"


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _plain_outputs(model: nn.Module, path: str, run) -> list[torch.Tensor]:
    """What a plain forward hook on `path` captures, call by call, while `run()` runs."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(path)

    def keep(_m, _a, out):
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = module.register_forward_hook(keep)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


@pytest.fixture
def planted(tiny_gpt2):
    """tiny-gpt2 with one weight changed for the test, put back after."""
    weight = tiny_gpt2.model.transformer.h[2].mlp.c_fc.weight
    saved = weight.detach().clone()
    yield weight
    with torch.no_grad():
        weight.copy_(saved)


# --- planted faults ---


def test_a_weight_set_to_inf_is_found_with_its_operation(tiny_gpt2, planted):
    with torch.no_grad():
        planted[3, 5] = float("inf")
    before = _hooks(tiny_gpt2.model)
    dbg = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.NonFinite()])
    stop = dbg.stopped_at
    assert stop.module == "transformer.h.2.mlp.c_fc" and stop.layer == 2 and stop.step == 0
    assert "Inf" in dbg.reason and "its own weight holds non-finite values" in dbg.reason
    assert dbg.operation.name == "aten.addmm" and "torch.addmm" in dbg.operation.where
    assert [c.module for c in dbg.stack] == ["", "transformer", "transformer.h.2", "transformer.h.2.mlp", stop.module]
    assert _hooks(tiny_gpt2.model) == before  # nothing left behind
    _all_calls(dbg)  # the modules around it carry the Inf on, and are no hits of their own
    assert {dbg.calls[h.call].module for h in dbg.hits} == {stop.module}


def test_float16_overflow_is_found_before_and_after_the_cast(tiny_gpt2, planted):
    with torch.no_grad():
        planted.mul_(1e4)  # activations beyond 65504 in this layer's MLP, finite in float32
    dbg = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.Overflow("float16")])
    assert dbg.stopped_at.layer == 2 and "beyond float16's range (65504)" in dbg.reason
    assert dbg.stopped_at.stats.finite and dbg.stopped_at.stats.beyond_float16 > 0
    half = lw.LanguageModel(_copy(tiny_gpt2.model).half(), tiny_gpt2.tokenizer, name="tiny-gpt2-fp16")
    found = lw.debug(half, TEXT, breakpoints=[lw.NonFinite()])  # the same module makes Inf in float16
    assert found.stopped_at.layer == 2 and found.stopped_at.stats.inf > 0
    assert found.operation is not None


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


class LogOf(nn.Module):
    """A custom module with a bug: log of values that can be negative."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y + torch.log(y)  # NaN where y < 0


def _plain(seed: int = 0) -> lw.LanguageModel:
    torch.manual_seed(seed)
    return lw.LanguageModel(HandWrittenLM().eval(), vocab=VOCAB, name="hand-written")


def test_log_of_a_negative_number_in_a_custom_module():
    lm = _plain()
    lm.model.blocks[1].mlp = LogOf(lm.model.blocks[1].mlp)
    dbg = lw.debug(lm, WORDS, breakpoints=[lw.NonFinite()])
    assert dbg.stopped_at.module == "blocks.1.mlp" and dbg.stopped_at.stats.nan > 0
    assert dbg.operation.name == "aten.log" and "torch.log(y)" in dbg.operation.where


class HandAttention(nn.Module):
    """Attention written by hand, as many research blocks are (nn.MultiheadAttention's call)."""

    def __init__(self, mha: nn.MultiheadAttention, bug: bool):
        super().__init__()
        self.mha, self.bug = mha, bug

    def forward(self, q, k, v, attn_mask=None, need_weights=False):
        n, d, h = q.shape[0], q.shape[-1], self.mha.num_heads
        qkv = nn.functional.linear(q, self.mha.in_proj_weight, self.mha.in_proj_bias).view(n, 3, h, d // h)
        scores = torch.einsum("qhd,khd->hqk", qkv[:, 0], qkv[:, 1]) / (d // h) ** 0.5
        mask = attn_mask.clone()
        if self.bug:
            mask[3] = True  # the bug: row 3 may see no key at all
        weights = scores.masked_fill(mask, float("-inf")).softmax(-1)  # a row of -inf: NaN
        out = torch.einsum("hqk,khd->qhd", weights, qkv[:, 2]).reshape(n, 1, d)
        return self.mha.out_proj(out), None


def test_a_mask_that_leaves_a_row_without_keys():
    lm = _plain()
    block = lm.model.blocks[0]
    block.attn = HandAttention(block.attn, bug=False)
    reference = lw.debug(lm, WORDS, breakpoints=[lw.NonFinite()])
    assert reference.stopped_at is None  # written right, it makes no NaN
    block.attn.bug = True
    dbg = lw.debug(lm, WORDS, breakpoints=[lw.NonFinite()])
    assert dbg.stopped_at.module == "blocks.0.attn" and dbg.stopped_at.stats.nan > 0
    assert dbg.operation.name == "aten._softmax" and ".softmax(-1)" in dbg.operation.where


class Reshaped(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.reshape(x.shape[1], 3, -1))  # wrong: mixes positions into features


def test_a_wrong_reshape_gets_a_post_mortem():
    lm = _plain()
    lm.model.blocks[1].mlp = Reshaped(lm.model.blocks[1].mlp)
    before = _hooks(lm.model)
    dbg = lw.debug(lm, WORDS)  # no breakpoint: the error stops it
    assert isinstance(dbg.error, RuntimeError) and "shapes cannot be multiplied" in dbg.reason
    stop = dbg.stopped_at
    assert stop.module == "blocks.1.mlp.inner.0" and stop.inputs == (("0", (1, 3, 64), "float32"),)
    assert dbg.operation.name == "linear" and "F.linear" in dbg.operation.where
    assert "Traceback" in dbg.traceback and "shapes cannot be multiplied" in dbg.traceback
    assert dbg.inspect("input").shape == (1, 3, 64)
    with pytest.raises(lw.InputError, match="raised before it returned"):
        dbg.inspect("output")
    with pytest.raises(lw.InputError, match="nothing runs after it"):
        dbg.continue_()
    assert _hooks(lm.model) == before


# --- stepping, time travel, inspection ---


def test_stepping_and_time_travel(tiny_gpt2):
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=2, breakpoints=[lw.At(module="transformer.h.1.mlp", step=1)])
    here = dbg.stopped_at
    assert (here.module, here.step, here.layer) == ("transformer.h.1.mlp", 1, 1) and dbg.position == here.call
    assert dbg.step().parent == here.call  # into its children
    assert dbg.back() is here
    nxt = dbg.step_over()  # the next call outside this one
    assert nxt.call > here.call and nxt.depth <= here.depth
    assert all(c.depth > here.depth for c in dbg.calls[here.call + 1 : nxt.call])
    dbg.goto(here.call)
    assert dbg.step_out().module == "transformer.h.1"
    assert dbg.goto(3).call == 3 and dbg.continue_() is here  # travelled back, ran on to the hit again
    assert dbg.continue_() is None and dbg.finished and dbg.position == len(dbg.calls) - 1
    with pytest.raises(lw.InputError, match=r"call 9999 is past the end: this run has \d+ calls"):
        dbg.goto(9999)
    table = dbg.to_dataframe()
    assert len(table) == len(dbg.calls) and table.loc[here.call, "hit"] == "the location asked for"
    assert {"module", "rms", "nan", "beyond_float16", "step", "layer"} <= set(table.columns)


def test_inspect_equals_a_plain_forward_hook(tiny_gpt2):
    path = "transformer.h.2.mlp"
    plain = _plain_outputs(
        tiny_gpt2.model,
        path,
        lambda: tiny_gpt2.model.generate(
            tiny_gpt2.tokenizer(TEXT, return_tensors="pt").input_ids,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        ),
    )
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=3, breakpoints=[lw.At(module=path)])
    assert dbg.stopped_at.step == 0 and not dbg.finished
    for step in (2, 0, 1):  # a later generation step first (the rest of the run recorded), then back
        dbg.goto(next(c.call for c in _all_calls(dbg) if c.module == path and c.step == step))
        assert torch.equal(dbg.inspect("output"), plain[step])
    layer = tiny_gpt2.model.transformer.h[2].mlp.c_fc
    dbg.goto(next(c.call for c in dbg.calls if c.module == "transformer.h.2.mlp.c_fc"))
    assert torch.equal(dbg.inspect("weight"), layer.weight) and set(dbg.inspect("parameters")) == {"weight", "bias"}


def _all_calls(dbg) -> list:
    """The whole timeline: travel to the end once."""
    if not dbg.finished:
        dbg.goto(len(dbg.calls))
    return dbg.calls


def test_inspect_in_a_sampled_run_equals_the_same_run_hooked(tiny_gpt2):
    path = "transformer.h.3"
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=4, do_sample=True, seed=7, temperature=1.3)
    assert dbg.finished and dbg.stopped_at is None
    plain = _plain_outputs(
        tiny_gpt2.model,
        path,
        lambda: tiny_gpt2.trace(TEXT, max_new_tokens=4, do_sample=True, seed=7, temperature=1.3, capture=False),
    )
    for step in (0, 2, 3):
        dbg.goto(next(c.call for c in dbg.calls if c.module == path and c.step == step))
        assert torch.equal(dbg.inspect("output"), plain[step])
    unseeded = lw.debug(tiny_gpt2, TEXT, max_new_tokens=3, do_sample=True)  # a seed drawn, kept for replays
    unseeded.goto(next(c.call for c in unseeded.calls if c.module == path and c.step == 2))
    first = unseeded.inspect("output")
    unseeded._captured = None
    assert torch.equal(unseeded.inspect("output"), first)


def test_watch_gives_a_series_over_layers_and_steps(tiny_gpt2):
    # three new tokens: three forwards (the prompt's, then two steps; the last token is not run)
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=3, watch={"norm": ("transformer.h.?", lambda x: x.norm())})
    block_values = [c.watched for c in dbg.calls if c.kind == "block"]
    assert len(block_values) == 4 * 3 and all(set(v) == {"norm"} for v in block_values)
    series = dbg.watch("transformer.h.?", lambda x: x[0, -1].norm())
    assert list(series.columns) == ["call", "step", "layer", "module", "value"]
    assert len(series) == 12 and sorted(set(series.layer)) == [0, 1, 2, 3] and sorted(set(series.step)) == [0, 1, 2]
    assert "norm" in dbg.to_dataframe().columns


def test_norm_jump_and_target_drop(tiny_gpt2, planted):
    with torch.no_grad():
        planted.mul_(50.0)
    dbg = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.NormJump(3.0)])
    assert dbg.stopped_at.kind == "block" and dbg.stopped_at.layer == 2 and "residual RMS grew" in dbg.reason
    with torch.no_grad():
        planted.div_(50.0)
    clean = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.TargetDrop(" the", below=0.5)])
    p = [c.watched["p_target"] for c in clean.calls if c.kind == "block"]
    assert len(p) == 4 and all(0 <= v <= 1 for v in p)
    falls = [i for i in range(1, 4) if p[i] < 0.5 <= p[i - 1]]
    assert (clean.stopped_at is not None) == bool(falls)


def test_backward_records_gradients_and_leaves_the_parameters_alone(tiny_gpt2):
    dbg = lw.debug(tiny_gpt2, TEXT, backward=" that")
    backward = [c for c in dbg.calls if c.phase == "backward"]
    assert backward and backward[0].kind in ("head", "model") and all(c.stats is not None for c in backward)
    assert {c.layer for c in backward if c.kind == "block"} == {0, 1, 2, 3}
    assert all(p.grad is None for p in tiny_gpt2.model.parameters())
    stopped = lw.debug(
        tiny_gpt2, TEXT, backward=lambda logits: logits[0, -1].max() * float("inf"), breakpoints=[lw.NonFinite()]
    )
    assert stopped.stopped_at.phase == "backward" and "gradient holds" in stopped.reason


# --- across architectures, restored, bad input ---


@pytest.mark.parametrize("arch", sorted(set(CONFIGS) - MASKED))
def test_every_architecture_of_the_matrix(arch):
    lm = build(arch)
    mode, implementation, before = lm.model.training, lm.model.config._attn_implementation, _hooks(lm.model)
    dbg = lw.debug(lm, PROMPT, max_new_tokens=2, breakpoints=[lw.At(layer=1, step=1)])
    stop = dbg.stopped_at
    assert stop.layer == 1 and stop.step == 1
    path = next(c.module for c in dbg.calls if c.kind == "block" and c.layer == 1)
    plain = _plain_outputs(
        lm.model,
        path,
        lambda: lm.model.generate(torch.tensor([PROMPT]), max_new_tokens=2, do_sample=False, pad_token_id=0),
    )
    dbg.goto(next(c.call for c in dbg.calls if c.module == path and c.step == 0))
    assert torch.equal(dbg.inspect("output"), plain[0])
    assert (lm.model.training, lm.model.config._attn_implementation, _hooks(lm.model)) == (mode, implementation, before)


def test_an_encoder_decoder_and_an_interrupt():
    translator = lw.load_model("tiny-translator", progress=False)
    dbg = lw.debug(translator, "the cat", max_new_tokens=2)
    kinds = {c.kind for c in dbg.calls}
    assert dbg.finished and {"attention", "embedding", "head"} <= kinds and max(c.step for c in dbg.calls) >= 1
    lm = _plain()
    before = _hooks(lm.model)

    def interrupt(call, output):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lw.debug(lm, WORDS, breakpoints=[lw.When(interrupt)])
    assert _hooks(lm.model) == before and not lm.model.training


def test_bad_input_is_named(tiny_gpt2):
    with pytest.raises(lw.InputError, match=r"At\(module='transformer.h.9.mlp'\) names no module of tiny-gpt2"):
        lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.At(module="transformer.h.9.mlp")])
    with pytest.raises(lw.InputError, match="At's step must be an integer >= 0"):
        lw.At(step=-1)
    with pytest.raises(lw.InputError, match="At names no location"):
        lw.At()
    with pytest.raises(lw.InputError, match=r"At\(layer=7\) is out of range: tiny-gpt2 has 4 layers"):
        lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.At(layer=7)])
    with pytest.raises(lw.WrongTypeError, match="breakpoints must be a list of lw.NonFinite"):
        lw.debug(tiny_gpt2, TEXT, breakpoints=["nan"])
    with pytest.raises(lw.InputError, match="Overflow takes a floating-point dtype"):
        lw.Overflow("int8")
    with pytest.raises(lw.InputError, match="NormJump's factor must be"):
        lw.NormJump(0.5)
    with pytest.raises(lw.InputError, match="watch must be a list of"):
        lw.debug(tiny_gpt2, TEXT, watch=["transformer.h.*"])
    with pytest.raises(lw.InputError, match="backward runs on the prompt's forward"):
        lw.debug(tiny_gpt2, TEXT, max_new_tokens=2, backward=" the")
    dbg = lw.debug(tiny_gpt2, TEXT)
    with pytest.raises(lw.InputError, match="names no module"):
        dbg.watch("decoder.*", lambda x: x.norm())
    with pytest.raises(lw.InputError, match="inspect's what must be one of"):
        dbg.inspect("everything")
    with pytest.raises(lw.InputError, match="back: already at the first call"):
        dbg.goto(0) and dbg.back()
    with pytest.raises(lw.InputError, match="attention is inspected at an attention call"):
        dbg.inspect("attention")
    with pytest.raises(lw.WrongTypeError, match="debug takes an lw.LanguageModel"):
        lw.debug(tiny_gpt2.model, TEXT)


def test_a_nan_weight_is_named_with_its_operation(tiny_gpt2, planted):
    with torch.no_grad():
        planted[3, 5] = float("nan")
    dbg = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.NonFinite()])
    assert dbg.stopped_at.module == "transformer.h.2.mlp.c_fc" and dbg.stopped_at.stats.nan > 0
    assert dbg.operation.name == "aten.addmm"
    assert dbg.inspect("weight").isnan().nonzero().tolist() == [[3, 5]]


def test_the_view_steps_inspects_and_edits_breakpoints(tiny_gpt2, planted):
    with torch.no_grad():
        planted[0, 0] = float("inf")
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=2, breakpoints=[lw.NonFinite()])
    view = lw.DebuggerView(dbg)
    assert view.status[0] == "stopped at call 37: transformer.h.2.mlp.c_fc" and "aten.addmm" in view.status[2]
    assert [s["label"] for s in view.stack][-1] == "transformer.h.2.mlp.c_fc" and view.position == 37
    assert len(view.strip) == len(view.marks) == len(dbg.calls) and view.marks[37] & 4 and view.marks[37] & 1
    assert any(row["hit"] and row["call"] == 37 for row in view.calls)
    assert view.request({"what": "inspect", "part": "output"}, [])[0] == {"type": "ok"}
    assert view.inspector["shape"][::2] == [1, 1024] and "Inf" in view.inspector["lines"][1]
    assert sum(view.inspector["histogram"]) > 0 and len(view.inspector["heat"]) <= 48
    for how, where in (("back", 36), ("step", 37), ("out", 36)):
        assert view.request({"what": "move", "how": how}, [])[0] == {"type": "ok"} and view.position == where
    assert view.inspector == {}  # moving clears what was inspected
    reply, _ = view.request({"what": "move", "how": "sideways"}, [])
    assert reply["type"] == "error" and "how must be one of" in reply["message"] and view.error
    reply, _ = view.request({"what": "breakpoint", "kind": "At", "arg": "transformer.h.9"}, [])
    assert reply["type"] == "error" and view.breakpoints == ["NonFinite()"]  # left as it was
    view.request({"what": "breakpoint", "kind": "NormJump", "arg": "4"}, [])
    assert view.breakpoints == ["NonFinite()", "NormJump(factor=4.0)"] and view.error == ""
    view.request({"what": "unbreak", "index": 0}, [])
    assert view.breakpoints == ["NormJump(factor=4.0)"]
    csv = view.request({"what": "export", "format": "csv"}, [])[1][0].decode()
    assert csv.startswith("call,phase,step,layer") and len(csv.splitlines()) == len(dbg.calls) + 1
    assert view.request({"what": "export", "format": "png"}, [])[1][0][:4] == b"\x89PNG"
    import json

    json.dumps(view.get_state(), allow_nan=False)  # nothing JSON cannot carry (NaN) reaches the front end
    with pytest.raises(lw.WrongTypeError, match="DebuggerView takes an lw.debug"):
        lw.DebuggerView("x")


def test_a_model_changed_after_the_run_is_refused_not_replayed(tiny_gpt2, planted):
    dbg = lw.debug(tiny_gpt2, TEXT, breakpoints=[lw.At(module="transformer.h.1")])
    with torch.no_grad():
        planted.mul_(2.0)
    with pytest.raises(lw.InputError, match="weights changed since this run was recorded"):
        dbg.inspect("output")
    assert dbg.back().call == dbg.position  # moving within what is recorded needs no replay


def test_inspect_attention_is_the_traces_maps_at_that_step(tiny_gpt2):
    dbg = lw.debug(tiny_gpt2, TEXT, max_new_tokens=2, breakpoints=[lw.At(module="transformer.h.1.attn", step=1)])
    maps = dbg.inspect("attention")
    trace = tiny_gpt2.trace(TEXT, max_new_tokens=2)
    n = trace.n_prompt
    assert maps.shape == (8, 1, n + 2)  # 8 heads, the query of step 1, every key
    torch.testing.assert_close(maps[3], trace.attention(1, 3, queries=n))
    dbg.goto(next(c.call for c in dbg.calls if c.module == "transformer.h.1.attn" and c.step == 0))
    assert dbg.inspect("attention").shape == (8, n, n + 2)
    with pytest.raises(lw.InputError, match="TargetDrop reads the logit lens"):
        lw.debug(_plain(), WORDS, breakpoints=[lw.TargetDrop("w3")])
