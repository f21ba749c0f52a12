"""A 16k-token prompt on a tiny model: trace, first paint, an edited regenerate and
attribution, and no tensor the size of a [T, T] matrix is ever allocated.

Every allocation is counted with torch.profiler's memory events; the smallest
[T, T] tensor (bool) is T * T bytes, 256 MiB here. Blockwise work stays under it:
recomputed attention at most BLOCK x BLOCK per head, edited masks a block of rows.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.profiler import ProfilerActivity, profile

import llm_widgets as lw

from .test_trace_architectures import VOCAB, ToyTokenizer

T = 16384


def test_sixteen_thousand_tokens_without_a_t_by_t_tensor():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=T + 64,
    )
    torch.manual_seed(0)
    lm = lw.LanguageModel(
        transformers.AutoModelForCausalLM.from_config(config).eval(), ToyTokenizer(), name="tiny-llama-16k"
    )
    ids = torch.randint(1, VOCAB, (T,), generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        tr = lm.trace(ids)
        overview = tr.attention_overview(1, 2, size=512)
        grid = tr.attention_grid(24)
        edited = lm.trace(ids, max_new_tokens=2, edits=[lw.ScaleAttention(4.0, keys=(0, 8), layers=[1], heads=[0])])
        scores = tr.attribute(5, method="grad_x_input").scores
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest < T * T, f"an allocation of {largest / 2**20:.0f} MiB: as big as a [T, T] matrix"
    assert overview.shape == (512, 512) and grid.shape == (2 * 4 * 24, 24)
    assert len(edited) == T + 2 and scores.shape == (T,) and torch.isfinite(scores).all()
    # a pooled cell is the largest probability of its 32 x 32 block
    corner = tr.attention(1, 2, queries=(T - 32, T), keys=(T - 32, T))
    assert overview[-1, -1].item() == pytest.approx(corner.max().item(), rel=1e-6)
