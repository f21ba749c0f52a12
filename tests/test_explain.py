"""trace.explain_attention: a head's pre-softmax score split into (query-side component x key-side
component) terms that add up to the run's own score, on every architecture (QK-norms, sandwich
norms, softcaps, sliding windows, GQA), under edits; a planted induction circuit and SmolLM2's
induction heads explained by their previous-token heads; bad input named."""

from __future__ import annotations

import math

import pytest
import torch
import traitlets
import transformers

import llm_widgets as lw

from .test_trace_architectures import CONFIGS, MASKED, PROMPT, SMALL, ToyTokenizer, build, build_from

CAUSAL = sorted(set(CONFIGS) - MASKED)


def _softmax_of(explanation) -> torch.Tensor:
    scores = explanation.scores
    if explanation.softcap:
        scores = torch.tanh(scores / explanation.softcap) * explanation.softcap
    return torch.softmax(scores, -1)


def _build(arch: str) -> lw.LanguageModel:
    if arch == "olmo2":  # post-norms, and a QK-norm over the whole projection
        config = transformers.Olmo2Config(**SMALL, num_key_value_heads=2)
        return build_from(config, transformers.AutoModelForCausalLM, "tiny-olmo2")
    return build(arch)


@pytest.mark.parametrize("arch", [*CAUSAL, "olmo2"])
def test_the_terms_add_up_to_the_runs_scores(arch):
    lm = _build(arch)
    trace = lm.trace(PROMPT)
    for layer in range(2):
        row = trace.explain_attention(layer, 1, 10)
        assert row.residual_error <= 1e-4 * float(row.reference.abs().max())
        attention = trace.attention(layer, 1, queries=10)[0]
        torch.testing.assert_close(_softmax_of(row), attention[row.keys], rtol=0, atol=1e-5)
        assert float(attention.sum() - attention[row.keys].sum()) == pytest.approx(0, abs=1e-6)  # the rest masked
        pair = trace.explain_attention(layer, 1, 10, row.keys[-2])
        assert pair.total == pytest.approx(float(row.scores[-2]), rel=1e-5)
        assert float(pair.terms().sum()) == pytest.approx(pair.total, rel=1e-5)
        assert sum(pair.query_side().values()) == pytest.approx(pair.total, rel=1e-5)
        assert sum(pair.key_side().values()) == pytest.approx(pair.total, rel=1e-5)
    heads = [c for c in pair.components if c.startswith("head 0.")]
    assert len(heads) == lm.facts.n_heads and pair.components[-2:] == ["biases", "bias"]


def test_post_norm_blocks_pass_every_component_through_their_norms():
    """BERT normalises the residual stream after each sublayer: held at their run scales the norms
    are linear maps, so the earlier components pass through them and the terms still add up."""
    trace = build("bert").trace(PROMPT)
    for layer in range(2):
        row = trace.explain_attention(layer, 1, 3)  # not causal: every key
        assert len(row.keys) == len(trace) and row.residual_error <= 1e-4 * float(row.reference.abs().max())
        torch.testing.assert_close(
            torch.softmax(row.scores, -1), trace.attention(layer, 1, queries=3)[0], rtol=0, atol=1e-5
        )
    pair = trace.explain_attention(1, 1, 3, 2)
    assert pair.components[:2] == ["embedding", "head 0.0"] and "mlp 0" in pair.components
    assert float(pair.terms().sum()) == pytest.approx(pair.total, rel=1e-5)
    assert "token embedding" not in pair.components  # (its embeddings are normalised together: one component)
    deep = trace.explain_attention(1, 1, 3, 2, depth=2)  # a head's share, split by source, through the norms after it
    assert deep.sources
    for (side, name), rows in deep.sources.items():
        total = (deep.key_side() if side == "key" else deep.query_side())[name]
        assert sum(term for _, term in rows) == pytest.approx(total, rel=1e-4, abs=1e-7)


