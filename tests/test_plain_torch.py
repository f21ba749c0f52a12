"""Plain PyTorch transformers (nn.TransformerEncoderLayer, a hand-written block around
nn.MultiheadAttention), no transformers in them: traced, viewed, edited and attributed."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import llm_widgets as lw

V, D, H, LAYERS = 40, 32, 4, 3
VOCAB = [f"w{i}" for i in range(V)]
PROMPT = "w1 w5 w9 w3 w7 w2"


class EncoderLM(nn.Module):
    """A GPT in a few lines: nn.TransformerEncoder with a causal mask."""

    def __init__(self, norm_first: bool = False):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(64, D) * 0.3)
        layer = nn.TransformerEncoderLayer(D, H, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D, V)

    def forward(self, ids):
        n = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        return self.head(self.encoder(self.embed(ids) + self.pos[:n], mask=mask, is_causal=True))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, H)  # sequence-first, as nn.MultiheadAttention defaults
        self.norm = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 64), nn.GELU(), nn.Linear(64, D))

    def forward(self, x, mask):
        h = self.norm(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(x)


class HandWrittenLM(nn.Module):
    """Blocks of its own around nn.MultiheadAttention, with a boolean causal mask."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(D, V)

    def forward(self, ids):
        n = ids.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        x = self.embed(ids).transpose(0, 1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x.transpose(0, 1))


MODELS = {"encoder": EncoderLM, "norm_first": lambda: EncoderLM(norm_first=True), "hand_written": HandWrittenLM}


