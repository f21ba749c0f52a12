"""The trace engine on the real bundled model, SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

import llm_widgets as lw

pytestmark = pytest.mark.slow

PROMPT = "Write the word 'cat' or the word 'dog'. The answer is:"


def token_span(model, text: str, part: str) -> tuple[int, int]:
    """The (start, stop) token positions covering `part` of `text`."""
    offsets = model.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    start = text.index(part)
    stop = start + len(part)
    hits = [i for i, (a, b) in enumerate(offsets) if a < stop and b > start]
    return hits[0], hits[-1] + 1


def test_emphasising_an_instruction_changes_the_answer(smollm2):
    plain = smollm2.trace(PROMPT, max_new_tokens=8)
    assert "cat" in plain.output_text and "dog" not in plain.output_text
    dog = token_span(smollm2, PROMPT, "the word 'dog'")
    steered = smollm2.trace(PROMPT, max_new_tokens=8, edits=[lw.ScaleAttention(30.0, keys=dog)])
    assert "'dog'" in steered.output_text, steered.output_text
    # the edit is visible in the attention we show: more weight on the emphasised span
    before = plain.attention(15, 4, queries=plain.n_prompt - 1, keys=dog).sum().item()
    after = steered.attention(15, 4, queries=plain.n_prompt - 1, keys=dog).sum().item()
    assert after > before


def test_capture_keeps_the_logits_exact(smollm2):
    tr = smollm2.trace(PROMPT, keep_logits=True)
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = smollm2.model(ids).logits[0]
    assert torch.equal(tr.logits, plain)


def test_replay_of_a_sampled_run(smollm2):
    tr = smollm2.trace("Once upon a time", max_new_tokens=16, do_sample=True, top_p=0.9)
    again = lw.replay(tr.record, smollm2)
    assert again.generated_ids == tr.generated_ids
    assert again.output_text == tr.output_text


def test_generated_tokens_have_attention_rows(smollm2):
    tr = smollm2.trace("The capital of France is", max_new_tokens=4)
    assert "Paris" in tr.output_text
    rows = tr.attention(20, 0, queries=(tr.n_prompt, len(tr)))
    assert rows.shape == (4, len(tr))
    torch.testing.assert_close(rows.sum(-1), torch.ones(4))
    assert rows[0, tr.n_prompt + 1 :].abs().max() == 0  # causal: no attention to the future


@pytest.mark.parametrize("name", ["tiny-gpt2", "smollm2"])
def test_tokens_are_decoded_one_id_at_a_time(name, tiny_gpt2, smollm2):
    """The fast path through the Rust tokenizer gives what batch_decode gives, special tokens included."""
    from llm_widgets.trace.trace import decode_each

    tok = (tiny_gpt2 if name == "tiny-gpt2" else smollm2).tokenizer
    ids = list(range(0, len(tok), 89)) + [tok.eos_token_id]
    assert decode_each(tok, ids) == tok.batch_decode([[i] for i in ids])


def test_a_batch_of_text_prompts_runs_as_each_alone(smollm2):
    """A real tokenizer and a GQA model: left padding, positions from the mask, rows cut out."""
    prompts = ["The capital of France is", "The capital of Japan is a city called", "Hello"]
    batch = smollm2.trace(prompts, max_new_tokens=5)
    for prompt, row in zip(prompts, batch):
        alone = smollm2.trace(prompt, max_new_tokens=5)
        assert row.tokens == alone.tokens and row.output_text == alone.output_text
        for layer, head in ((0, 0), (15, 4), (29, 8)):
            torch.testing.assert_close(row.attention(layer, head), alone.attention(layer, head), atol=1e-5, rtol=0)
    assert batch.outputs[0].startswith(" Paris") and batch.outputs[1].startswith(" Tokyo")