def test_an_edit_is_its_own_term():
    lm = build("llama")
    edit = lw.ScaleAttention(4.0, keys=(2, 4), layers=[1])
    trace = lm.trace(PROMPT, edits=[edit])
    row = trace.explain_attention(1, 0, 10)
    expected = torch.tensor([math.log(4.0) if 2 <= j < 4 else 0.0 for j in row.keys])
    torch.testing.assert_close(row.extra["edit"], expected)
    assert row.residual_error < 1e-5
    torch.testing.assert_close(_softmax_of(row), trace.attention(1, 0, queries=10)[0][row.keys], rtol=0, atol=1e-5)
    # the edit changed layer 1's output, not its own queries and keys: the products are the plain run's
    plain = lm.trace(PROMPT).explain_attention(1, 0, 10)
    torch.testing.assert_close(row.scores - row.extra["edit"], plain.scores, rtol=0, atol=1e-5)


def test_a_table_and_the_largest_terms():
    trace = build("gpt2").trace(PROMPT)
    pair = trace.explain_attention(1, 2, 12, 5)
    top = pair.top(3)
    assert len(top) == 3 and abs(top[0][2]) >= abs(top[1][2]) >= abs(top[2][2])
    frame = pair.to_dataframe()
    assert len(frame) == len(pair.components) ** 2 and frame["term"].sum() == pytest.approx(pair.total, rel=1e-5)
    assert pair.components[:2] == ["token embedding", "position embedding"]  # GPT-2's learned positions apart
    row = trace.explain_attention(1, 2, 12)
    torch.testing.assert_close(row.versus(5, 7), row.terms(5) - row.terms(7))
    assert "residual error" in repr(row)


V, T = 16, 32  # the planted model: vocabulary, positions
D = 3 * V + T  # residual: the token, the previous token, the position, the answer (one-hot each)


def _planted() -> lw.LanguageModel:
    """A two-layer attention-only GPT-2 whose head 0.0 copies each position's previous token into
    the residual stream and whose head 1.0 attends to where the previous token is the current one
    and predicts the token there."""
    config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=T,
        n_embd=D,
        n_layer=2,
        n_head=2,
        n_inner=4,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    sharp = 12.0
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.wte.weight[:, :V] = torch.eye(V)
        model.transformer.wpe.weight[:, 2 * V : 2 * V + T] = torch.eye(T)
        first = model.transformer.h[0].attn.c_attn.weight  # [D, 3D]: queries, keys, values
        for i in range(T - 1):
            first[2 * V + i, i] = sharp  # the query of position i ...
            first[2 * V + i, D + i + 1] = sharp  # ... meets the key of position i - 1
        first[:V, 2 * D : 2 * D + V] = torch.eye(V)  # its value: the token
        model.transformer.h[0].attn.c_proj.weight[:V, V : 2 * V] = torch.eye(V)  # written to the previous-token slot
        second = model.transformer.h[1].attn.c_attn.weight
        second[:V, :V] = sharp * torch.eye(V)  # the query: the current token
        second[V : 2 * V, D : D + V] = sharp * torch.eye(V)  # the key: the previous token
        second[:V, 2 * D : 2 * D + V] = torch.eye(V)  # its value: the token there ...
        model.transformer.h[1].attn.c_proj.weight[:V, 2 * V + T :] = torch.eye(V)  # ... written as the answer
        model.lm_head.weight[:, 2 * V + T :] = sharp * torch.eye(V)  # which is the prediction
    return lw.LanguageModel(model, ToyTokenizer(), name="planted-induction")


def test_a_planted_induction_head_is_explained_by_its_previous_token_head():
    lm = _planted()
    sequence = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:10].tolist()
    trace = lm.trace(sequence + sequence)
    for query in range(12, 20):
        assert int(trace.attention(1, 0, queries=query)[0].argmax()) == query - 9  # induction
    explained = trace.explain_attention(1, 0, 15, 6)
    key_side = max(explained.key_side().items(), key=lambda kv: abs(kv[1]))
    query_side = max(explained.query_side().items(), key=lambda kv: abs(kv[1]))
    assert key_side[0] == "head 0.0" and query_side[0] == "token embedding"
    assert explained.top(1)[0][:2] == ("token embedding", "head 0.0")
    assert explained.residual_error <= 1e-6 * abs(explained.total)
    # depth 2: key 6 is attractive because head 0.0 copied token 5 (the query's token) into it
    deeper = trace.explain_attention(1, 0, 15, 6, depth=2)
    sources = deeper.by_source("head 0.0")
    assert sources[0][:2] == (5, str(sequence[5])) and sequence[5] == sequence[15 - 10]
    assert sum(term for _, _, term in sources) == pytest.approx(deeper.key_side()["head 0.0"], rel=1e-5)
    with pytest.raises(lw.InputError, match="'mlp 0' is not split by source on the key side"):
        deeper.by_source("mlp 0")


