"""Several prompts traced together, as a batch runs in production: padded, masked, one `Trace` per row.

Causal models are padded on the left (what batched generation needs), masked
models on the right. Positions come from the attention mask, as `generate`
computes them, so a row sees what it would see alone. Each row's trace is cut
out of the padded run (its own tokens, queries and keys): padding never
appears in a view, and nothing is recomputed for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .trace import Trace


def batch_rows(prompt: Any) -> list[Any] | None:
    """The prompts of a batch, or None when `prompt` is one prompt.

    A batch is a list of strings, of chat message lists or of token id lists; a
    2-D tensor of ids with more than one row; or a tokenizer's output (a mapping
    with 2-D "input_ids" and optionally "attention_mask"), whose padding is removed."""
    if isinstance(prompt, Mapping):
        return _rows_of_encoding(prompt)
    if isinstance(prompt, torch.Tensor):
        return list(prompt) if prompt.dim() == 2 and prompt.shape[0] > 1 else None
    if isinstance(prompt, (list, tuple)) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompt):
            return list(prompt)
    return None


def _rows_of_encoding(encoding: Mapping) -> list[torch.Tensor]:
    ids = encoding.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise InputError(
            "a tokenizer output passed as the prompt needs 2-D 'input_ids' (return_tensors='pt'); got "
            f"{type(ids).__name__}{list(ids.shape) if isinstance(ids, torch.Tensor) else ''}"
        )
    mask = encoding.get("attention_mask")
    if mask is None:
        return list(ids)
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
        raise InputError(f"'attention_mask' must be a tensor shaped like 'input_ids' {list(ids.shape)}")
    return [row[keep.bool()] for row, keep in zip(ids, mask)]


@dataclass(frozen=True)
class Padded:
    """A batch laid out for the model: ids and mask [B, T], and where each row's tokens start."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    starts: list[int]

    @property
    def has_padding(self) -> bool:
        return bool((self.attention_mask == 0).any())


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted over the real tokens before it (as generate does); 0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(rows: list[torch.Tensor], pad_id: int, left: bool) -> Padded:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    starts = []
    for b, row in enumerate(rows):
        start = length - len(row) if left else 0
        ids[b, start : start + len(row)] = row
        mask[b, start : start + len(row)] = 1
        starts.append(start)
    return Padded(ids, mask, starts)


class TraceBatch(Sequence[Trace]):
    """Several prompts run together: `batch[i]` is row i's `Trace` (its own tokens, no padding).

    `lw.AttentionView(batch)` shows one row at a time, with a row selector. Each row's
    record holds the whole batch and its row: `lw.replay(batch[i].record)` runs the batch again."""

    def __init__(self, traces: list[Trace], *, padding_side: str):
        self._traces = list(traces)
        self.padding_side = padding_side

    def __getitem__(self, index):
        return self._traces[index]

    def __len__(self) -> int:
        return len(self._traces)

    @property
    def outputs(self) -> list[str]:
        """Each row's generated text."""
        return [t.output_text for t in self._traces]

    def __repr__(self) -> str:
        lengths = ", ".join(f"{t.n_prompt}+{len(t) - t.n_prompt}" for t in self._traces)
        return (
            f"TraceBatch({self._traces[0].model.name!r}: {len(self)} rows, prompt+generated tokens {lengths}; "
            f"padded on the {self.padding_side})"
        )


def one_trace(result: Trace | TraceBatch, what: str) -> Trace:
    """The Trace of a run of one prompt; a batch refused, naming `what` refuses it."""
    if isinstance(result, TraceBatch):
        raise InputError(
            f"{what} takes one prompt (a string, a chat or token ids); got {len(result)} prompts, a "
            f"batch: give one of them"
        )
    return result
