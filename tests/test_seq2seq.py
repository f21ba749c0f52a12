"""Encoder-decoders (T5, BART, Marian, mBART, Pegasus): encoder, decoder and cross-attention
captured exactly, generation unchanged, edits on each kind of attention, attribution over the source."""

import pytest
import torch
import transformers

import llm_widgets as lw
from llm_widgets.models.compat import uses_attention_registry
from tests.test_trace_architectures import VOCAB, build_from

SOURCE = [5, 17, 42, 8, 23, 61, 4, 77, 19]
NEW = 6
EOS = VOCAB - 1  # a token random weights hardly pick: generation runs its length
_BART_LIKE = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=2,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
    eos_token_id=EOS,
    forced_eos_token_id=None,
    pad_token_id=0,
    bos_token_id=1,
    decoder_start_token_id=2,
    init_std=0.3,
)
CONFIGS = {
    "t5": lambda: transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        eos_token_id=EOS,
        pad_token_id=0,
        initializer_factor=3.0,
    ),
    "bart": lambda: transformers.BartConfig(**_BART_LIKE, forced_bos_token_id=None),
    "marian": lambda: transformers.MarianConfig(**_BART_LIKE),
    "mbart": lambda: transformers.MBartConfig(**_BART_LIKE),
    "pegasus": lambda: transformers.PegasusConfig(**_BART_LIKE),
}
CROSS_EDIT = lw.ScaleAttention(30.0, keys=(2, 4), stack="cross")


def build(arch: str, attn: str | None = None, state: dict | None = None) -> lw.LanguageModel:
    return build_from(CONFIGS[arch](), transformers.AutoModelForSeq2SeqLM, f"tiny-{arch}", attn, state)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def lm(request):
    model = build(request.param)
    if not uses_attention_registry(model.model):  # T5 before transformers 5.2x: a clear refusal, tested below
        pytest.skip(f"{request.param} computes attention its own way in transformers {transformers.__version__}")
    return model


@pytest.fixture(scope="module")
def traced(lm):
    return lm.trace(SOURCE, max_new_tokens=NEW)


def test_the_three_attentions_equal_eager(lm, traced):
    assert lm.kind == "seq2seq" and traced.stacks == ("encoder", "decoder", "cross")
    n = len(SOURCE)
    assert traced.n_source == n and traced.n_prompt == n + 1 and len(traced.generated_ids) == NEW
    eager = build(lm.name.removeprefix("tiny-"), "eager", lm.model.state_dict()).model
    with torch.no_grad():
        out = eager(
            input_ids=torch.tensor([SOURCE]), decoder_input_ids=traced.input_ids[n:][None], output_attentions=True
        )
    for stack, reference in (
        ("encoder", out.encoder_attentions),
        ("decoder", out.decoder_attentions),
        ("cross", out.cross_attentions),
    ):
        part = traced.stack(stack)
        assert (part.n_layers, part.n_heads) == (len(reference), reference[0].shape[1])
        for layer in range(part.n_layers):
            for head in range(part.n_heads):
                torch.testing.assert_close(
                    traced.attention(layer, head, stack=stack), reference[layer][0, head], atol=1e-5, rtol=0
                )
    # positions are the trace's: cross-attention's rows are the output tokens, its columns the source
    assert traced.stack("cross").queries == (n, len(traced)) and traced.stack("cross").keys == (0, n)
    torch.testing.assert_close(
        traced.attention(1, 1, queries=(n + 2, n + 4), keys=(3, 7)), traced.attention(1, 1)[2:4, 3:7]
    )  # the default stack is cross-attention
    assert traced.attention_overview(0, 1, stack="encoder").shape == (n, n)
    decoder = traced.stack("decoder")
    assert traced.attention_grid(size=4, stack="decoder").shape == (decoder.n_layers * decoder.n_heads * 4, 4)


