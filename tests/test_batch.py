"""Batches: several prompts traced together, padded and masked, one Trace per row.

Each row of a padded batch must be what its prompt gives alone: the same
generated tokens, predictions and attention (the padding cut away, never shown).
"""

from __future__ import annotations

import pytest
import torch

import llm_widgets as lw
from llm_widgets.trace.batch import TraceBatch

from .test_trace import _outside_the_registry
from .test_trace_architectures import MASKED, PROMPT, ToyTokenizer, build

ROWS = [PROMPT, PROMPT[3:9], [11, 12, 13], PROMPT[:11]]  # different lengths: rows 1-3 padded
NEW = 4


def _same_row(row: lw.Trace, alone: lw.Trace, atol: float = 2e-5) -> None:
    assert row.input_ids.tolist() == alone.input_ids.tolist()
    assert row.n_prompt == alone.n_prompt
    ids_row, probs_row = row._top_k[0]
    ids_alone, probs_alone = alone._top_k[0]
    torch.testing.assert_close(probs_row, probs_alone, atol=atol, rtol=0)
    for step in range(len(row.generated_ids)):
        assert abs(row.chosen_probability(step) - alone.chosen_probability(step)) < atol
    for layer in range(row.n_layers):
        for head in range(row.n_heads):
            torch.testing.assert_close(row.attention(layer, head), alone.attention(layer, head), atol=atol, rtol=0)
    torch.testing.assert_close(row.attention_grid(), alone.attention_grid(), atol=atol, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "bert"])
def test_padded_batch_rows_equal_each_prompt_alone(arch):
    lm = build(arch)
    new = 0 if arch in MASKED else NEW
    batch = lm.trace(ROWS, max_new_tokens=new)
    assert isinstance(batch, TraceBatch) and len(batch) == len(ROWS)
    assert batch.padding_side == ("right" if arch in MASKED else "left")
    for ids, row in zip(ROWS, batch):
        _same_row(row, lm.trace(ids, max_new_tokens=new))


def test_batches_in_every_form_give_the_same_rows():
    lm = build("llama")
    reference = lm.trace(ROWS, max_new_tokens=2)
    width = max(len(r) for r in ROWS)
    right = torch.tensor([r + [0] * (width - len(r)) for r in ROWS])
    encoding = {
        "input_ids": right,
        "attention_mask": (torch.arange(width)[None] < torch.tensor([len(r) for r in ROWS])[:, None]).long(),
    }  # a right-padded tokenizer output: padding removed, laid out left
    for prompt in (tuple(ROWS), [torch.tensor(r) for r in ROWS], encoding):
        batch = lm.trace(prompt, max_new_tokens=2)
        assert [t.input_ids.tolist() for t in batch] == [t.input_ids.tolist() for t in reference]
    same_length = torch.tensor([PROMPT[:5], PROMPT[5:10]])
    assert len(lm.trace(same_length)) == 2  # a 2-D tensor of several rows is a batch
    assert isinstance(lm.trace(same_length[:1]), lw.Trace)  # ... of one row, one prompt


def test_a_row_that_stops_early_ends_at_its_eos():
    lm = build("gpt2")
    free = lm.trace(ROWS, max_new_tokens=NEW)
    eos = free[1].generated_ids[1]  # make row 1's second token (or its first, if the same) end its text
    batch = lm.trace(ROWS, max_new_tokens=NEW, eos_token_id=eos)
    for ids, row in zip(ROWS, batch):
        alone = lm.trace(ids, max_new_tokens=NEW, eos_token_id=eos)
        assert row.generated_ids == alone.generated_ids
        _same_row(row, alone)
    first = free[1].generated_ids.index(eos)
    assert batch[1].generated_ids == free[1].generated_ids[: first + 1]
    assert len(batch[1].generated_ids) < NEW and max(len(t.generated_ids) for t in batch) == NEW


def test_keep_logits_and_the_eager_fallback_cut_each_row():
    lm = build("qwen2")
    batch = lm.trace(ROWS, keep_logits=True)
    for ids, row in zip(ROWS, batch):
        torch.testing.assert_close(row.logits, lm.trace(ids, keep_logits=True).logits, atol=2e-5, rtol=0)
    outside = lw.LanguageModel(_outside_the_registry(), ToyTokenizer(), name="tiny-outside")
    for ids, row in zip(ROWS, outside.trace(ROWS, max_new_tokens=2)):
        _same_row(row, outside.trace(ids, max_new_tokens=2))


def test_a_row_record_replays_its_batch():
    lm = build("llama")
    batch = lm.trace(ROWS, max_new_tokens=3, do_sample=True, seed=5)
    record = batch[2].record
    assert record["batch"] == {"prompt_ids": ROWS, "row": 2}
    assert record["prompt_ids"] == ROWS[2] and record["output_ids"] == batch[2].generated_ids
    again = lw.replay(record, lm)
    assert again.input_ids.tolist() == batch[2].input_ids.tolist()
    assert again.record == record


def test_batches_refuse_edits_and_bad_rows_clearly():
    lm = build("llama")
    with pytest.raises(lw.InputError, match="attention edits steer one prompt at a time"):
        lm.trace(ROWS, edits=[lw.ScaleAttention(2.0, keys=(0, 2))])
    with pytest.raises(lw.InputError, match="token ids must be between"):
        lm.trace([PROMPT, [1, 2, 999]])
    with pytest.raises(lw.InputError, match="2-D 'input_ids'"):
        lm.trace({"input_ids": [1, 2, 3]})
    with pytest.raises(lw.InputError, match="longer than the context"):
        lm.trace([PROMPT, list(range(1, 90)) * 2])


def test_a_tampered_batch_record_is_refused():
    lm = build("llama")
    record = dict(lm.trace(ROWS, max_new_tokens=2)[1].record)
    for batch, message in (
        ({"prompt_ids": ROWS, "row": 0}, "is not the index of this record's prompt_ids"),
        ({"prompt_ids": ROWS, "row": 9}, "row 9"),
        ({"prompt_ids": [[1, "x"]], "row": 0}, "a list of token id lists"),
        ({"prompt_ids": ROWS, "row": 1, "code": "x"}, "a list of token id lists"),
        ([[1, 2]], "a list of token id lists"),
    ):  # not a dict: refused, not a raw TypeError
        with pytest.raises(lw.InputError, match=message):
            lw.replay({**record, "batch": batch}, lm)
