"""The trace engine's contract: records and replay, leaving no trace, and clear errors."""

from __future__ import annotations

import gc
import json
import tracemalloc

import pytest
import torch
import transformers

import llm_widgets as lw
from llm_widgets.models import compat
from llm_widgets.trace import capture

from .test_trace_architectures import PROMPT, ToyTokenizer, build


def test_trace_of_text_has_tokens_output_and_top_k(tiny_gpt2):
    tr = tiny_gpt2.trace("It is a truth universally acknowledged", max_new_tokens=6)
    assert len(tr.tokens) == len(tr) == tr.n_prompt + 6
    assert "".join(tr.tokens[: tr.n_prompt]) == "It is a truth universally acknowledged"
    assert tr.output_text == tiny_gpt2.tokenizer.decode(tr.generated_ids)
    top = tr.top_k(0, k=5)
    assert len(top) == 5 and top[0][1] >= top[-1][1] > 0
    # greedy: the generated token is the most likely one, and its probability is kept
    assert top[0][0] == tr.tokens[tr.n_prompt]
    assert tr.chosen_probability(0) == pytest.approx(top[0][1])
    assert tr.attention(3, 7, queries=len(tr) - 1).shape == (1, len(tr))
    assert "Trace('tiny-gpt2'" in repr(tr)