def test_a_sweep_over_positions_finds_the_circuit_a_last_token_sweep_cannot_see():
    lm = _planted()
    sequence = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:10].tolist()
    trace = lm.trace(sequence + sequence, max_new_tokens=1)
    assert trace.generated_ids == [sequence[0]]  # after the second copy's end: the first copy's next token
    sweep = lw.ablation_sweep(trace, positions=(11, 19), progress=False)
    assert sweep.quantity == "mean log p(next token) at positions 11-18" and sweep.positions == list(range(11, 19))
    with torch.no_grad():
        by_hand = torch.log_softmax(lm.model(torch.tensor([sequence + sequence])).logits[0, 11:19], -1)
    expected = by_hand.gather(-1, torch.tensor(sequence[2:10])[:, None]).mean()
    assert sweep.clean_score == pytest.approx(float(expected), abs=1e-5)
    assert {(layer, head) for layer, head, _ in sweep.top_heads(2)} == {(0, 0), (1, 0)}  # the circuit
    assert all(change < -1 for _, _, change in sweep.top_heads(2)) and sweep.effect[:, 1].abs().max() == 0
    patched = lw.patch(
        lm, sequence + sequence, sequence[:10] + sequence[::-1], site="heads", positions=(11, 19), progress=False
    )
    assert patched.positions == list(range(11, 19)) and patched.top(1)[0][0] in {(0, 0), (1, 0)}
    with pytest.raises(lw.InputError, match="leave target and contrast None"):
        lw.ablation_sweep(trace, target=3, positions=(11, 19), progress=False)
    with pytest.raises(lw.InputError, match="positions span \\(11, 20\\) must lie within 0 to 19"):
        lw.ablation_sweep(trace, positions=(11, 20), progress=False)


def test_smollm2s_induction_head_reads_a_previous_token_head(smollm2):
    n = 30
    sequence = torch.randint(1000, 20000, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    ids = [smollm2.tokenizer.bos_token_id or 1] + sequence + sequence
    trace = smollm2.trace(ids)
    layers, heads = smollm2.facts.n_layers, smollm2.facts.n_heads
    second = torch.arange(n + 1, len(ids))
    induction = torch.zeros(layers, heads)
    previous = torch.zeros(layers, heads)
    for layer in range(layers):
        for head in range(heads):
            attention = trace.attention(layer, head)
            induction[layer, head] = attention[second, second - n + 1].mean()
            previous[layer, head] = attention[torch.arange(1, len(ids)), torch.arange(len(ids) - 1)].mean()
    layer, head = divmod(int(induction.argmax()), heads)
    query = len(ids) - 5
    explained = trace.explain_attention(layer, head, query, query - n + 1)
    top = max(explained.key_side().items(), key=lambda kv: abs(kv[1]))[0]
    assert top.startswith("head ")
    source_layer, source_head = map(int, top.removeprefix("head ").split("."))
    assert source_layer < layer and previous[source_layer, source_head] > 0.5  # a previous-token head
    assert explained.residual_error <= 1e-5 * abs(explained.total)
    deeper = trace.explain_attention(layer, head, query, query - n + 1, depth=2)
    read = deeper.by_source(top)
    assert read[0][0] == query - n  # it copied the token before the key: the query's own token
    assert ids[read[0][0]] == ids[query]
    for (side, name), split in deeper.sources.items():
        total = (deeper.key_side() if side == "key" else deeper.query_side())[name]
        assert sum(term for _, term in split) == pytest.approx(total, rel=1e-4, abs=1e-4)


def test_a_hybrids_state_space_layer_is_a_component_and_its_own_layer_is_refused():
    """Jamba: layer 0 is a Mamba layer (no attention to explain), layer 1 attends; what the Mamba
    mixer adds to the stream is a component of its own."""
    config = transformers.JambaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        mamba_d_state=4,
        mamba_d_conv=2,
        use_mamba_kernels=False,
        pad_token_id=0,
    )
    trace = build_from(config, transformers.AutoModelForCausalLM, "tiny-jamba").trace(list(range(3, 15)))
    with pytest.raises(lw.InputError, match="layer 0 has no attention: tiny-jamba is a hybrid model"):
        trace.explain_attention(0, 1, 10)
    row = trace.explain_attention(1, 1, 10)
    assert row.components == ["embedding", "mixer 0", "mlp 0", "biases", "bias"]
    assert row.residual_error <= 1e-6 * float(row.reference.abs().max())
    assert abs(row.key_side()["mixer 0"]) > 0


