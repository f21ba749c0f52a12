"""The trace engine across architectures, on tiny random models built from configs.

For each: traced logits equal the plain model's, recomputed attention equals
eager attention, edited generation is the same with and without the KV cache,
factor 1 changes nothing and a strong edit changes the output.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import llm_widgets as lw

VOCAB = 96
PROMPT = [5, 17, 42, 8, 23, 61, 4, 77, 19, 33, 50, 12, 9, 70]
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
)


def _configs():
    t = transformers
    return {
        "gpt2": lambda: t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128),
        "llama": lambda: t.LlamaConfig(**SMALL, num_key_value_heads=2),
        "qwen2": lambda: t.Qwen2Config(**SMALL, num_key_value_heads=2),
        "qwen3": lambda: t.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16),
        "mistral": lambda: t.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6),
        "gemma": lambda: t.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16),
        "gemma2": lambda: t.Gemma2Config(
            **SMALL,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=6,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=30.0,
        ),
        "gemma3": lambda: t.Gemma3TextConfig(
            **SMALL,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "phi3": lambda: t.Phi3Config(**SMALL, num_key_value_heads=2, pad_token_id=0),
        "bert": lambda: t.BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            max_position_embeddings=128,
        ),
    }


CONFIGS = _configs()
MASKED = {"bert"}


class ToyTokenizer:
    """Just enough tokenizer for random-weight models: ids in, numbers out."""

    eos_token_id = pad_token_id = 0
    chat_template = None

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids)

    def batch_decode(self, sequences):
        return [self.decode(ids) for ids in sequences]

    def __len__(self):
        return VOCAB


def build(arch: str, attn: str | None = None, state: dict | None = None) -> lw.LanguageModel:
    """A fresh config each time: models built from one config share (and change) it."""
    auto = transformers.AutoModelForMaskedLM if arch in MASKED else transformers.AutoModelForCausalLM
    return build_from(CONFIGS[arch](), auto, f"tiny-{arch}", attn, state)


def build_from(config, auto, name: str, attn: str | None = None, state: dict | None = None) -> lw.LanguageModel:
    """A random model of `config` (seed 0) through the `auto` class, with the toy tokenizer; `state`
    gives it another model's weights (the same model under another attention implementation)."""
    torch.manual_seed(0)
    kwargs = {"attn_implementation": attn} if attn else {}
    model = auto.from_config(config, **kwargs).eval()
    if state is not None:
        model.load_state_dict(state)
    return lw.LanguageModel(model, ToyTokenizer(), name=name)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def lm(arch):
    return build(arch)


def plain_logits(lm, ids):
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0]


def test_traced_logits_equal_plain(lm):
    before = lm.model.config._attn_implementation
    tr = lm.trace(PROMPT, keep_logits=True)
    diff = (tr.logits - plain_logits(lm, PROMPT)).abs().max().item()
    assert diff == 0.0, f"same wrapped implementation ({before}) must give identical logits, got {diff}"
    assert lm.model.config._attn_implementation == before


def test_recomputed_attention_equals_eager(arch, lm):
    eager = build(arch, "eager", lm.model.state_dict())
    with torch.no_grad():
        reference = eager.model(torch.tensor([PROMPT]), output_attentions=True).attentions
    assert len(reference) == lm.facts.n_layers
    tr = lm.trace(PROMPT)
    for layer in range(lm.facts.n_layers):
        for head in range(lm.facts.n_heads):
            ours = tr.attention(layer, head)
            torch.testing.assert_close(ours, reference[layer][0, head].float(), atol=1e-5, rtol=0)
    # a tile is the same numbers as the slice of the whole: rows normalise over all keys
    torch.testing.assert_close(tr.attention(1, 2, queries=(5, 9), keys=(2, 7)), tr.attention(1, 2)[5:9, 2:7])


def _max_pooled(full: torch.Tensor, size: int) -> torch.Tensor:
    rows, cols = (torch.linspace(0, n, min(n, size) + 1).round().long().tolist() for n in full.shape)
    return torch.tensor([[full[a:b, c:d].max().item() for c, d in zip(cols, cols[1:])] for a, b in zip(rows, rows[1:])])


@pytest.mark.parametrize("budget", [None, 3 * 14], ids=["one block", "blocks of 3 rows"])
def test_pooled_maps_are_the_max_of_the_attention(arch, lm, budget, monkeypatch):
    """Overview and grid normalise whole rows in one pass (keys first, pooled as log-probabilities,
    a causal block's keys cut at its last row); a span of keys goes tile by tile: both are the
    max-pool of the attention, edits, sliding windows and soft caps included."""
    from llm_widgets.trace import attention

    if budget is not None:
        monkeypatch.setattr(attention, "_budget", lambda device: budget * lm.facts.n_heads)
    tr = lm.trace(PROMPT, edits=[lw.ScaleAttention(4.0, keys=(2, 6), layers=[1], heads=[2])])
    grid = tr.attention_grid(size=5).view(tr.n_layers, tr.n_heads, 5, 5)
    for layer, head in [(0, 0), (1, 2), (1, 3)]:
        full = tr.attention(layer, head)
        torch.testing.assert_close(tr.attention_overview(layer, head, size=5), _max_pooled(full, 5))
        torch.testing.assert_close(grid[layer, head], _max_pooled(full, 5))
        span = tr.attention_overview(layer, head, size=4, keys=(3, 14))  # not whole rows: tile by tile
        torch.testing.assert_close(span, _max_pooled(full[:, 3:], 4))