def test_overview_is_max_pooled(tiny_gpt2):
    tr = tiny_gpt2.trace("The " * 40)
    full = tr.attention(2, 1)
    pooled = tr.attention_overview(2, 1, size=8)
    assert pooled.shape == (8, 8)
    n = len(tr)
    edges = torch.linspace(0, n, 9).round().long()
    for i in range(8):
        for j in range(8):
            block = full[edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
            assert pooled[i, j] == pytest.approx(block.max().item(), abs=1e-6)
    assert tr.attention_overview(2, 1, size=1000).shape == (n, n)


def test_grid_of_every_head_is_each_heads_overview(tiny_gpt2):
    """The grid computes a layer's heads together, in blocks: the same numbers as one head at a time."""
    with pytest.warns(UserWarning, match="masked every key"):  # rows 0-4 see no other key: left as they were
        tr = tiny_gpt2.trace("The " * 40, edits=[lw.ScaleAttention(0.0, keys=(0, 5), layers=[1], heads=[2])])
    grid = tr.attention_grid(size=6)
    for layer in range(tr.n_layers):
        for head in range(tr.n_heads):
            cell = grid[(layer * tr.n_heads + head) * 6 : (layer * tr.n_heads + head + 1) * 6]
            torch.testing.assert_close(cell, tr.attention_overview(layer, head, size=6), atol=1e-6, rtol=0)


def test_queries_and_keys_kept_in_half_precision(tiny_gpt2):
    full = tiny_gpt2.trace("It is a truth universally acknowledged, that a single man", max_new_tokens=4)
    half = tiny_gpt2.trace(full.input_ids[: full.n_prompt], max_new_tokens=4, capture_dtype=torch.float16)
    assert half.stack().layer(0).queries.dtype == torch.float16 and half.generated_ids == full.generated_ids
    for layer in range(half.n_layers):
        torch.testing.assert_close(half.attention(layer, 3), full.attention(layer, 3), atol=2e-3, rtol=0)
    with pytest.raises(lw.InputError, match="capture_dtype must be a floating torch dtype"):
        tiny_gpt2.trace("Hi", capture_dtype="half")


def test_record_is_json_and_replays_a_sampled_run(tiny_gpt2):
    tr = tiny_gpt2.trace(
        "Call me Ishmael.",
        max_new_tokens=12,
        do_sample=True,
        temperature=1.3,
        edits=[lw.ScaleAttention(3.0, keys=(0, 2), layers=[1, 2]), lw.AblateHead(0, 5, mode="mean")],
    )
    record = json.loads(json.dumps(tr.record))
    assert record["generation"]["seed"] is not None and record["generation"]["temperature"] == 1.3
    assert record["model"]["source"]["weights_sha256"] == tiny_gpt2.source["weights_sha256"]
    again = lw.replay(record, tiny_gpt2)
    assert again.generated_ids == tr.generated_ids
    assert lw.replay(record).generated_ids == tr.generated_ids  # loads the bundled model by name
    other_seed = tiny_gpt2.trace(
        "Call me Ishmael.", max_new_tokens=12, do_sample=True, temperature=1.3, seed=record["generation"]["seed"] + 1
    )
    assert other_seed.generated_ids != tr.generated_ids


def test_tracing_leaves_the_global_random_state_alone(tiny_gpt2):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_gpt2.trace("Call me", max_new_tokens=3, do_sample=True, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_chat_messages_use_the_chat_template(smollm2):
    tr = smollm2.trace([{"role": "user", "content": "Say hi."}], max_new_tokens=3)
    assert "<|im_start|>user" in tr.prompt_text and tr.prompt_text.rstrip().endswith("<|im_start|>assistant")


def _model_state(lm):
    return (
        lm.model.config._attn_implementation,
        lm.model.training,
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules()),
        [k for m in lm.model.modules() for k in m.__dict__ if k.startswith("_llm_widgets")],
    )


def test_restored_after_errors_and_interrupts(monkeypatch):
    lm = build("llama")
    lm.model.train()  # whatever mode the user left it in comes back
    before = _model_state(lm)
    for error in (RuntimeError("boom"), KeyboardInterrupt()):

        def explode(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(capture.RunState, "attend", explode)
        with pytest.raises(type(error)):
            lm.trace(PROMPT, max_new_tokens=3, edits=[lw.ScaleAttention(2.0, keys=(0, 3))])
        monkeypatch.undo()
        assert _model_state(lm) == before
    assert lm.model.training


def test_two_models_from_one_config_do_not_interfere():
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    a = lw.LanguageModel(transformers.LlamaForCausalLM(config).eval(), ToyTokenizer(), name="a")
    b = lw.LanguageModel(transformers.LlamaForCausalLM(config).eval(), ToyTokenizer(), name="b")
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        b_plain = b.model(ids).logits

    # while a runs with an edit, b (sharing a's config object) runs plain, untouched
    seen = {}
    original = capture.RunState.attend

    def attend_and_run_b(self, *args, **kwargs):
        if "b" not in seen:
            seen["b"] = b.model(ids).logits
        return original(self, *args, **kwargs)

    capture.RunState.attend = attend_and_run_b
    try:
        a.trace(PROMPT, edits=[lw.ScaleAttention(0.2, keys=(0, 8))])
    finally:
        capture.RunState.attend = original
    torch.testing.assert_close(seen["b"], b_plain, atol=0, rtol=0)


def test_no_growth_over_many_runs():
    lm = build("gpt2")
    edits = [lw.ScaleAttention(2.0, keys=(0, 4)), lw.AblateHead(1, 2)]
    for _ in range(20):  # warm-up: allocator pools and caches settle
        lm.trace(PROMPT[:6], max_new_tokens=2, edits=edits)
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    before = _model_state(lm)
    for _ in range(1000):
        lm.trace(PROMPT[:6], max_new_tokens=2, edits=edits)
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(first, "filename"))
    tracemalloc.stop()
    assert _model_state(lm) == before
    assert grown < 256 * 1024, f"python memory grew by {grown} bytes over 1000 runs"


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt=[]), "prompt"),
        (dict(prompt=[1, 2, 999]), "token ids must be between 0 and 95"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
        (dict(max_new_tokens=200), "longer than the context"),
        (dict(edits=[lw.ScaleAttention(2.0, keys=(10, 40))]), r"outside the sequence: positions run from 0 to 17"),
        (
            dict(edits=[lw.ScaleAttention(2.0, keys=(0, 2), layers=[2])]),
            "layer 2 is out of range; this model has layers 0 to 1",
        ),
        (dict(edits=[lw.ScaleAttention(2.0, keys=(0, 2), heads=[4])]), "head 4 is out of range"),
        (dict(edits=[lw.AblateHead(5, 0)]), "layer 5 is out of range"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(bad, message):
    lm = build("llama")
    before = _model_state(lm)
    kwargs = {"prompt": PROMPT, "max_new_tokens": 4, **bad}
    with pytest.raises(ValueError, match=message):
        lm.trace(kwargs.pop("prompt"), **kwargs)
    assert _model_state(lm) == before


@pytest.mark.parametrize("factor", [-1.0, float("nan"), float("inf"), "2"])
def test_bad_factor(factor):
    with pytest.raises(ValueError, match="factor must be a finite number >= 0"):
        lw.ScaleAttention(factor, keys=(0, 2))


def test_bad_spans_and_heads():
    with pytest.raises(ValueError, match="empty or negative"):
        lw.ScaleAttention(2.0, keys=(4, 2))
    with pytest.raises(ValueError, match="mode must be 'zero' or 'mean'"):
        lw.AblateHead(0, 0, mode="half")
    tr = build("gpt2").trace(PROMPT)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        tr.attention(2, 0)
    with pytest.raises(ValueError, match="head 9 is out of range"):
        tr.attention(0, 9)
    with pytest.raises(ValueError, match="outside the sequence: positions run from 0 to 13"):
        tr.attention(0, 0, queries=(10, 20))
    with pytest.raises(ValueError, match="step 3 is out of range"):
        tr.top_k(3)


def test_fully_masked_rows_warn_and_stay_finite():
    lm = build("llama")
    with pytest.warns(UserWarning, match="masked every key of some query rows"):
        tr = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(0.0, keys=(0, 4))])
    assert torch.isfinite(tr.logits).all()
    assert torch.isfinite(tr.attention(0, 0)).all()