def test_generation_is_unchanged(lm, traced):
    with torch.no_grad():
        plain = lm.model.generate(input_ids=torch.tensor([SOURCE]), max_new_tokens=NEW, do_sample=False)
    assert traced.input_ids[len(SOURCE) :].tolist() == plain[0].tolist()
    assert lw.trace.fidelity(lm, SOURCE) == 0.0


def test_factor_one_changes_nothing(lm, traced):
    same = lm.trace(SOURCE, max_new_tokens=NEW, edits=[lw.ScaleAttention(1.0, keys=(0, 5))])
    assert same.generated_ids == traced.generated_ids
    assert same.probability(traced.next_token_id) == pytest.approx(traced.probability(traced.next_token_id), abs=1e-6)


def test_cross_attention_edits_steer_and_agree_with_and_without_cache(lm, traced):
    edits = [
        CROSS_EDIT,
        lw.AblateHead(1, 0, stack="cross"),
        lw.ScaleAttention(0.2, keys=(0, 3), stack="encoder"),
        lw.ScaleAttention(4.0, keys=(len(SOURCE), len(SOURCE) + 2), layers=[1], heads=[1], stack="decoder"),
    ]
    cached = lm.trace(SOURCE, max_new_tokens=NEW, edits=edits)
    uncached = lm.trace(SOURCE, max_new_tokens=NEW, edits=edits, use_cache=False)
    assert cached.generated_ids == uncached.generated_ids
    for stack in ("encoder", "decoder", "cross"):
        torch.testing.assert_close(
            cached.attention(1, 1, stack=stack), uncached.attention(1, 1, stack=stack), atol=1e-5, rtol=0
        )
    steered = lm.trace(SOURCE, edits=[CROSS_EDIT], keep_logits=True)
    assert (steered.logits - lm.trace(SOURCE, keep_logits=True).logits).abs().max() > 1e-4


