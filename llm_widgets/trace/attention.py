"""Attention probabilities recomputed from a run's captured queries and keys.

A layer keeps its post-rotary queries [heads, n, d] and keys [kv_heads, n, d],
not probabilities. An `AttentionStack` computes the probabilities of the heads
and tile asked for, normalising each row over all its keys blockwise, so no
n x n matrix of a whole layer (or even a head) is held unless a caller asks for
exactly that tile. Pooled maps (a head's overview, the grid of every head) take
whole rows at once where they fit: scores once, softmax and max-pool in the
same pass, where a tile needs its rows' normalisers first.

A decoder-only or encoder-only model has one stack, "self". An encoder-decoder
has three over the trace's one sequence (the source tokens, then the decoder's):
"encoder" (source to source), "decoder" (output to output, causal) and "cross"
(output token to source token). Positions are always the trace's: a stack's
queries and keys are spans of it.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from .capture import LayerCapture, RunState
from .edits import ScaleAttention
from .masks import allowed_mask, edit_bias, key_reach

BLOCK = 1024  # key (and query) block for blockwise work: at most BLOCK x BLOCK scores per head at once
OVERVIEW = 512  # the pooled size of a head's first paint
GRID_CELL = 24  # each head's thumbnail in the layers x heads grid
EXACT_GRID = 512  # up to this many queries the grid's thumbnails are exact max-pools

SELF = "self"
STACKS = ("encoder", "decoder", "cross")  # an encoder-decoder's, in the order the views list them
WHAT = {
    SELF: "attention",
    "encoder": "encoder self-attention (source to source)",
    "decoder": "decoder self-attention (output to output)",
    "cross": "cross-attention (output to source)",
}


@dataclass(frozen=True)
class LayerAttention:
    """What recomputing one layer's attention needs. Tensors are indexed from the stack's first
    query and first key position."""

    queries: torch.Tensor  # [heads, n, d] (a run's capture: [batch, heads, n, d] until cut into rows)
    keys: torch.Tensor  # [kv_heads, n, d]
    scaling: float
    softcap: float | None
    sliding_window: int | None
    is_causal: bool
    sinks: torch.Tensor | None = None  # [heads] sink logits that share each row's softmax (GPT-OSS), or None
    bias: torch.Tensor | None = None  # [heads, n_queries, n_keys] a position bias on the scores (T5's), or None

    def row(self, b: int, queries: slice, keys: slice) -> LayerAttention:
        """One batch row's queries and keys, positions sliced: views, no copy."""
        bias = self.bias
        if bias is not None:
            bias = bias[b if bias.shape[0] > 1 else 0][:, queries, keys]
        return replace(self, queries=self.queries[b, :, queries], keys=self.keys[b, :, keys], bias=bias)


def assemble(captured: LayerCapture, n_queries: int, n_keys: int) -> LayerAttention | None:
    """Scatter a layer's captured chunks into position-indexed tensors (later chunks win,
    as when generation runs without a cache and recomputes every position)."""
    if not captured.queries or captured.scaling is None:
        return None
    return LayerAttention(
        _positioned(captured.queries, n_queries),
        _positioned(captured.keys, n_keys),
        float(captured.scaling),
        captured.softcap,
        captured.sliding_window,
        captured.is_causal,
        captured.sinks,
        _bias(captured.biases, n_queries, n_keys),
    )


def assembled(
    run: RunState, stack: str, n_layers: int, n_heads: int, n_queries: int, n_keys: int, architecture: str
) -> list[LayerAttention | None]:
    """A stack's captured chunks joined into one LayerAttention per layer (None where nothing was
    captured), each layer's chunks freed once joined: no second copy of them all."""
    layers = []
    for index in range(n_layers):
        captured = run.layers.get((stack, index))
        layer = assemble(captured, n_queries, n_keys) if captured is not None else None
        if captured is not None:
            captured.queries.clear()
            captured.keys.clear()
            captured.biases.clear()
        if layer is not None and layer.queries.shape[-3] != n_heads:  # the views and edits count heads from the config
            raise InputError(
                f"layer {index} of {architecture} has {layer.queries.shape[-3]} attention heads, its "
                f"config says {n_heads}: models whose layers differ in head count are not supported yet"
            )
        layers.append(layer)
    return layers


