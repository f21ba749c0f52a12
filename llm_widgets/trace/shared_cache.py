"""A one-row KV cache widened to n rows that share its positions, holding those positions once.

Hugging Face caches hold one row per sequence, so n answers to one prompt would hold the
prompt's keys and values n times (`batch_repeat_interleave`). Here a full-attention layer keeps
the shared positions as one row and each row's own positions after them: the n-row tensors
attention reads are built per layer as it runs (one layer's worth at a time, then freed).
Cross-attention layers (an encoder-decoder's source, never updated) become broadcast views; a
sliding window's layers, bounded by the window, and any other kind are repeated as before.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from ..errors import InputError


def widen(cache: Any, rows: int) -> None:
    """Make the one-row `cache` serve `rows` rows, in place."""
    lists = _layer_lists(cache)
    if lists is None:  # (a cache of another shape: repeated)
        cache.batch_repeat_interleave(rows)
        return
    for layers, cross in lists:
        for i, layer in enumerate(layers):
            keys = getattr(layer, "keys", None)
            if not getattr(layer, "is_initialized", False) or keys is None or keys.shape[0] != 1:
                layer.batch_repeat_interleave(rows)
            elif cross:
                layer.keys = keys.expand(rows, *keys.shape[1:])
                layer.values = layer.values.expand(rows, *layer.values.shape[1:])
            elif type(layer) is DynamicLayer:
                layers[i] = SharedPrefixLayer(layer, rows)
            else:
                layer.batch_repeat_interleave(rows)


def _layer_lists(cache: Any) -> list[tuple[list, bool]] | None:
    """The cache's lists of layers, each with whether it is cross-attention's (None: no layers)."""
    self_cache = getattr(cache, "self_attention_cache", None)
    if self_cache is not None:  # an encoder-decoder's
        return [(self_cache.layers, False), (cache.cross_attention_cache.layers, True)]
    layers = getattr(cache, "layers", None)
    return None if layers is None else [(layers, False)]


class SharedPrefixLayer(DynamicLayer):
    """A full-attention cache layer whose rows share their first positions: `prefix_keys` and
    `prefix_values` hold those once ([1, heads, shared, dim]); `keys` and `values` each row's own
    positions after them ([rows, heads, own, dim])."""

    keys: torch.Tensor  # (never None here: built initialised)
    values: torch.Tensor

    def __init__(self, layer: Any, rows: int):
        super().__init__()
        self.device, self.is_initialized = layer.device, True
        self.prefix_keys, self.prefix_values = layer.keys, layer.values
        self.keys = layer.keys.new_empty(rows, *layer.keys.shape[1:-2], 0, layer.keys.shape[-1])
        self.values = layer.values.new_empty(rows, *layer.values.shape[1:-2], 0, layer.values.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.full()

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The n-row keys and values attention reads (built now; the shared positions first)."""
        rows = self.keys.shape[0]
        keys = torch.cat([self.prefix_keys.expand(rows, *self.prefix_keys.shape[1:]), self.keys], dim=-2)
        values = torch.cat([self.prefix_values.expand(rows, *self.prefix_values.shape[1:]), self.values], dim=-2)
        return keys, values

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise InputError(f"crop takes a negative count of positions to remove; got {tokens_to_remove}")
        own = self.keys.shape[-2]
        if -tokens_to_remove > own:  # into the shared positions: no longer shared
            raise RuntimeError("cannot crop a shared-prefix cache into its shared positions")
        self.keys = self.keys[..., : own + tokens_to_remove, :]
        self.values = self.values[..., : own + tokens_to_remove, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.keys = self.keys.repeat_interleave(repeats, dim=0)
        self.values = self.values.repeat_interleave(repeats, dim=0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.keys.device))

    def offload(self) -> None:
        super().offload()
        self.prefix_keys = self.prefix_keys.to("cpu", non_blocking=True)
        self.prefix_values = self.prefix_values.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        super().prefetch()
        if self.prefix_keys.device != self.device:
            self.prefix_keys = self.prefix_keys.to(self.device, non_blocking=True)
            self.prefix_values = self.prefix_values.to(self.device, non_blocking=True)


def unshared(cache: Any) -> Any:
    """`cache` with every shared-prefix layer made an ordinary one (its rows' full keys and values),
    cross-attention views made whole: what a forward of some of its rows continues from."""
    for layers, cross in _layer_lists(cache) or []:
        for i, layer in enumerate(layers):
            if isinstance(layer, SharedPrefixLayer):
                plain, (keys, values) = DynamicLayer(), layer.full()
                plain.lazy_initialization(keys, values)
                plain.keys, plain.values = keys, values
                layers[i] = plain
            elif cross and getattr(layer, "keys", None) is not None:
                layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()
    return cache