@pytest.fixture(scope="module", params=sorted(MODELS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def lm(kind):
    torch.manual_seed(0)
    return lw.LanguageModel(MODELS[kind]().eval(), vocab=VOCAB, name=f"torch-{kind}")


def reference_attention(module, ids, call=None) -> list[torch.Tensor]:
    """Each attention's weights as nn.MultiheadAttention returns them with need_weights=True, per head,
    in the order they run (`call(module)` runs it, else module(ids))."""
    weights = []

    def keep(mha, args, kwargs, output):
        weights.append(output[1][0].detach())

    hooks = []
    for mha in (m for m in module.modules() if isinstance(m, nn.MultiheadAttention)):
        hooks.append(
            mha.register_forward_pre_hook(
                lambda m, args, kwargs: (args, {**kwargs, "need_weights": True, "average_attn_weights": False}),
                with_kwargs=True,
            )
        )
        hooks.append(mha.register_forward_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            call(module) if call else module(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return weights


def test_attention_equals_need_weights_and_outputs_are_unchanged(lm):
    tr = lm.trace(PROMPT, max_new_tokens=4, keep_logits=True)
    assert lm.plain and lm.kind == "causal" and (lm.facts.n_layers, lm.facts.n_heads) == (LAYERS, H)
    reference = reference_attention(lm.model, tr.input_ids[None])
    assert len(reference) == LAYERS
    for layer in range(LAYERS):
        for head in range(H):
            torch.testing.assert_close(tr.attention(layer, head), reference[layer][head], atol=1e-5, rtol=0)
    ids = tr.input_ids[None, : tr.n_prompt]
    with torch.no_grad():
        plain = lm.model(ids)[0]
    assert torch.equal(tr.logits, plain)  # the very same computation
    sequence = ids  # generation: the argmax, step by step
    with torch.no_grad():
        for _ in range(4):
            sequence = torch.cat([sequence, lm.model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tr.input_ids.tolist() == sequence[0].tolist()
    assert tr.tokens[0] == "w1" and lw.trace.fidelity(lm, PROMPT) == 0.0


def test_an_unedited_run_keeps_torchs_fast_path(monkeypatch):
    torch.manual_seed(0)
    lm = lw.LanguageModel(EncoderLM().eval(), vocab=VOCAB)
    calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: calls.append(1) or fused(*a, **k))
    lm.trace(PROMPT)
    assert len(calls) == LAYERS  # every layer ran fused, and was captured all the same
    calls.clear()
    lm.trace(PROMPT, edits=[lw.ScaleAttention(3.0, keys=(0, 2))])
    assert calls == [] and torch.backends.mha.get_fastpath_enabled()  # edits: off for the run, then back on


def test_edits_steer_and_the_recomputed_map_is_the_edited_one(lm):
    plain = lm.trace(PROMPT, keep_logits=True)
    same = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(1.0, keys=(0, 3))])
    torch.testing.assert_close(same.logits, plain.logits, atol=1e-5, rtol=0)
    edited = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(20.0, keys=(0, 2), layers=[0])])
    assert (edited.logits - plain.logits).abs().max() > 1e-3
    expected = plain.attention(0, 1).clone()  # layer 0 sees the same queries and keys: x20, renormalised
    expected[:, 0:2] *= 20.0
    torch.testing.assert_close(edited.attention(0, 1), expected / expected.sum(-1, keepdim=True), atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="masked every key"):
        masked = lm.trace(PROMPT, edits=[lw.ScaleAttention(0.0, keys=(0, 2))])
    assert masked.attention(2, 0)[2:, :2].abs().max() < 1e-6


def test_attribution_is_autograd(lm):
    tr = lm.trace(PROMPT)
    attribution = tr.attribute()
    ids = tr.input_ids[None]
    embed = lm.model.embed
    x = embed(ids).detach().requires_grad_(True)
    hook = embed.register_forward_hook(lambda m, a, out: x)
    try:
        torch.log_softmax(lm.model(ids)[0, -1], -1)[tr.next_token_id].backward()
    finally:
        hook.remove()
    torch.testing.assert_close(attribution.scores, (x.grad * x).sum(-1)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention_x_grad needs attention weights"):
        tr.attribute(method="attention_x_grad")


def test_the_views_show_it(lm):
    from tests.test_widgets import decode_rows_uint8

    view = lw.AttentionView(lm.trace(PROMPT, max_new_tokens=2))
    assert decode_rows_uint8(*view.answer({"what": "grid", "size": 4})).shape == (LAYERS * H * 4, 4)
    editor = lw.AttentionEditor(lm, PROMPT, max_new_tokens=3)
    editor.edit_specs = [lw.ScaleAttention(20.0, keys=(0, 2)).to_dict()]
    assert editor.error == "" and editor.new_tokens == lm.trace(PROMPT, max_new_tokens=3, edits=editor.edits).tokens[6:]
    explained = lw.ExplanationView(editor)
    editor.layer, editor.head, editor.cell = 2, 1, [5, 2]  # a click on a cell: why it attends there
    assert explained.error == "" and explained.title.startswith("why head 2.1 at query 5")
    column = next(i for i, name in enumerate(explained.column_labels) if name.startswith("head "))
    layer, head = map(int, explained.column_labels[column].removeprefix("head ").split("."))
    explained.selected = [len(explained.row_labels) - 1, column]  # that head's total: ablated in the editor
    assert lw.AblateHead(layer, head) in editor.edits and editor.error == ""
    assert explained.detail[-1].startswith(f"ablated head {layer}.{head} at every position in the editor")


def test_clear_errors(lm):
    with pytest.raises(ValueError, match="'hello' is not in this model's vocabulary"):
        lm.trace("w1 hello")
    with pytest.raises(ValueError, match="are for transformers' generate"):
        lm.trace(PROMPT, max_new_tokens=2, top_p=0.9)
    with pytest.raises(TypeError, match="neither a Hugging Face transformers model"):
        lw.LanguageModel(nn.Linear(3, 3), vocab=VOCAB)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        lw.LanguageModel(EncoderLM())


def test_ablating_a_head_is_zeroing_its_slice_of_the_output_projection(lm):
    layer, head = 1, 2
    ablated = lm.trace(PROMPT, keep_logits=True, edits=[lw.AblateHead(layer, head)])
    reference = copy.deepcopy(lm.model)
    mha = [m for m in reference.modules() if isinstance(m, nn.MultiheadAttention)][layer]
    with torch.no_grad():
        mha.out_proj.weight[:, head * mha.head_dim : (head + 1) * mha.head_dim] = 0
        expected = reference(ablated.input_ids[None])[0]
    torch.testing.assert_close(ablated.logits, expected, atol=1e-5, rtol=0)
    assert (ablated.logits - lm.trace(PROMPT, keep_logits=True).logits).abs().max() > 1e-4
    assert torch.backends.mha.get_fastpath_enabled()


class Seq2Seq(nn.Module):
    """An encoder-decoder around nn.Transformer: forward(source ids, target ids) -> logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)  # shared by source and target
        self.pos = nn.Parameter(torch.randn(64, D) * 0.3)
        self.transformer = nn.Transformer(
            D, H, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(D, V)

    def forward(self, src, tgt):
        source = self.embed(src) + self.pos[: src.shape[1]]
        target = self.embed(tgt) + self.pos[: tgt.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.transformer(source, target, tgt_mask=mask, tgt_is_causal=True))


@pytest.fixture(scope="module")
def translator():
    torch.manual_seed(0)
    tokenizer = lw.VocabTokenizer(VOCAB, bos_token="w0", eos_token="w39")
    return lw.LanguageModel(Seq2Seq().eval(), tokenizer=tokenizer, name="torch-seq2seq")


def test_an_nn_transformer_encoder_decoder(translator):
    lm = translator
    tr = lm.trace(PROMPT, max_new_tokens=5)
    n = tr.n_source
    assert lm.kind == "seq2seq" and tr.stacks == ("encoder", "decoder", "cross") and n == 6
    assert tr.tokens[n] == "w0" and tr.stack("cross").queries == (n, len(tr)) and tr.stack("cross").keys == (0, n)
    reference = reference_attention(lm.model, None, call=lambda m: m(tr.input_ids[None, :n], tr.input_ids[None, n:]))
    encoder, decoder, cross = reference[:2], reference[2::2], reference[3::2]  # the call order
    for stack, weights in (("encoder", encoder), ("decoder", decoder), ("cross", cross)):
        assert tr.stack(stack).n_layers == len(weights)
        for layer, per_head in enumerate(weights):
            for head in range(H):
                torch.testing.assert_close(tr.attention(layer, head, stack=stack), per_head[head], atol=1e-5, rtol=0)
    target = tr.input_ids[None, n : n + 1]  # greedy, as the model itself would
    with torch.no_grad():
        for _ in range(5):
            target = torch.cat([target, lm.model(tr.input_ids[None, :n], target)[:, -1].argmax(-1, keepdim=True)], 1)
    assert tr.input_ids[n:].tolist() == target[0].tolist()[: len(tr) - n]
    assert lw.trace.fidelity(lm, PROMPT) == 0.0


def test_steering_an_nn_transformer_s_cross_attention(translator):
    plain = translator.trace(PROMPT, keep_logits=True)
    edit = lw.ScaleAttention(20.0, keys=(1, 3), stack="cross", layers=[0])
    edited = translator.trace(PROMPT, keep_logits=True, edits=[edit])
    assert (edited.logits - plain.logits).abs().max() > 1e-3
    expected = plain.attention(0, 1, stack="cross").clone()  # the first step: same queries and keys in layer 0
    expected[:, 1:3] *= 20.0
    torch.testing.assert_close(
        edited.attention(0, 1, stack="cross"), expected / expected.sum(-1, keepdim=True), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(edited.attention(1, 0, stack="encoder"), plain.attention(1, 0, stack="encoder"))
    ablated = translator.trace(PROMPT, keep_logits=True, edits=[lw.AblateHead(1, 0, stack="cross")])
    assert (ablated.logits - plain.logits).abs().max() > 1e-4
    attribution = plain.attribute()
    src = plain.input_ids[None, : plain.n_source]
    x = translator.model.embed(src).detach().requires_grad_(True)
    swap = translator.model.embed.register_forward_hook(lambda m, a, out: x if a[0].shape == src.shape else None)
    try:
        logits = translator.model(src, plain.input_ids[None, plain.n_source : plain.n_prompt])[0, -1]
    finally:
        swap.remove()
    torch.log_softmax(logits, -1)[plain.next_token_id].backward()
    torch.testing.assert_close(attribution.scores, (x.grad * x).sum(-1)[0], atol=1e-5, rtol=1e-4)
    view = lw.AttentionView(plain)
    assert view.stacks == ["encoder", "decoder", "cross"] and view.key_range == [0, plain.n_source]


def test_explain_attention_splits_a_plain_models_scores(lm):
    """Post-norm nn.TransformerEncoderLayer, pre-norm, a hand-written sequence-first block: each head's
    share worked out again from nn.MultiheadAttention's weights (it applies its out projection inside
    one call); under edits, a zeroed head's share is zero and a scaled key's factor a term of its own."""
    tr = lm.trace(PROMPT, max_new_tokens=3)
    for layer in range(LAYERS):
        row = tr.explain_attention(layer, 1, len(tr) - 2)
        assert row.residual_error <= 1e-5 * float(row.reference.abs().max())
        attention = tr.attention(layer, 1, queries=len(tr) - 2)[0]
        torch.testing.assert_close(torch.softmax(row.scores, -1), attention[row.keys], rtol=0, atol=1e-6)
    assert row.components[:6] == ["embedding", *(f"head 0.{h}" for h in range(H)), "mlp 0"]
    pair = tr.explain_attention(2, 0, len(tr) - 1, 3, depth=2)
    assert pair.sources
    for (side, name), rows in pair.sources.items():
        total = (pair.key_side() if side == "key" else pair.query_side())[name]
        assert sum(term for _, term in rows) == pytest.approx(total, rel=1e-4, abs=1e-6)
    edits = [lw.ScaleAttention(3.0, keys=(1, 3), layers=[2]), lw.AblateHead(0, 1)]
    edited = lm.trace(PROMPT, max_new_tokens=3, edits=edits).explain_attention(2, 1, len(tr) - 2)
    assert edited.residual_error <= 1e-5 * float(edited.reference.abs().max())
    assert edited.extra["edit"][1:3].tolist() == pytest.approx([math.log(3.0)] * 2)
    assert edited.key_side()["head 0.1"] == 0 and edited.query_side()["head 0.1"] == 0
    assert torch.backends.mha.get_fastpath_enabled()  # (turned off for the explanation's forward only)


def test_explain_attention_on_an_nn_transformer(translator):
    tr = translator.trace(PROMPT, max_new_tokens=4)
    for stack in tr.stacks:
        chosen = tr.stack(stack)
        (_, q_stop), (k_first, _) = chosen.queries, chosen.keys
        for layer in range(chosen.n_layers):
            row = tr.explain_attention(layer, 1, q_stop - 1, stack=stack)
            assert row.residual_error <= 1e-5 * float(row.reference.abs().max())
            attention = tr.attention(layer, 1, queries=q_stop - 1, stack=stack)[0]
            keys = [j - k_first for j in row.keys]
            torch.testing.assert_close(torch.softmax(row.scores, -1), attention[keys], rtol=0, atol=1e-6)
    assert "decoder head 2.0" in row.components and "cross head 1.0" in row.components  # its own layer's heads too
    assert row.key_components[:2] == ["encoder embedding", "encoder head 0.0"]
    assert "encoder final norm bias" in row.key_components  # nn.TransformerEncoder's norm, after its layers


def test_a_plain_encoder_decoder_needs_a_start_token():
    torch.manual_seed(0)
    lm = lw.LanguageModel(Seq2Seq().eval(), vocab=VOCAB)
    with pytest.raises(ValueError, match="its output starts with a bos token"):
        lm.trace(PROMPT)
    with pytest.raises(ValueError, match="bos_token 'x' is not in the vocabulary"):
        lw.VocabTokenizer(VOCAB, bos_token="x")


def test_analyses_of_transformers_models_refuse_clearly(lm):
    with pytest.raises(ValueError, match="is a plain PyTorch model"):
        lm.trace(PROMPT).logit_lens()
    with pytest.raises(ValueError, match="is a plain PyTorch model"):
        lw.scaling(lm, lengths=[8, 16])
