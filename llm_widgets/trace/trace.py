"""`Trace`: one instrumented run, and attention recomputed from it on demand.

A trace keeps each layer's post-rotary queries [heads, T, d] and keys
[kv_heads, T, d], not probabilities. `attention()` computes the probabilities
of one head for the tile asked for, normalising each row over all its keys
blockwise, so no T x T matrix of a whole layer (or even a head) is ever held
unless a caller asks for exactly that tile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch

from .._provide import implementation
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from .capture import LayerCapture
from .edits import ScaleAttention
from .masks import allowed_mask, edit_bias

BLOCK = 1024  # key (and query) block for blockwise work: at most BLOCK x BLOCK scores per head at once
OVERVIEW = 512  # the pooled size of a head's first paint
GRID_CELL = 24  # each head's thumbnail in the layers x heads grid
EXACT_GRID = 512  # up to this many tokens the grid's thumbnails are exact max-pools


@dataclass(frozen=True)
class LayerAttention:
    """What recomputing one layer's attention needs."""

    queries: torch.Tensor  # [heads, T, d] (a run's capture: [batch, heads, T, d] until cut into rows)
    keys: torch.Tensor  # [kv_heads, T, d]
    scaling: float
    softcap: float | None
    sliding_window: int | None
    is_causal: bool
    sinks: torch.Tensor | None = None  # [heads] sink logits that share each row's softmax (GPT-OSS), or None


def assemble(captured: LayerCapture, length: int) -> LayerAttention | None:
    """Scatter a layer's captured chunks into position-indexed tensors (later chunks win,
    as when generation runs without a cache and recomputes every position)."""
    if not captured.queries:
        return None
    meta = (float(captured.scaling), captured.softcap, captured.sliding_window, captured.is_causal, captured.sinks)
    if _in_order(captured.queries, length) and _in_order(captured.keys, length):
        # the usual case (prompt pass, then one position per step): one concatenation, or none
        return LayerAttention(_joined(captured.queries), _joined(captured.keys), *meta)
    return LayerAttention(_scattered(captured.queries, length), _scattered(captured.keys, length), *meta)