def test_bad_input_is_named():
    trace = build("mistral").trace(PROMPT)  # a sliding window of 6
    with pytest.raises(lw.InputError, match="query must be an integer >= 0 and <= 13; got 14"):
        trace.explain_attention(0, 0, 14)
    with pytest.raises(lw.InputError, match="query 5 cannot attend to key 7: it sees keys 0 to 5"):
        trace.explain_attention(0, 0, 5, 7)
    with pytest.raises(lw.InputError, match="query 10 cannot attend to key 2: it sees keys 5 to 10 within its sliding"):
        trace.explain_attention(0, 0, 10, 2)
    with pytest.raises(lw.InputError, match="head must be an integer"):
        trace.explain_attention(0, 4, 10)
    with pytest.raises(lw.InputError, match="depth must be an integer >= 1 and <= 2"):
        trace.explain_attention(1, 0, 10, 8, depth=3)
    with pytest.raises(lw.InputError, match="not among the explained keys"):
        trace.explain_attention(0, 0, 10, 8).terms(9)


def test_the_view_follows_the_clicked_cell_and_ablates_a_head_in_the_editor():
    lm = _planted()
    sequence = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:10].tolist()
    editor = lw.AttentionEditor(lm, sequence + sequence, max_new_tokens=2)
    editor.layer, editor.head = 1, 0
    view = lw.ExplanationView(editor)
    assert view.summary == ["click a cell of the attention heatmap to explain its score"]
    editor.cell = [15, 6]  # what a click on that heatmap cell sends
    assert view.title == f"why head 1.0 at query 15 {str(sequence[5])!r} attends to key 6 {str(sequence[6])!r}"
    assert view.row_labels[-1] == view.column_labels[-1] == "total" and view.strip_values == []
    column = view.column_labels.index("head 0.0")
    assert view.values[-1][column] == pytest.approx(view.explanation.key_side()["head 0.0"])
    assert view.values[-1][-1] == pytest.approx(view.explanation.total, rel=1e-5)
    view.selected = [0, column]
    assert view.detail[0].startswith("token embedding (query side) x head 0.0 (key side): +") and not editor.edits
    view.selected = [len(view.row_labels) - 1, column]  # a head's total: ablated in the editor
    assert editor.edits == [lw.AblateHead(0, 0, positions=6)]  # at the key, where it made the key attractive
    assert view.detail[-1].startswith("ablated head 0.0 at position 6 in the editor")
    assert view.explanation.trace is editor.trace and view.explanation.key_side()["head 0.0"] == 0.0
    editor.cell = [15, -1]  # a pooled cell: its whole row, the keys' scores above the table
    assert len(view.strip_values) == 16 and view.strip_labels[view.strip_mark].startswith(f"{view.explanation.key}:")
    with pytest.raises(traitlets.TraitError, match="cell must be"):
        editor.cell = [15, 40]
    window = lw.AttentionView(build("mistral").trace(PROMPT))
    follower = lw.ExplanationView(window)
    window.cell = [10, 2]  # outside the sliding window: said, nothing else changes
    assert "cannot attend to key 2" in follower.error
    view.close()
    follower.close()


def test_an_mlp_s_total_ablates_that_mlp_at_the_key_in_the_editor(tiny_gpt2):
    editor = lw.AttentionEditor(
        tiny_gpt2, "It is a truth universally acknowledged, that a single man", max_new_tokens=2
    )
    editor.layer, editor.head = 3, 1
    view = lw.ExplanationView(editor)
    editor.cell = [11, 5]
    column = view.column_labels.index("mlp 0")  # the largest key-side component here
    view.selected = [len(view.row_labels) - 1, column]
    assert editor.edits == [lw.AblateMLP(0, positions=5)]  # at the key, where the MLP wrote what made it attractive
    assert view.detail[-1].startswith("ablated mlp 0 at position 5 in the editor")
    assert view.explanation.key_side()["mlp 0"] == 0.0 and view.explanation.residual_error < 1e-4
    view.close()