def _outside_the_registry(attn: str | None = None):
    """A tiny model whose attention does not go through transformers' AttentionInterface in
    the installed version (models join the registry over releases: GPT-J did in 5.24)."""
    candidates = [
        (
            transformers.FalconConfig,
            transformers.FalconForCausalLM,
            dict(
                vocab_size=96,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                new_decoder_architecture=False,
                multi_query=False,
                max_position_embeddings=128,
            ),
        ),
        (
            transformers.BloomConfig,
            transformers.BloomForCausalLM,
            dict(vocab_size=96, hidden_size=64, n_layer=2, n_head=4),
        ),
        (
            transformers.GPTNeoConfig,
            transformers.GPTNeoForCausalLM,
            dict(
                vocab_size=96,
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                attention_types=[[["global"], 2]],
                max_position_embeddings=128,
            ),
        ),
    ]
    for config_class, model_class, kwargs in candidates:
        if not compat.uses_attention_registry(model_class(config_class(**kwargs))):
            torch.manual_seed(0)
            return model_class(config_class(**kwargs, **({"attn_implementation": attn} if attn else {}))).eval()
    pytest.skip("every candidate model uses the attention registry in this transformers version")


def test_models_outside_the_registry_view_through_eager_and_refuse_edits():
    model = _outside_the_registry()
    implementation = model.config._attn_implementation
    lm = lw.LanguageModel(model, ToyTokenizer(), name="tiny-outside")
    tr = lm.trace(PROMPT, max_new_tokens=3)
    assert model.config._attn_implementation == implementation  # switched to eager for the weights, and back
    eager = _outside_the_registry("eager")  # the same weights, built eager
    with torch.no_grad():
        reference = eager(torch.tensor([tr.input_ids.tolist()]), output_attentions=True).attentions
    torch.testing.assert_close(tr.attention(1, 2), reference[1][0, 2].float())
    assert tr.attention(0, 0, queries=0, keys=(1, len(tr))).max() == 0  # causal: the first token sees itself only
    name = type(model).__name__
    with pytest.raises(
        ValueError, match=rf"{name} \(model_type '{model.config.model_type}'\) computes attention its own way"
    ):
        lm.trace(PROMPT, edits=[lw.ScaleAttention(2.0, keys=(0, 2))])


def test_models_without_attention_are_refused():
    config = transformers.MambaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, state_size=4)
    lm = lw.LanguageModel(transformers.MambaForCausalLM(config).eval(), ToyTokenizer(), name="tiny-mamba")
    with pytest.raises(ValueError, match="has no attention heads"):
        lm.trace(PROMPT)


def test_masked_models_do_not_generate():
    with pytest.raises(ValueError, match="masked .* does not generate"):
        build("bert").trace(PROMPT, max_new_tokens=2)


