"""A one-row cache widened for n rows holds the shared positions once and gives the logits a
repeated cache gives, on every architecture and an encoder-decoder; made ordinary again, it is
the repeated cache."""

from __future__ import annotations

import copy

import pytest
import torch

import llm_widgets as lw
from llm_widgets.analysis.profile import cache_bytes
from llm_widgets.models.compat import cache_kwargs, output_cache
from llm_widgets.trace.shared_cache import SharedPrefixLayer, unshared, widen

from .test_trace_architectures import CONFIGS, MASKED, PROMPT, build

ROWS = 3


def _decode(model, cache, first: dict, steps: int, name: str) -> list[torch.Tensor]:
    """`steps` forwards of ROWS rows, each row fed its own tokens, from `cache`."""
    out = []
    for step in range(steps):
        ids = torch.tensor([[5 + row + 7 * step] for row in range(ROWS)])
        result = model(**{name: ids}, **first, use_cache=True, **cache_kwargs(model, cache))
        cache = output_cache(result)
        out.append(result.logits[:, -1])
    return out


def _both(model, prompt: dict, name: str, first: dict) -> tuple[list, list, object, object]:
    with torch.no_grad():
        one = output_cache(model(**prompt, use_cache=True))
        repeated, shared = copy.deepcopy(one), copy.deepcopy(one)
        repeated.batch_repeat_interleave(ROWS)
        widen(shared, ROWS)
        return _decode(model, repeated, first, 3, name), _decode(model, shared, first, 3, name), repeated, shared


@pytest.mark.parametrize("arch", sorted(set(CONFIGS) - MASKED))
def test_a_widened_cache_gives_a_repeated_ones_logits(arch):
    lm = build(arch)
    plain, ours, repeated, shared = _both(lm.model, {"input_ids": torch.tensor([PROMPT])}, "input_ids", {})
    for a, b in zip(plain, ours):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert cache_bytes(shared) <= cache_bytes(repeated)
    if any(isinstance(layer, SharedPrefixLayer) for layer in shared.layers):  # a sliding window's are repeated
        assert cache_bytes(shared) < cache_bytes(repeated)
    for a, b in zip(repeated.layers, unshared(shared).layers):
        assert type(b) is type(a) and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_the_prompt_is_held_once(tiny_gpt2):
    long = list(range(10, 200))
    _, _, repeated, shared = _both(tiny_gpt2.model, {"input_ids": torch.tensor([long])}, "input_ids", {})
    per_position = cache_bytes(repeated) / ROWS / (len(long) + 3)  # the prompt and three steps' tokens
    assert cache_bytes(shared) == pytest.approx(per_position * (len(long) + ROWS * 3))


def test_an_encoder_decoders_source_is_a_view():
    lm = lw.load_model("tiny-translator", progress=False)
    model = lm.model
    source = lm.tokenizer("the house is small", return_tensors="pt")
    start = torch.tensor([[model.generation_config.decoder_start_token_id]])
    with torch.no_grad():
        encoded = model.get_encoder()(**source)
    wide = {"encoder_outputs": (encoded.last_hidden_state.expand(ROWS, -1, -1),)}
    wide["attention_mask"] = source.attention_mask.expand(ROWS, -1)
    prompt = {"decoder_input_ids": start, "encoder_outputs": (encoded.last_hidden_state,), **source}
    prompt.pop("input_ids")
    plain, ours, repeated, shared = _both(model, prompt, "decoder_input_ids", wide)
    for a, b in zip(plain, ours):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    cross = shared.cross_attention_cache.layers[0].keys
    assert cross.shape[0] == ROWS and cross.stride(0) == 0  # one row, broadcast
    assert cache_bytes(shared) < cache_bytes(repeated)