def _positioned(chunks: list[tuple[int, torch.Tensor]], length: int) -> torch.Tensor:
    if _in_order(chunks, length):  # the usual case (prompt pass, then one position per step): one concatenation
        return chunks[0][1] if len(chunks) == 1 else torch.cat([chunk for _, chunk in chunks], dim=-2)
    first = chunks[0][1]
    whole = first.new_zeros(*first.shape[:-2], length, first.shape[-1])
    for start, chunk in chunks:
        whole[..., start : start + chunk.shape[-2], :] = chunk
    return whole


def _in_order(chunks: list[tuple[int, torch.Tensor]], length: int) -> bool:
    """True when the chunks cover positions 0, 1, ..., length - 1 exactly, in order."""
    expected = 0
    for start, chunk in chunks:
        if start != expected or chunk.shape[-2] == 0:
            return False
        expected += chunk.shape[-2]
    return expected == length


def _bias(chunks: list[tuple[int, int, torch.Tensor]], n_queries: int, n_keys: int) -> torch.Tensor | None:
    """A position bias's chunks ((first query, first key, [batch or 1, heads, n, kv])) as one
    [batch or 1, heads, n_queries, n_keys] tensor."""
    if not chunks:
        return None
    first = chunks[0][2]
    whole = first.new_zeros(first.shape[0], first.shape[1], n_queries, n_keys, dtype=torch.float32)
    for q_start, k_start, chunk in chunks:
        n, kv = chunk.shape[-2:]
        whole[..., q_start : q_start + n, k_start : k_start + kv] = chunk[
            ..., : n_queries - q_start, : n_keys - k_start
        ]
    return whole


@functools.lru_cache(maxsize=64)
def pooling_bins(n: int, size: int) -> torch.Tensor:
    """Edges [bins + 1] that split n positions into min(n, size) near-equal bins (kept: do not
    change it). The front end's binRange (js/lib/heatmap.ts) splits the same way."""
    return torch.linspace(0, n, min(n, size) + 1).round().long()


def _pool_into(target: torch.Tensor, x: torch.Tensor, bins: tuple[int, int], first: int, dim: int) -> None:
    """Max-pool x, which holds positions first, first + 1, ... along `dim`, into `target`'s bins:
    pooling_bins(*bins) (bins x only partly covers keep the larger of theirs and x's)."""
    b0, b1, width, gather = _gather_plan(*bins, first, x.shape[dim])
    pooled = x.index_select(dim, gather.to(x.device)).unflatten(dim, (b1 - b0, width)).amax(dim + 1)
    part = target.narrow(dim, b0, b1 - b0)
    torch.maximum(part, pooled, out=part)


@functools.lru_cache(maxsize=256)
def _gather_plan(n: int, size: int, first: int, count: int) -> tuple[int, int, int, torch.Tensor]:
    """For positions first .. first + count - 1 of pooling_bins(n, size): the bins they touch
    [b0, b1), the widest one's width, and the positions to gather, each bin's own, its last repeated
    up to that width (a repeat leaves a max as it is): one gather and one max, where a scatter
    would visit every element. Kept: the grid asks the same of every layer."""
    edges = pooling_bins(n, size)
    bounds = edges.tolist()
    b0, b1 = bisect.bisect_right(bounds, first) - 1, bisect.bisect_left(bounds, first + count)
    local = (edges[b0 : b1 + 1] - first).clamp(0, count)
    width = int((local[1:] - local[:-1]).max())
    return b0, b1, width, (local[:-1, None] + torch.arange(width)).minimum(local[1:, None] - 1).flatten()