def test_edits_match_with_and_without_cache(arch, lm):
    if arch in MASKED:
        pytest.skip("masked models do not generate")
    edits = [
        lw.ScaleAttention(0.05, keys=(1, 6), layers=[0]),
        lw.AblateHead(layer=1, head=3),
        lw.ScaleAttention(8.0, keys=(3, 9), layers=[1], heads=[1]),
    ]  # one head: its group alone is masked
    cached = lm.trace(PROMPT, max_new_tokens=8, edits=edits)
    uncached = lm.trace(PROMPT, max_new_tokens=8, edits=edits, use_cache=False)
    assert cached.generated_ids == uncached.generated_ids
    # the attention of generated tokens is there too, and agrees between the two runs
    torch.testing.assert_close(
        cached.attention(0, 1, queries=(14, 22)), uncached.attention(0, 1, queries=(14, 22)), atol=1e-5, rtol=0
    )


def test_a_head_ablated_at_some_positions_only(arch, lm):
    plain = lm.trace(PROMPT, keep_logits=True)
    everywhere = lm.trace(PROMPT, keep_logits=True, edits=[lw.AblateHead(1, 2)])
    spanning = lm.trace(PROMPT, keep_logits=True, edits=[lw.AblateHead(1, 2, positions=(0, len(PROMPT)))])
    assert torch.equal(spanning.logits, everywhere.logits)
    some = lm.trace(PROMPT, keep_logits=True, edits=[lw.AblateHead(1, 2, positions=[(6, 8), 10])])
    if arch not in MASKED:  # causal: what comes before position 6 is untouched, from there on it is not
        assert torch.equal(some.logits[:6], plain.logits[:6]) and not torch.equal(some.logits[6], plain.logits[6])
        edit = lw.AblateHead(1, 2, positions=(15, 18))  # generated positions: the cached steps find them
        cached = lm.trace(PROMPT, max_new_tokens=6, edits=[edit])
        assert cached.generated_ids == lm.trace(PROMPT, max_new_tokens=6, edits=[edit], use_cache=False).generated_ids
        assert lw.replay(cached.record, lm).generated_ids == cached.generated_ids
        assert cached.record["edits"][0]["positions"] == [[15, 18]]
    with pytest.raises(ValueError, match="AblateHead positions span \\(10, 30\\) is outside the sequence"):
        lm.trace(PROMPT, edits=[lw.AblateHead(1, 2, positions=(10, 30))])


def test_factor_one_changes_nothing(lm):
    plain = lm.trace(PROMPT, keep_logits=True)
    same = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(1.0, keys=(0, 10))])
    torch.testing.assert_close(same.logits, plain.logits, atol=1e-6, rtol=0)


def test_strong_edit_changes_output(arch, lm):
    plain = lm.trace(PROMPT, keep_logits=True)
    edits = [lw.ScaleAttention(0.0, keys=(0, 10))]
    if arch in MASKED:  # every row still sees keys 10 and on
        masked = lm.trace(PROMPT, keep_logits=True, edits=edits)
    else:  # rows 0-9 have no other key: left as they were, with a warning
        with pytest.warns(UserWarning, match="masked every key of some query rows"):
            masked = lm.trace(PROMPT, keep_logits=True, edits=edits)
    assert (masked.logits - plain.logits).abs().max() > 1e-3
    # and the recomputed attention shows the edit: no weight left on the masked keys after them
    attn = masked.attention(0, 0)
    if arch in MASKED:
        assert attn[:, :10].abs().max() < 1e-6
    else:
        assert attn[10:, :10].abs().max() < 1e-6
        torch.testing.assert_close(attn[:10], plain.attention(0, 0)[:10])  # rows with no other key: unchanged


def test_per_head_edits_agree_between_sdpa_and_eager(arch, lm):
    """SDPA runs the edited heads' group with the edit mask and the others on the
    model's own mask; eager runs every head with the full mask. Same numbers."""
    edits = [lw.ScaleAttention(6.0, keys=(2, 7), layers=[0, 1], heads=[1])]
    eager = build(arch, "eager", lm.model.state_dict())
    ours = lm.trace(PROMPT, keep_logits=True, edits=edits)
    reference = eager.trace(PROMPT, keep_logits=True, edits=edits)
    torch.testing.assert_close(ours.logits, reference.logits, atol=1e-4, rtol=1e-4)
    assert (ours.logits - lm.trace(PROMPT, keep_logits=True).logits).abs().max() > 1e-4


def test_edit_masks_built_in_row_blocks_give_the_same_run(arch, lm, monkeypatch):
    """A long prompt's edited mask is built a block of query rows at a time (never T x T):
    blocks of 3 rows must give what one block gives, per-head and factor-0 edits included."""
    from llm_widgets.trace import capture

    edits = [lw.ScaleAttention(6.0, keys=(2, 7), layers=[0], heads=[1]), lw.ScaleAttention(0.2, keys=(0, 4))]
    for model in (lm, build(arch, "eager", lm.model.state_dict())):
        whole = model.trace(PROMPT, keep_logits=True, edits=edits)
        with monkeypatch.context() as m:
            m.setattr(capture, "MASK_ELEMENTS", 3 * len(PROMPT))
            blocked = model.trace(PROMPT, keep_logits=True, edits=edits)
        torch.testing.assert_close(blocked.logits, whole.logits, atol=1e-6, rtol=0)