def test_recomputed_cross_attention_is_the_edited_one(lm):
    """At the first step only cross-attention changes: its layer 0 sees the same queries and keys,
    so the edited map is the plain one with the edited keys x 30, renormalised."""
    plain = lm.trace(SOURCE)
    edited = lm.trace(SOURCE, edits=[CROSS_EDIT])
    before = plain.attention(0, 1, stack="cross")
    expected = before.clone()
    expected[:, 2:4] *= 30.0
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(edited.attention(0, 1, stack="cross"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(edited.attention(0, 1, stack="encoder"), plain.attention(0, 1, stack="encoder"))


def test_attribution_scores_the_source(lm, traced):
    attribution = traced.attribute(step=2)
    assert attribution.tokens == traced.tokens[: len(SOURCE)] and attribution.scores.shape == (len(SOURCE),)
    # = autograd: d log p(token 2 | source, output so far) / d source embeddings . embeddings
    model = lm.model
    embeds = model.get_input_embeddings()(torch.tensor([SOURCE])).detach().requires_grad_(True)
    decoder = traced.input_ids[len(SOURCE) : traced.n_prompt + 2][None]
    logits = model(inputs_embeds=embeds, decoder_input_ids=decoder, use_cache=False).logits[0, -1]
    torch.log_softmax(logits, -1)[traced.generated_ids[2]].backward()
    torch.testing.assert_close(attribution.scores, (embeds.grad * embeds).sum(-1)[0].detach(), atol=1e-5, rtol=1e-4)
    heads = traced.attribute(method="attention_x_grad").head_importance
    assert heads.shape == (traced.stack("cross").n_layers, traced.stack("cross").n_heads)


def test_replay_and_record(lm, traced):
    again = lw.replay(traced.record, lm)
    assert again.generated_ids == traced.generated_ids
    steered = lm.trace(SOURCE, max_new_tokens=NEW, edits=[CROSS_EDIT, lw.AblateHead(0, 1, stack="decoder")])
    assert steered.record["edits"][0]["stack"] == "cross"
    assert lw.replay(steered.record, lm).generated_ids == steered.generated_ids


def test_a_decoder_prompt_is_a_forced_beginning(lm, traced):
    prefix = traced.generated_ids[:2]
    begun = lm.trace(SOURCE, max_new_tokens=NEW - 2, decoder_prompt_ids=prefix)
    assert begun.generated_ids == traced.generated_ids[2:] and begun.n_prompt == traced.n_prompt + 2
    assert begun.input_ids.tolist() == traced.input_ids.tolist()
    torch.testing.assert_close(
        begun.attention(1, 0, stack="decoder"), traced.attention(1, 0, stack="decoder"), rtol=0, atol=1e-5
    )
    assert lw.replay(begun.record, lm).generated_ids == begun.generated_ids  # the record holds the prefix
    start = lm.model.generation_config.decoder_start_token_id
    with torch.no_grad():
        plain = lm.model.generate(
            input_ids=torch.tensor([SOURCE]), decoder_input_ids=torch.tensor([[start, 9, 9]]), max_new_tokens=3
        )
    assert lm.trace(SOURCE, max_new_tokens=3, decoder_prompt_ids=[9, 9]).generated_ids == plain[0, 3:].tolist()


def test_clear_errors(lm, traced):
    with pytest.raises(ValueError, match="decoder_prompt_ids must be a non-empty list of token ids"):
        lm.trace(SOURCE, decoder_prompt_ids=[])
    with pytest.raises(ValueError, match=f"decoder_prompt_ids must be between 0 and {VOCAB - 1}"):
        lm.trace(SOURCE, decoder_prompt_ids=[VOCAB])
    with pytest.raises(ValueError, match="say whose head it is with stack='encoder', 'decoder' or 'cross'"):
        lm.trace(SOURCE, edits=[lw.AblateHead(0, 0)])
    with pytest.raises(ValueError, match="stack 'self'"):
        lm.trace(SOURCE, edits=[lw.ScaleAttention(2.0, keys=1, stack="self")])
    with pytest.raises(ValueError, match="stack must be None or one of"):
        lw.ScaleAttention(2.0, keys=1, stack="crosss")
    with pytest.raises(ValueError, match="trace one source text at a time"):
        lm.trace([SOURCE, SOURCE])
    with pytest.raises(ValueError, match=f"keys {len(SOURCE)} is outside the keys of cross-attention"):
        traced.attention(0, 0, keys=len(SOURCE))
    with pytest.raises(ValueError, match="queries 0 is outside the queries of cross-attention"):
        traced.attention(0, 0, queries=0)
    with pytest.raises(ValueError, match="stack 'self' is not in this trace"):
        traced.attention(0, 0, stack="self")
    heads = traced.stack().n_heads
    with pytest.raises(ValueError, match=f"heads 0 to {heads - 1} in its cross-attention"):
        traced.attention(0, heads)


def test_explain_attention_splits_each_kind_of_attention(lm, traced):
    """The encoder's and the decoder's self-attention read their own stream; the cross-attention's
    queries read the decoder's (its layer's own self-attention included) and its keys the encoder's
    output (every encoder layer, then its final norm): terms add up on post-norm BART and Marian,
    pre-norm mBART and Pegasus, and T5 (its relative position bias a term of its own)."""
    for stack in traced.stacks:
        chosen = traced.stack(stack)
        (_, q_stop), (k_first, _) = chosen.queries, chosen.keys
        row = traced.explain_attention(1, 1, q_stop - 1, stack=stack)
        assert row.residual_error <= 1e-5 * float(row.reference.abs().max()), stack
        attention = traced.attention(1, 1, queries=q_stop - 1, stack=stack)[0]
        keys = [j - k_first for j in row.keys]
        torch.testing.assert_close(torch.softmax(row.scores, -1), attention[keys], rtol=0, atol=1e-5)
        assert ("position bias" in row.extra) == (lm.facts.model_type == "t5")  # (zeros in its cross-attention)
    n = len(SOURCE)
    cross = traced.explain_attention(1, 0, n + 3, 2, depth=2)  # the default stack: cross
    assert cross.stack == "cross" and repr(cross).startswith("AttentionExplanation(cross head 1.0, query")
    assert cross.components[0] == "decoder embedding" and cross.key_components[0] == "encoder embedding"
    assert {"cross head 0.0", "decoder head 1.0", "decoder mlp 0"} <= set(cross.components)
    assert "encoder head 1.0" in cross.key_components and not any("cross" in c for c in cross.key_components)
    assert float(cross.terms().sum()) == pytest.approx(cross.total, rel=1e-5)
    assert sum(cross.key_side().values()) == pytest.approx(cross.total, rel=1e-5)
    assert cross.sources  # depth 2: each split adds up to its component's share, from positions it can read
    for (side, name), rows in cross.sources.items():
        total = (cross.key_side() if side == "key" else cross.query_side())[name]
        assert sum(term for _, term in rows) == pytest.approx(total, rel=1e-4, abs=1e-5)
        reads_source = name.startswith(("encoder", "cross"))
        assert all((t < n) == reads_source for t, _ in rows)
    span = f"query must be an integer >= {n} and <= {n + NEW} \\(the cross attention's queries are positions"
    with pytest.raises(ValueError, match=span):
        traced.explain_attention(0, 0, 1)
    steered = lm.trace(SOURCE, edits=[lw.SteerResidual(torch.ones(lm.facts.hidden_size), [0], 1.0, stack="decoder")])
    with pytest.raises(ValueError, match="does not follow SteerResidual edits yet"):
        steered.explain_attention(1, 0, n)


def test_decoder_only_models_refuse_a_decoder_prompt(tiny_gpt2):
    with pytest.raises(ValueError, match="decoder_prompt_ids begins an encoder-decoder's decoder; tiny-gpt2 is causal"):
        tiny_gpt2.trace("the cat", decoder_prompt_ids=[5])


def test_decoder_only_models_refuse_encoder_decoder_stacks(tiny_gpt2):
    with pytest.raises(ValueError, match="stack 'cross': this model's attention is 'self'"):
        tiny_gpt2.trace("Hello there", edits=[lw.ScaleAttention(2.0, keys=1, stack="cross")])
    tr = tiny_gpt2.trace("Hello there")
    assert tr.stacks == ("self",) and tr.n_source == 0


def test_attention_view_switches_between_the_three_kinds(lm, traced):
    from tests.test_widgets import decode_rows_uint8

    view = lw.AttentionView(traced)
    n = len(SOURCE)
    cross = traced.stack("cross")
    assert view.stacks == ["encoder", "decoder", "cross"] and view.stack == "cross" and view.n_source == n
    assert (view.query_range, view.key_range) == ([n, len(traced)], [0, n])
    assert (view.n_layers, view.n_heads) == (cross.n_layers, cross.n_heads)
    message, buffers = view.answer({"what": "overview", "layer": 1, "head": 1})
    assert decode_rows_uint8(message, buffers).shape == (len(traced) - n, n)
    message, buffers = view.answer({"what": "heads", "layer": 0, "query": n + 2})  # over every position, 0 off-source
    rows = decode_rows_uint8(message, buffers)
    assert rows.shape == (cross.n_heads, len(traced)) and rows[:, n:].max() == 0 and rows.sum(1).min() > 0.98
    with pytest.raises(Exception, match="query 0 is out of range: -1 \\(none\\) or 9 to"):
        view.query = 0  # a source token asks nothing in cross-attention
    view.layer, view.query = 1, n + 1
    view.stack = "encoder"
    encoder = traced.stack("encoder")
    assert (view.query, view.layer, view.query_range, view.key_range) == (-1, 0, [0, n], [0, n])
    assert (view.n_layers, view.n_heads) == (encoder.n_layers, encoder.n_heads)
    view.query = 0
    assert view.figure().title.endswith("(encoder attention)")
    message, _ = view.answer({"what": "export", "format": "svg"})
    assert message["name"] == "attention-encoder-L0-H0.svg"
    with pytest.raises(Exception, match="stack 'self' is not in this trace"):
        view.stack = "self"


def test_editor_steers_cross_attention(lm, traced):
    editor = lw.AttentionEditor(lm, SOURCE, max_new_tokens=NEW)
    assert editor.stack == "cross" and editor.unedited_tokens == traced.tokens[traced.n_prompt :]
    editor.edit_specs = [
        {**CROSS_EDIT.to_dict()},
        {"kind": "ablate_head", "layer": 0, "head": 0, "mode": "zero", "stack": "cross"},
    ]
    direct = lm.trace(SOURCE, max_new_tokens=NEW, edits=editor.edits)
    assert editor.error == "" and editor.new_tokens == direct.tokens[direct.n_prompt :]
    assert editor.query_range == [len(SOURCE), len(direct)]
    editor.edit_specs = [{"kind": "ablate_head", "layer": 0, "head": 0, "mode": "zero"}]  # whose head? refused, kept
    assert "say whose head it is" in editor.error and len(editor.edits) == 2
    editor.picked = [[0, 1]]
    editor.stack = "decoder"
    assert editor.picked == []


def test_analyses_of_one_stack_of_blocks_refuse_clearly(lm, traced):
    with pytest.raises(ValueError, match="is an encoder-decoder"):
        traced.logit_lens()
    with pytest.raises(ValueError, match="is an encoder-decoder"):
        lw.profile(lm, SOURCE)
    assert repr(traced).startswith(f"Trace('{lm.name}': {len(SOURCE)} source + {NEW} generated tokens")


def test_the_bundled_translator():
    mt = lw.load_model("tiny-translator", progress=False)
    assert mt.kind == "seq2seq" and mt.source["bundled"] == "tiny-translator" and mt.source["weights_sha256"]
    tr = mt.trace("failed to read directory", max_new_tokens=16)
    assert tr.output_text == " Lesen des Verzeichnisses fehlgeschlagen"
    assert tr.prompt_text == " failed to read directory" and tr.tokens[tr.n_source] == "<pad>"  # the start token
    assert lw.replay(tr.record).generated_ids == tr.generated_ids  # loads the recorded bundled model


def test_an_encoder_decoder_outside_the_registry_is_refused_clearly():
    t5 = build("t5")
    if uses_attention_registry(t5.model):
        pytest.skip(f"T5 goes through the attention registry in transformers {transformers.__version__}")
    with pytest.raises(ValueError, match="could not all be found"):
        t5.trace(SOURCE)


def test_the_explanation_view_follows_the_editors_kind_of_attention_and_ablates_there(lm):
    editor = lw.AttentionEditor(lm, SOURCE, max_new_tokens=NEW)
    view = lw.ExplanationView(editor)
    n = len(SOURCE)
    editor.layer, editor.head, editor.cell = 1, 0, [n + 2, 3]  # a click on the cross-attention's heatmap
    assert view.error == "" and view.title.startswith(f"why cross head 1.0 at query {n + 2}")
    assert view.explanation.key_components[0] == "encoder embedding"
    assert all(
        name in ("bias", "other", "total") or name.startswith(("decoder ", "cross ")) for name in view.row_labels
    )
    column = next(i for i, name in enumerate(view.column_labels) if name.startswith("encoder head"))
    name = view.column_labels[column]
    view.selected = [len(view.row_labels) - 1, column]  # that key-side component's total: ablate it at key 3
    layer, head = map(int, name.removeprefix("encoder head ").split("."))
    assert lw.AblateHead(layer, head, stack="encoder", positions=3) in editor.edits
    assert view.detail[-1].startswith(f"ablated {name} at position 3 in the editor")
    editor.stack = "encoder"
    editor.cell = [4, 2]
    assert view.title.startswith("why encoder head") and view.explanation.stack == "encoder"
