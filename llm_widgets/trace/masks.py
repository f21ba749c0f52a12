"""Which keys a query may see, and the log-factor biases of attention edits.

Shared by the live attention wrapper (capture.py), which adds them to the
model's mask, and the recomputation of probabilities (attention.py), which must
apply exactly the same ones.
"""

from __future__ import annotations

import math
import warnings

import torch

from .edits import ScaleAttention


def allowed_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, is_causal: bool, sliding_window: int | None) -> torch.Tensor:
    """[q, k] bool: which keys each query may see (batch of one, no padding)."""
    # compared, not subtracted: no [q, k] int64 matrix (8x the bool one) on a long prompt
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = k <= q if is_causal else torch.ones(len(q_pos), len(k_pos), dtype=torch.bool, device=k_pos.device)
    if sliding_window:
        allowed &= k > q - sliding_window  # transformers' convention: kv_idx > q_idx - window
    return allowed


def edit_bias(
    edits: tuple[ScaleAttention, ...], n_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor
) -> torch.Tensor:
    """[heads or 1, q or 1, k] float32 log-factors of these edits (already chosen for the layer).

    One row for all heads unless an edit names heads, and one row for all
    queries unless an edit names queries: it broadcasts onto the mask.
    """
    per_head = any(edit.heads is not None for edit in edits)
    per_query = any(edit.queries is not None for edit in edits)
    bias = torch.zeros(n_heads if per_head else 1, len(q_pos) if per_query else 1, len(k_pos), device=k_pos.device)
    for edit in edits:
        cell = _in_spans(k_pos, edit.keys)[None, :]
        if edit.queries is not None:
            cell = _in_spans(q_pos, edit.queries)[:, None] & cell
        heads = list(edit.heads) if edit.heads is not None else slice(None)
        value = math.log(edit.factor) if edit.factor > 0 else float("-inf")
        bias[heads] += torch.where(cell, value, 0.0)
    return bias


def spare_fully_masked(bias: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Drop the bias of rows whose every allowed key it would mask (factor 0):
    a softmax over no keys has no answer, so those rows stay as the model made them.
    Returns the bias, expanded to [heads or 1, q, k], and whether any row was spared."""
    bias = bias.expand(-1, allowed.shape[0], -1).clone()
    sees, alive = key_reach(bias, allowed)
    fully_masked = sees & ~alive
    if not fully_masked.any():
        return bias, False
    bias[fully_masked] = 0.0
    return bias, True


def key_reach(bias: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of these keys: whether it may see any of them, and whether any it may see survives the
    edits (factor 0 biases by -inf). A row that sees keys of which none survive is spared; over keys
    taken block by block, OR each block's answers together."""
    return allowed.any(-1), (allowed & ~torch.isneginf(bias)).any(-1)


def warn_spared_rows(stacklevel: int) -> None:
    """Say that factor-0 edits left some rows as they were (spare_fully_masked), once a run;
    stacklevel counts from the caller."""
    warnings.warn(
        "ScaleAttention with factor 0 masked every key of some query rows; those rows were left "
        "unchanged (a softmax over no keys has no answer).",
        stacklevel=stacklevel + 1,
    )


def _in_spans(pos: torch.Tensor, spans) -> torch.Tensor:
    hit = torch.zeros_like(pos, dtype=torch.bool)
    for start, stop in spans:
        hit |= (pos >= start) & (pos < stop)
    return hit