def test_recomputed_attention_shows_a_per_head_edit():
    """On the first edited layer, queries and keys are unchanged by the edit, so the
    edited head's probabilities are the plain ones times the factor, renormalised."""
    lm = build("llama")
    plain = lm.trace(PROMPT)
    edited = lm.trace(PROMPT, edits=[lw.ScaleAttention(4.0, keys=(0, 5), layers=[0], heads=[2])])
    weights = torch.ones(len(PROMPT))
    weights[:5] = 4.0
    expected = plain.attention(0, 2) * weights
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(edited.attention(0, 2), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(edited.attention(0, 1), plain.attention(0, 1))  # other heads untouched
    assert (edited.attention(1, 0) - plain.attention(1, 0)).abs().max() > 1e-4  # later layers see the change


def test_every_generated_token_has_attention(tiny_gpt2):
    """generate() never runs its last token through the model; the trace does, so
    the last row is real attention (it matches a plain full forward), not a gap."""
    tr = tiny_gpt2.trace("Call me Ishmael.", max_new_tokens=5)
    full = tiny_gpt2.trace(tr.input_ids.tolist())  # the whole sequence in one forward pass
    for layer in range(4):
        torch.testing.assert_close(
            tr.attention(layer, 3, queries=len(tr) - 1),
            full.attention(layer, 3, queries=len(tr) - 1),
            atol=1e-5,
            rtol=0,
        )
    uncached = tiny_gpt2.trace("Call me Ishmael.", max_new_tokens=5, use_cache=False)
    torch.testing.assert_close(uncached.attention(2, 1), full.attention(2, 1), atol=1e-5, rtol=0)


def _full_walks(monkeypatch, root: torch.nn.Module) -> list[int]:
    """Counts walks of most of `root`'s module tree (named_modules run through half of it or more)."""
    total, walks = len(list(root.modules())), [0]
    original = torch.nn.Module.named_modules

    def counting(self, *args, **kwargs):
        seen = 0
        for item in original(self, *args, **kwargs):
            seen += 1
            yield item
        walks[0] += seen >= total // 2

    monkeypatch.setattr(torch.nn.Module, "named_modules", counting)
    return walks


def test_what_the_module_tree_holds_is_worked_out_once_per_model(monkeypatch):
    """The fixed work of a run (its attention modules, facts, blocks, attention switch) is done once
    per model: 100 traced runs (plain, generating, edited, steered) walk the tree no more; a
    registered module or a cast model is seen at the next run."""
    from llm_widgets.models import structure

    lm = lw.load_model("tiny-gpt2", progress=False)
    edits = [
        lw.ScaleAttention(2.0, keys=(1, 3)),
        lw.AblateHead(1, 0),
        lw.SteerResidual(torch.ones(lm.facts.hidden_size), [1], 0.5),
        lw.AblateMLP(0, positions=1),
    ]
    settings = [{}, {"max_new_tokens": 3}, {"edits": edits}, {"edits": edits, "max_new_tokens": 2}]
    for kwargs in settings:
        lm.trace("one two three four", **kwargs)
    worked_out = sum(structure.walks.values())
    walks = _full_walks(monkeypatch, lm.model)
    for i in range(100):
        lm.trace("one two three four", **settings[i % len(settings)])
    assert walks[0] == 0 and sum(structure.walks.values()) == worked_out
    lm.model.transformer.h[0].attn.add_module("extra", torch.nn.Identity())  # any registration: looked at again
    assert len(capture.attention_modules(lm.model)) == lm.facts.n_layers and walks[0] > 0
    del lm.model.transformer.h[0].attn.extra
    lm.model.half()  # a cast: the first weight's dtype is in the key
    assert lm.facts.dtype == "float16"
    lm.model.float()
    assert lm.facts.dtype == "float32" and lm.trace("one two").tokens == ["one", " two"]


def test_kept_facts_follow_weights_put_in_place_without_registering():
    """`to_empty` puts new parameters in place without registering them: the key reads the first
    weight where it sits, so facts about a model made on the meta device are worked out again."""
    import transformers

    from llm_widgets.models import structure

    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    device = lambda m: next(m.parameters()).device  # noqa: E731
    assert structure.remembered(model, "device", device).type == "meta"
    model.to_empty(device="cpu")
    assert structure.remembered(model, "device", device).type == "cpu"


def test_a_forward_that_slices_its_layers_keeps_the_facts(monkeypatch, smollm2):
    """Llama's forward slices its ModuleList of layers, which registers every layer on a new list
    each run: registrations outside a kept tree leave its facts as they were."""
    from llm_widgets.models import structure

    smollm2.trace("one two", max_new_tokens=2)
    worked_out = sum(structure.walks.values())
    walks = _full_walks(monkeypatch, smollm2.model)
    for _ in range(5):
        smollm2.trace("one two", max_new_tokens=2)
    assert walks[0] == 0 and sum(structure.walks.values()) == worked_out