def _joined(chunks: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    return chunks[0][1] if len(chunks) == 1 else torch.cat([chunk for _, chunk in chunks], dim=-2)


def _scattered(chunks: list[tuple[int, torch.Tensor]], length: int) -> torch.Tensor:
    first = chunks[0][1]
    whole = first.new_zeros(*first.shape[:-2], length, first.shape[-1])
    for start, chunk in chunks:
        whole[..., start:start + chunk.shape[-2], :] = chunk
    return whole


def _in_order(chunks: list[tuple[int, torch.Tensor]], length: int) -> bool:
    """True when the chunks cover positions 0, 1, ..., length - 1 exactly, in order."""
    expected = 0
    for start, chunk in chunks:
        if start != expected or chunk.shape[-2] == 0:
            return False
        expected += chunk.shape[-2]
    return expected == length


def pooling_bins(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split n positions into min(n, size) near-equal bins: (edges [bins + 1], bin of each position).
    The front end's binRange (js/lib/heatmap.ts) splits the same way."""
    bins = min(n, size)
    edges = torch.linspace(0, n, bins + 1).round().long()
    return edges, torch.bucketize(torch.arange(n), edges[1:], right=True)


def _as_positions(value: Any, length: int, what: str) -> torch.Tensor:
    if value is None:
        return torch.arange(length)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = range(*value)
    elif isinstance(value, slice):
        value = range(length)[value]
    if not isinstance(value, (list, tuple, range, torch.Tensor)) or \
            any(isinstance(v, bool) or not isinstance(v, (int, torch.Tensor)) for v in value):
        raise WrongTypeError(f"{what} must be a position, a (start, stop) pair, a slice or a list of positions; "
                             f"got {value!r}")
    pos = torch.as_tensor(list(value), dtype=torch.long)
    if pos.numel() == 0:
        raise InputError(f"{what} is empty: give positions between 0 and {length - 1}")
    if int(pos.min()) < 0 or int(pos.max()) >= length:
        raise InputError(f"{what} {value!r} is outside the sequence: positions run from 0 to {length - 1}")
    return pos


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongTypeError(f"{what} must be an integer; got {type(value).__name__} {value!r}")


class Trace:
    """One run of a model: tokens, output, top-k predictions, and attention on demand."""

    def __init__(self, *, model: LanguageModel, input_ids: torch.Tensor, n_prompt: int, layers: list[LayerAttention | None] | None,
                 eager_attentions: list[torch.Tensor] | None, edits: tuple, top_k: list[tuple[torch.Tensor, torch.Tensor]],
                 chosen: list[float], logits: torch.Tensor | None, record: dict,
                 first_logprobs: torch.Tensor | None = None, attention_layers: tuple[int, ...] | None = None):
        self.model = model
        self.input_ids = input_ids  # [T]: prompt then generated
        self.n_prompt = n_prompt
        self.edits = edits
        self.logits = logits  # [T_prompt, vocab] when keep_logits=True
        self.record = record
        self._layers = layers
        self._eager = eager_attentions  # [heads, T, T] per layer, for models outside the attention registry
        self._top_k = top_k
        self._lse: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> row normalisers, NaN until needed
        self._chosen = chosen
        self._first_logprobs = first_logprobs  # [vocab] log-probabilities right after the prompt
        self._profile = None  # the run's Profile, once asked for
        facts = model.facts
        self.n_layers, self.n_heads, self.n_kv_heads = facts.n_layers, facts.n_heads, facts.n_kv_heads
        # every layer, but in a hybrid model only those that attend (the others have nothing to show)
        self.attention_layers = tuple(range(self.n_layers)) if attention_layers is None else tuple(attention_layers)

    # Text is decoded when first asked for: a long prompt's tokens take longer to
    # decode than a GPU takes to run it, and many traces (patching, benchmarks) never show them.
    @cached_property
    def tokens(self) -> list[str]:
        """Each token as text, one string per position."""
        return decode_each(self.model.tokenizer, self.input_ids.tolist())

    @cached_property
    def prompt_text(self) -> str:
        return self.model.tokenizer.decode(self.input_ids[:self.n_prompt].tolist())

    @cached_property
    def output_text(self) -> str:
        """The generated text; a classifier's predicted class (a token classifier's, one per token)."""
        if self.model.kind == "token_classifier":
            return " ".join(label for _, label, _ in self.token_labels)
        if self.model.labels:
            return self.model.labels[self.next_token_id]
        return self.model.tokenizer.decode(self.input_ids[self.n_prompt:].tolist(), skip_special_tokens=True)

    @property
    def label_probabilities(self) -> dict[str, float]:
        """A sequence classifier's probability of each class, by name ({} for other models)."""
        labels = self.model.labels
        if self.model.kind != "classifier" or self._first_logprobs is None:
            return {}
        return {name: float(p) for name, p in zip(labels, self._first_logprobs.exp().tolist())}

    @property
    def token_labels(self) -> list[tuple[str, str, float]]:
        """A token classifier's (token, predicted class, its probability) for each token ([] for other models)."""
        if self.model.kind != "token_classifier":
            return []
        labels = self.model.labels
        return [(token, labels[int(ids[0])], float(probs[0])) for token, (ids, probs) in zip(self.tokens, self._top_k)]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def generated_ids(self) -> list[int]:
        return self.input_ids[self.n_prompt:].tolist()

    @property
    def next_token_id(self) -> int:
        """The token that followed the prompt: the first generated one, or else the most likely."""
        return self.generated_ids[0] if self.generated_ids else int(self._top_k[0][0][0])

    def __repr__(self) -> str:
        edits = f", {len(self.edits)} edits" if self.edits else ""
        return (f"Trace({self.model.name!r}: {self.n_prompt} prompt + {len(self) - self.n_prompt} generated tokens"
                f"{edits}; output {self.output_text!r})")

    # --- predictions ---

    def top_k(self, step: int = 0, k: int = 10) -> list[tuple[str, float]]:
        """The k most likely next tokens at generation step `step` (0: right after the prompt),
        from the model's own distribution (before sampling settings), with probabilities."""
        _check_int(step, "step")
        _check_int(k, "k")
        if not 0 <= step < len(self._top_k):
            raise InputError(f"step {step} is out of range: this trace has steps 0 to {len(self._top_k) - 1}")
        ids, probs = self._top_k[step]
        if not 1 <= k <= len(ids):
            raise InputError(f"k must be between 1 and {len(ids)}; got {k}")
        tok, labels = self.model.tokenizer, self.model.labels
        name = (lambda i: labels[i]) if labels else (lambda i: tok.decode([i]))  # a classifier's top k are classes
        return [(name(i), float(p)) for i, p in zip(ids[:k].tolist(), probs[:k].tolist())]

    def chosen_probability(self, step: int) -> float:
        """Probability the model gave the token that was actually generated at `step`."""
        _check_int(step, "step")
        if not 0 <= step < len(self._chosen):
            raise InputError(f"step {step} is out of range: this trace generated steps 0 to {len(self._chosen) - 1}")
        return self._chosen[step]

    def token_id(self, token: str | int) -> int:
        """The id of a token given as an id or as text; text that is several tokens is refused.
        A classifier's "tokens" are its classes, by name or id."""
        if self.model.labels:
            return self.model.label_id(token)
        tok = self.model.tokenizer
        if isinstance(token, int) and not isinstance(token, bool):
            if not 0 <= token < len(tok):
                raise InputError(f"token id {token} is outside the vocabulary (0 to {len(tok) - 1})")
            return token
        if not isinstance(token, str) or not token:
            raise InputError(f"give a token as text (e.g. ' Paris') or as an id; got {token!r}")
        ids = tok.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tok.batch_decode([[i] for i in ids])
            raise InputError(f"{token!r} is {len(ids)} tokens for this tokenizer ({pieces}); give one token, e.g. "
                             f"{pieces[0]!r} (mind the leading space)")
        return ids[0]

    def probability(self, token: str | int, step: int = 0) -> float:
        """p(token) at generation step `step`: exact at step 0 (right after the prompt); at later
        steps known for the generated token and the top tokens kept per step."""
        token_id = self.token_id(token)
        _check_int(step, "step")
        if step == 0 and self._first_logprobs is not None:
            return float(self._first_logprobs[token_id].exp())
        if not 0 <= step < len(self._top_k):
            raise InputError(f"step {step} is out of range: this trace has steps 0 to {len(self._top_k) - 1}")
        if step < len(self.generated_ids) and self.generated_ids[step] == token_id:
            return self._chosen[step]
        ids, probs = self._top_k[step]
        hits = (ids == token_id).nonzero()
        if len(hits) == 0:
            raise InputError(f"{token!r} is not among the {len(ids)} most likely tokens kept for step {step}; "
                             f"only step 0 keeps every token's probability")
        return float(probs[hits[0, 0]])

    # --- gradients ---

    def attribute(self, target: str | int | None = None, contrast: str | int | None = None,
                  method: str = "grad_x_input", step: int | None = None, n_steps: int = 64,
                  baseline: str = "zeros"):
        """Which input tokens drove the token at `step` (0: right after the prompt).

        Scores log p(target), or with `contrast` logit(target) - logit(contrast)
        ("why X, not Y"). target defaults to the token the run produced. method:
        "grad_x_input", "integrated_gradients" (n_steps steps from `baseline`: "zeros", or
        every position holding the "eos" or "pad" token's embedding),
        "attention_x_grad" (also head importance [layers, heads]) or "occlusion".
        Returns an `Attribution`; the model's parameters are untouched.
        """
        if self.edits:
            warnings.warn("this trace was run with attention edits; attribution explains the model without them",
                          stacklevel=2)
        attribute = implementation(Trace, "attribute")  # llm_widgets.analysis, the layer above
        return attribute(self, target=target, contrast=contrast, method=method, step=step, n_steps=n_steps,
                         baseline=baseline)

    @property
    def profile(self):
        """Where this run's time and memory went: an `lw.Profile` of the same prompt, generation
        length and edits (a run of its own, timed module by module), computed on first use, or at
        once with model.trace(..., profile=True)."""
        if self._profile is None:
            self._profile = implementation(Trace, "profile")(self)  # llm_widgets.analysis, the layer above
        return self._profile

    def logit_lens(self, k: int = 5, target: str | int | None = None, positions=None):
        """What the residual stream after each layer predicts at each position: the top-k tokens and
        probabilities, decoded through the model's own final norm and unembedding (at the last layer,
        the model's prediction). With `target` (text or id), its probability and rank too.
        positions: all (default), an int or a list. Returns a `LogitLens`."""
        logit_lens = implementation(Trace, "logit_lens")  # llm_widgets.analysis, the layer above
        return logit_lens(self, k=k, target=target, positions=positions)

    # --- attention ---

    @property
    def sink_layers(self) -> tuple[int, ...]:
        """Layers whose heads have attention sinks (GPT-OSS, ...): each row's weights over the keys sum
        to less than 1; the rest went to the sink."""
        layers = self._layers or []
        return tuple(i for i, data in enumerate(layers) if data is not None and data.sinks is not None)

    def _check_layer_head(self, layer: int, head: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise InputError(f"layer {layer!r} is out of range: this model has layers 0 to {self.n_layers - 1}")
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise InputError(f"head {head!r} is out of range: this model has heads 0 to {self.n_heads - 1}")

    def _layer(self, layer: int) -> LayerAttention:
        data = self._layers[layer] if self._layers is not None else None
        if data is None and layer not in self.attention_layers:
            raise InputError(f"layer {layer} has no attention: {self.model.name} is a hybrid model whose other layers are "
                             f"linear attention or state space; its attention layers are {list(self.attention_layers)}")
        if data is None:
            raise InputError(f"layer {layer} was not captured in this trace (capture was limited or turned off)")
        return data

    def attention(self, layer: int, head: int, queries: Any = None, keys: Any = None) -> torch.Tensor:
        """Attention probabilities [len(queries), len(keys)] of one head, float32 on the CPU.

        queries / keys: None (all), a position, a (start, stop) span, a slice or a
        list of positions. Rows are normalised over all keys, whatever tile you ask.
        """
        self._check_layer_head(layer, head)
        q_pos = _as_positions(queries, len(self), "queries")
        k_pos = _as_positions(keys, len(self), "keys")
        return self._probs(layer, [head], q_pos, k_pos)[0].cpu()

    def attention_overview(self, layer: int, head: int, size: int = OVERVIEW, queries: tuple[int, int] | None = None,
                           keys: tuple[int, int] | None = None) -> torch.Tensor:
        """Max-pooled probabilities of a region, at most size x size: the first paint of a long
        sequence (the whole matrix) and the detail tiles of a zoom (queries / keys as (start, stop)).

        Computed blockwise on the captured tensors' device: only the pooled
        result comes back to the CPU, and no block holds more than `_budget` scores.
        """
        self._check_layer_head(layer, head)
        _check_size(size)
        (q0, q1), (k0, k1) = self._span(queries, "queries"), self._span(keys, "keys")
        return self._pooled(layer, [head], torch.arange(q0, q1), (k0, k1), size, exact_rows=True)[0].cpu()

    def attention_grid(self, size: int = GRID_CELL) -> torch.Tensor:
        """Every head's thumbnail, stacked layer by layer, head by head: [layers * heads * bins, bins].

        Up to EXACT_GRID tokens each thumbnail is the exact max-pooled map. Beyond,
        it shows one real query row per bin (the bin's last), keys max-pooled:
        exact rows, sampled queries, so all heads of a long trace paint in about a
        second instead of costing T x T per head. The heads of a layer are computed together.
        """
        _check_size(size)
        n = len(self)
        exact = n <= EXACT_GRID
        rows = torch.arange(n) if exact else pooling_bins(n, size)[0][1:] - 1
        bins = min(len(rows), size) if exact else len(rows)
        maps = [self._pooled(layer, list(range(self.n_heads)), rows, (0, n), size, exact_rows=exact).cpu()
                if layer in self.attention_layers else torch.zeros(self.n_heads, bins, min(n, size))  # blank: no attention
                for layer in range(self.n_layers)]
        return torch.cat(maps).flatten(0, 1)

    def _pooled(self, layer: int, heads: list[int], q_pos: torch.Tensor, keys: tuple[int, int], size: int,
                exact_rows: bool) -> torch.Tensor:
        """[heads, row bins, key bins] max-pooled probabilities of rows `q_pos` over keys [k0, k1),
        on the device of the captured tensors. exact_rows: rows pooled into min(len, size) bins;
        else each row is its own bin."""
        k0, k1 = keys
        dev = self._device(layer)
        k_edges, k_bin = pooling_bins(k1 - k0, size)
        k_bins = len(k_edges) - 1
        if exact_rows:
            q_edges, q_bin = pooling_bins(len(q_pos), size)
            q_bins = len(q_edges) - 1
        else:
            q_bins, q_bin = len(q_pos), torch.arange(len(q_pos))
        k_bin, q_bin = k_bin.to(dev), q_bin.to(dev)
        out = torch.zeros(len(heads), q_bins, k_bins, device=dev)
        q_block, k_block = _blocks(_budget(dev) // len(heads), len(q_pos), k1 - k0)
        for qs in range(0, len(q_pos), q_block):
            rows_pos = q_pos[qs:qs + q_block]
            rows = torch.zeros(len(heads), len(rows_pos), k_bins, device=dev)
            for ks in range(k0, k1, k_block):
                k_pos = torch.arange(ks, min(k1, ks + k_block))
                probs = self._probs(layer, heads, rows_pos, k_pos)
                rows.scatter_reduce_(2, k_bin[ks - k0:ks - k0 + len(k_pos)].expand_as(probs), probs, reduce="amax")
            index = q_bin[qs:qs + len(rows_pos)][None, :, None].expand_as(rows)
            out.scatter_reduce_(1, index, rows, reduce="amax")
        return out

    def _span(self, span: tuple[int, int] | None, what: str) -> tuple[int, int]:
        if span is None:
            return 0, len(self)
        try:
            start, stop = (int(v) for v in span)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a (start, stop) span; got {span!r}") from None
        if not 0 <= start < stop <= len(self):
            raise InputError(f"{what} span {span!r} is outside the sequence: use 0 <= start < stop <= {len(self)}")
        return start, stop

    def _device(self, layer: int) -> torch.device:
        return self._eager[layer].device if self._eager is not None else self._layer(layer).queries.device

    def _probs(self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[heads, nq, nk] float32 probabilities, on the captured tensors' device."""
        if self._eager is not None:
            dev = self._eager[layer].device
            return self._eager[layer][heads][:, q_pos.to(dev)][:, :, k_pos.to(dev)].float()
        lse = self._row_logsumexp(layer, heads, q_pos)  # kept per row: cheap on the next tile
        return torch.exp(self._scores(layer, heads, q_pos, k_pos) - lse[:, :, None])

    def _scores(self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Masked, edited scores [heads, nq, nk] in float32, exactly as the run's softmax saw them."""
        data = self._layer(layer)
        # query heads per key/value head, from what the layer produced: configs can disagree with the
        # tensors (Falcon's multi_query beside num_kv_heads, GPTBigCode's multi_query)
        group = data.queries.shape[-3] // data.keys.shape[-3]
        dev = data.queries.device
        q_pos, k_pos = q_pos.to(dev), k_pos.to(dev)
        q = _rows(data.queries, heads, q_pos).float()
        k = _rows(data.keys, [h // group for h in heads], k_pos).float()
        scores = (q @ k.transpose(1, 2)) * data.scaling
        if data.softcap:
            scores = torch.tanh(scores / data.softcap) * data.softcap
        allowed = allowed_mask(q_pos, k_pos, data.is_causal, data.sliding_window)
        bias = self._bias(layer, heads, q_pos, k_pos)
        if bias is not None:
            scores = scores + bias
        return scores.masked_fill(~allowed, float("-inf"))

    def _head_edits(self, layer: int, head: int) -> tuple[ScaleAttention, ...]:
        """This head's ScaleAttention edits on this layer, as single-head edits."""
        return tuple(replace(e, heads=None) for e in self.edits if isinstance(e, ScaleAttention)
                     and (e.layers is None or layer in e.layers) and (e.heads is None or head in e.heads))

    def _bias(self, layer: int, heads: list[int], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
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
        data = self._layer(layer)
        any_allowed = torch.zeros(len(q_pos), dtype=torch.bool, device=q_pos.device)
        any_alive = torch.zeros_like(any_allowed)
        for k_start in range(0, len(self), BLOCK):
            k_pos = torch.arange(k_start, min(len(self), k_start + BLOCK), device=q_pos.device)
            allowed = allowed_mask(q_pos, k_pos, data.is_causal, data.sliding_window)
            raw = edit_bias(edits, 1, q_pos, k_pos)[0]
            any_allowed |= allowed.any(-1)
            any_alive |= (allowed & ~torch.isneginf(raw)).any(-1)
        return any_allowed & ~any_alive

    def _row_logsumexp(self, layer: int, heads: list[int], q_pos: torch.Tensor) -> torch.Tensor:
        """[heads, nq]: each row's normaliser over all its keys, computed blockwise once per
        (layer, head, row) and kept on the CPU."""
        n, dev = len(self), self._device(layer)
        caches = [self._lse.setdefault((layer, head), torch.full((n,), float("nan"))) for head in heads]
        missing = torch.stack([c[q_pos] for c in caches]).isnan().any(0)
        todo = q_pos[missing].unique()
        if len(todo):
            _, k_block = _blocks(_budget(dev) // len(heads), len(todo), n)
            running = None
            for k_start in range(0, n, k_block):
                k_pos = torch.arange(k_start, min(n, k_start + k_block))
                block = torch.logsumexp(self._scores(layer, heads, todo, k_pos), dim=-1)
                running = block if running is None else torch.logaddexp(running, block)
            sinks = self._layer(layer).sinks
            if sinks is not None:  # a sink takes its share of every row: the keys' rows sum to less than 1
                running = torch.logaddexp(running, sinks[heads].to(running.device)[:, None])
            running = running.cpu()
            for cache, values in zip(caches, running):
                cache[todo] = values
        return torch.stack([c[q_pos] for c in caches]).to(dev)


def _rows(t: torch.Tensor, heads: list[int], pos: torch.Tensor) -> torch.Tensor:
    """t[heads][:, pos] for t [H, T, d], gathering positions before heads: no copy of all T."""
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
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive integer; got {size!r}")


def decode_each(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each id decoded on its own, as `batch_decode([[i] for i in ids])` does; in one call
    into the Rust tokenizer when there is one (a Python loop costs ~2.5 us a token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False)
    if backend is not None and hasattr(backend, "decode_batch") and not cleanup:
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tokenizer.batch_decode([[i] for i in ids])


def top_k_of(logits: torch.Tensor, k: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = torch.topk(probs, min(k, probs.shape[-1]))
    return ids.cpu(), values.cpu()


def probability_of(logits: torch.Tensor, token: int) -> float:
    return float(torch.softmax(logits.float(), dim=-1)[token])