def stack_spans(n_source: int, length: int) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Each stack's (queries, keys) as spans of a trace of `length` positions: a decoder-only model's
    one (n_source 0); an encoder-decoder's three, its source first, then the decoder's tokens."""
    if not n_source:
        return {SELF: ((0, length), (0, length))}
    source, output = (0, n_source), (n_source, length)
    return {"encoder": (source, source), "decoder": (output, output), "cross": (output, source)}


def stack_offsets(n_source: int) -> dict[str, tuple[int, int]]:
    """Where each stack's first query and first key sit in the trace (what a run adds to its own
    positions to place an edit), known before the run."""
    return {name: (queries[0], keys[0]) for name, (queries, keys) in stack_spans(n_source, n_source).items()}


class AttentionStack:
    """One kind of attention of a trace: its layers, heads, the positions its queries and keys
    cover, and the probabilities recomputed on demand."""

    def __init__(
        self,
        name: str,
        *,
        n_layers: int,
        n_heads: int,
        queries: tuple[int, int],
        keys: tuple[int, int],
        layers: list[LayerAttention | None] | None,
        eager: list[torch.Tensor] | None = None,
        edits: tuple = (),
        attention_layers: tuple[int, ...] | None = None,
        model_name: str = "the model",
    ):
        self.name = name
        self.n_layers, self.n_heads = n_layers, n_heads
        self.queries, self.keys = queries, keys  # (start, stop) of the trace's positions
        self._layers = layers
        self._eager = eager  # [heads, T, T] per layer, for models outside the attention registry
        self.edits = tuple(e for e in edits if isinstance(e, ScaleAttention) and e.stack in (None, name))
        # every layer, but in a hybrid model only those that attend (the others have nothing to show)
        self.attention_layers = tuple(range(n_layers)) if attention_layers is None else tuple(attention_layers)
        self._model_name = model_name
        self._lse: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> row normalisers, NaN until needed

    @property
    def what(self) -> str:
        return WHAT[self.name]

    @property
    def sink_layers(self) -> tuple[int, ...]:
        layers = self._layers or []
        return tuple(i for i, data in enumerate(layers) if data is not None and data.sinks is not None)

    def check(self, layer: int, head: int) -> None:
        of = "" if self.name == SELF else f" in its {self.what}"
        if not checks.is_int(layer) or not 0 <= layer < self.n_layers:
            raise InputError(f"layer {layer!r} is out of range: this model has layers 0 to {self.n_layers - 1}{of}")
        if not checks.is_int(head) or not 0 <= head < self.n_heads:
            raise InputError(f"head {head!r} is out of range: this model has heads 0 to {self.n_heads - 1}{of}")

    def layer(self, layer: int) -> LayerAttention:
        data = self._layers[layer] if self._layers is not None else None
        if data is None and layer not in self.attention_layers:
            raise InputError(
                f"layer {layer} has no attention: {self._model_name} is a hybrid model whose other layers "
                f"are linear attention or state space; its attention layers are "
                f"{list(self.attention_layers)}"
            )
        if data is None:
            raise InputError(f"layer {layer} was not captured in this trace (capture was limited or turned off)")
        return data

    def positions(self, value: Any, what: str) -> torch.Tensor:
        """Positions given as None (all of this stack's), an int, a (start, stop) pair, a slice or a list."""
        first, stop = self.queries if what == "queries" else self.keys
        if value is None:
            return torch.arange(first, stop)
        given = value
        if checks.is_int(value):
            value = [value]
        elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
            value = range(*value)
        elif isinstance(value, slice):
            value = range(first, stop)[value]
        if not isinstance(value, (list, tuple, range, torch.Tensor)) or any(
            isinstance(v, bool) or not isinstance(v, (int, torch.Tensor)) for v in value
        ):
            raise WrongTypeError(
                f"{what} must be a position, a (start, stop) pair, a slice or a list of positions; got {value!r}"
            )
        pos = torch.as_tensor(list(value), dtype=torch.long)
        if pos.numel() == 0:
            raise InputError(f"{what} is empty: give positions between {first} and {stop - 1}")
        if int(pos.min()) < first or int(pos.max()) >= stop:
            raise InputError(f"{what} {given!r} is outside {self._range_text(what)}")
        return pos

    def span(self, span: tuple[int, int] | None, what: str) -> tuple[int, int]:
        first, stop = self.queries if what.endswith("queries") else self.keys
        if span is None:
            return first, stop
        try:
            start, end = (int(v) for v in span)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a (start, stop) span; got {span!r}") from None
        if not first <= start < end <= stop:
            raise InputError(
                f"{what} span {span!r} is outside {self._range_text(what)}: use {first} <= start < stop <= {stop}"
            )
        return start, end

    def _range_text(self, what: str) -> str:
        first, stop = self.queries if what.endswith("queries") else self.keys
        if self.name == SELF:
            return f"the sequence: positions run from {first} to {stop - 1}"
        side = what.split()[-1]
        return f"the {side} of {self.what}: positions {first} to {stop - 1}"

    # --- probabilities ---

    def attention(self, layer: int, head: int, queries: Any = None, keys: Any = None) -> torch.Tensor:
        self.check(layer, head)
        q_pos, k_pos = self.positions(queries, "queries"), self.positions(keys, "keys")
        return self._probs(layer, [head], q_pos, k_pos)[0].cpu()

    def overview(
        self,
        layer: int,
        head: int,
        size: int,
        queries: tuple[int, int] | None = None,
        keys: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        self.check(layer, head)
        _check_size(size)
        (q0, q1), keys = self.span(queries, "queries"), self.span(keys, "keys")
        return self._pooled(layer, [head], torch.arange(q0, q1), keys, size, exact_rows=True)[0].cpu()

    def grid(self, size: int) -> torch.Tensor:
        _check_size(size)
        q0, q1 = self.queries
        n = q1 - q0
        exact = n <= EXACT_GRID
        rows = torch.arange(q0, q1) if exact else q0 + pooling_bins(n, size)[1:] - 1
        bins = min(len(rows), size) if exact else len(rows)
        n_keys = self.keys[1] - self.keys[0]
        blank = torch.zeros(self.n_heads, bins, min(n_keys, size))  # a layer without attention (a hybrid's)
        maps = [
            self._pooled(layer, list(range(self.n_heads)), rows, self.keys, size, exact_rows=exact).cpu()
            if layer in self.attention_layers
            else blank
            for layer in range(self.n_layers)
        ]
        return torch.cat(maps).flatten(0, 1)

    def _pooled(
        self, layer: int, heads: list[int], q_pos: torch.Tensor, keys: tuple[int, int], size: int, exact_rows: bool
    ) -> torch.Tensor:
        """[heads, row bins, key bins] max-pooled probabilities of rows `q_pos` over keys [k0, k1),
        on the device of the captured tensors. exact_rows: rows pooled into min(len, size) bins;
        else each row is its own bin."""
        k0, k1 = keys
        dev = self._device(layer)
        k_bins = (k1 - k0, size)
        q_bins = (len(q_pos), size if exact_rows else len(q_pos))  # (each row its own bin, or pooled)
        out = torch.zeros(len(heads), min(q_bins), min(k_bins), device=dev)
        budget = _budget(dev) // len(heads)
        whole = self._whole_rows(layer, keys, budget)
        q_block = whole or _blocks(budget, len(q_pos), k1 - k0)[0]
        for qs in range(0, len(q_pos), q_block):
            rows_pos = q_pos[qs : qs + q_block]
            if whole:
                rows = self._pooled_whole_rows(layer, heads, rows_pos, k_bins)
            else:
                rows = self._pooled_tiles(layer, heads, rows_pos, keys, k_bins, budget)
            _pool_into(out, rows, q_bins, qs, dim=1)
        return out

    def _whole_rows(self, layer: int, keys: tuple[int, int], budget: int) -> int:
        """Rows per block if whole rows fit the budget and are normalised in the same pass
        (all the stack's keys, no sink sharing the softmax, captured queries and keys); else 0."""
        if self._eager is not None or keys != self.keys or self.layer(layer).sinks is not None:
            return 0
        return budget // (keys[1] - keys[0])

    def _pooled_whole_rows(
        self, layer: int, heads: list[int], rows_pos: torch.Tensor, k_bins: tuple[int, int]
    ) -> torch.Tensor:
        """[heads, rows, key bins] for rows whose every key is in one block: the scores computed
        once, keys first in memory so that pooling a bin gathers contiguous rows; the max is taken on
        log-probabilities (exp is monotonic) and only the pooled cells are exponentiated. A causal
        layer's keys stop at the block's last row: the bins after it stay 0."""
        k0, k1 = self.keys
        stop = min(k1, int(rows_pos.max()) + 1) if self.layer(layer).is_causal else k1
        scores = self._scores(layer, heads, rows_pos, torch.arange(k0, stop), keys_first=True)
        pooled = torch.full((len(heads), min(k_bins), len(rows_pos)), float("-inf"), device=scores.device)
        _pool_into(pooled, torch.log_softmax(scores, dim=1), k_bins, 0, dim=1)
        return pooled.exp_().transpose(1, 2)

    def _pooled_tiles(
        self,
        layer: int,
        heads: list[int],
        rows_pos: torch.Tensor,
        keys: tuple[int, int],
        k_bins: tuple[int, int],
        budget: int,
    ) -> torch.Tensor:
        """[heads, rows, key bins] blockwise over keys, rows normalised by their kept logsumexp."""
        k0, k1 = keys
        k_block = _blocks(budget, len(rows_pos), k1 - k0)[1]
        rows = torch.zeros(len(heads), len(rows_pos), min(k_bins), device=self._device(layer))
        for ks in range(k0, k1, k_block):
            k_pos = torch.arange(ks, min(k1, ks + k_block))
            _pool_into(rows, self._probs(layer, heads, rows_pos, k_pos), k_bins, ks - k0, dim=2)
        return rows

    def _device(self, layer: int) -> torch.device:
        return self._eager[layer].device if self._eager is not None else self.layer(layer).queries.device

    def _probs(self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[heads, nq, nk] float32 probabilities, on the captured tensors' device."""
        if self._eager is not None:
            dev = self._eager[layer].device
            return self._eager[layer][heads][:, q_pos.to(dev)][:, :, k_pos.to(dev)].float()
        lse = self._row_logsumexp(layer, heads, q_pos)  # kept per row: cheap on the next tile
        return torch.exp(self._scores(layer, heads, q_pos, k_pos) - lse[:, :, None])

    def _scores(
        self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor, keys_first: bool = False
    ) -> torch.Tensor:
        """Masked, edited scores [heads, nq, nk] in float32, exactly as the run's softmax saw them
        ([heads, nk, nq] when keys_first)."""
        data = self.layer(layer)
        # query heads per key/value head, from what the layer produced: configs can disagree with the
        # tensors (Falcon's multi_query beside num_kv_heads, GPTBigCode's multi_query)
        group = data.queries.shape[-3] // data.keys.shape[-3]
        dev = data.queries.device
        q_pos, k_pos = q_pos.to(dev), k_pos.to(dev)
        q_at, k_at = q_pos - self.queries[0], k_pos - self.keys[0]  # where the stack's tensors hold them
        q = _rows(data.queries, heads, q_at).float()
        k = _rows(data.keys, [h // group for h in heads], k_at).float()
        left, right = (k, q) if keys_first else (q, k)

        def oriented(t: torch.Tensor) -> torch.Tensor:  # a [.., nq, nk] term laid onto the scores
            return t.transpose(-1, -2) if keys_first else t

        bias = None if data.bias is None else data.bias[heads][:, q_at][:, :, k_at].to(dev)
        edit = self._edit_bias(layer, heads, q_pos, k_pos)
        masked = ~allowed_mask(q_pos, k_pos, data.is_causal, data.sliding_window)
        if data.softcap:  # the cap bends the scaled (and position-biased) scores before the edits
            scores = (left @ right.transpose(1, 2)) * data.scaling
            scores = scores if bias is None else scores + oriented(bias)
            scores = torch.tanh(scores / data.softcap) * data.softcap
            scores = scores if edit is None else scores + oriented(edit)
            return scores.masked_fill_(oriented(masked), float("-inf"))
        # otherwise every term adds: scaling, biases and the mask in the matmul's one pass
        added = torch.zeros(masked.shape, device=dev).masked_fill_(masked, float("-inf"))
        for term in (bias, edit):
            added = added if term is None else added + term
        added = oriented(added).contiguous().expand(len(heads), left.shape[1], right.shape[1])
        return torch.baddbmm(added, left, right.transpose(1, 2), alpha=data.scaling)

    def _head_edits(self, layer: int, head: int) -> tuple[ScaleAttention, ...]:
        """This head's ScaleAttention edits on this layer, as single-head edits."""
        return tuple(
            replace(e, heads=None)
            for e in self.edits
            if (e.layers is None or layer in e.layers) and (e.heads is None or head in e.heads)
        )

    def _edit_bias(self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """[heads, nq or 1, nk] log-factors of the edits on these heads, or None when none has any."""
        per_head = [self._head_edits(layer, head) for head in heads]
        if not any(per_head):
            return None
        bias = torch.zeros(len(heads), len(q_pos), len(k_pos), device=k_pos.device)
        for i, edits in enumerate(per_head):
            if edits:
                bias[i] = edit_bias(edits, 1, q_pos, k_pos)[0]
                bias[i, self._fully_masked_rows(layer, q_pos, edits)] = 0.0  # judged over whole rows, not this tile
        return bias

    def _fully_masked_rows(self, layer: int, q_pos: torch.Tensor, edits) -> torch.Tensor:
        """Rows the run left unedited because factor 0 would have masked every key they see."""
        if not any(e.factor == 0 for e in edits):
            return torch.zeros(len(q_pos), dtype=torch.bool, device=q_pos.device)
        data = self.layer(layer)
        sees = torch.zeros(len(q_pos), dtype=torch.bool, device=q_pos.device)
        alive = torch.zeros_like(sees)
        k0, k1 = self.keys
        for k_start in range(k0, k1, BLOCK):  # (the live run judges whole rows at once: spare_fully_masked)
            k_pos = torch.arange(k_start, min(k1, k_start + BLOCK), device=q_pos.device)
            allowed = allowed_mask(q_pos, k_pos, data.is_causal, data.sliding_window)
            block_sees, block_alive = key_reach(edit_bias(edits, 1, q_pos, k_pos)[0], allowed)
            sees |= block_sees
            alive |= block_alive
        return sees & ~alive

    def _row_logsumexp(self, layer: int, heads: list[int], q_pos: torch.Tensor) -> torch.Tensor:
        """[heads, nq]: each row's normaliser over all its keys, computed blockwise once per
        (layer, head, row) and kept on the CPU."""
        (q0, q1), (k0, k1) = self.queries, self.keys
        dev = self._device(layer)
        caches = [self._lse.setdefault((layer, head), torch.full((q1 - q0,), float("nan"))) for head in heads]
        missing = torch.stack([c[q_pos - q0] for c in caches]).isnan().any(0)
        todo = q_pos[missing].unique()
        if len(todo):
            _, k_block = _blocks(_budget(dev) // len(heads), len(todo), k1 - k0)
            running = None
            for k_start in range(k0, k1, k_block):
                k_pos = torch.arange(k_start, min(k1, k_start + k_block))
                block = torch.logsumexp(self._scores(layer, heads, todo, k_pos), dim=-1)
                running = block if running is None else torch.logaddexp(running, block)
            assert running is not None  # every stack has keys
            sinks = self.layer(layer).sinks
            if sinks is not None:  # a sink takes its share of every row: the keys' rows sum to less than 1
                running = torch.logaddexp(running, sinks[heads].to(running.device)[:, None])
            running = running.cpu()
            for cache, values in zip(caches, running):
                cache[todo - q0] = values
        return torch.stack([c[q_pos - q0] for c in caches]).to(dev)


def _rows(t: torch.Tensor, heads: list[int], pos: torch.Tensor) -> torch.Tensor:
    """t[heads][:, pos] for t [H, T, d], gathering positions before heads: no copy of all T;
    a view when the positions are a run and the heads all of t's."""
    if len(pos) > 1 and int(pos[-1] - pos[0]) == len(pos) - 1 and bool((pos.diff() == 1).all()):
        t = t[:, int(pos[0]) : int(pos[-1]) + 1]
        return t if heads == list(range(t.shape[0])) else t[heads]
    if len(heads) == 1:
        return t[heads[0], pos][None]
    return t[:, pos][heads]


def _budget(device: torch.device) -> int:
    """Scores one block may hold: 4 MiB of float32 on the CPU (cache-sized), 64 MiB on a GPU (fewer launches)."""
    return BLOCK * BLOCK * (16 if device.type == "cuda" else 1)


def _blocks(budget: int, n_rows: int, n_keys: int) -> tuple[int, int]:
    """(row block, key block) whose product is at most `budget`: whole rows when they fit."""
    k_block = max(1, min(n_keys, budget // max(1, min(n_rows, BLOCK))))
    q_block = max(1, min(n_rows, budget // k_block))
    return q_block, k_block


def _check_size(size: Any) -> None:
    checks.integer(size, "size", low=1)
