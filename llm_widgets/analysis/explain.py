"""`trace.explain_attention(layer, head, query, key)`: why a head attends where it does, as an exact
sum of (query-side component x key-side component) terms.

With each normalisation's scale held at the value it had in the run, an attention's queries and
keys are affine in the residual stream it reads (projections, QK-norms, rotary embeddings are
linear), and that stream is a sum of components (explain_stream.py): the embeddings, every earlier
head's output (the output projection split by head) and MLP's output, and biases. So the
pre-softmax score q_i . k_j * scaling splits into one term per pair of components, adding up to
it. A cross-attention's queries come from the decoder's stream and its keys from the encoder's
output: its two sides have components of their own.

No per-model code: the explained attention module itself runs on the components (`Projector`),
its attention call stopped at transformers' attention interface where the queries and keys
arrive. The decomposition is checked against the run's own score (`residual_error`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError
from ..trace import Trace
from ..trace.plain import mha_arguments, projected
from ..trace.runner import held
from .cost import Plan, Work, plans
from .explain_stream import (
    CHUNK_TOKENS,
    KV_NAMES,
    FrozenNorm,
    Kept,
    Probe,
    Stopped,
    Stream,
    caller,
    close,
    decoder_only_blocks,
    frozen_of,
    frozen_post,
    out_projection,
    out_weight,
    probing,
    run_kept,
    same,
    seq2seq_blocks,
    stream,
)

# --- the explained attention run on the components ---


class Projector:
    """The explained attention module run on rows of components, stopped where its queries and
    keys arrive: each component's share of head `head`'s query at `q_at` and keys at `k_at` (the
    stream's positions), and what a zero stream gives (biases, the norm's shift). A cross-attention
    is given the encoder's components as its `kv_name` argument, zeros on the other side."""

    plain = False  # (PlainProjector: nn.MultiheadAttention's)

    def __init__(self, model, kept: Kept, attention, head: int, q_at: list[int], k_at: list[int], point, cross: bool):
        assert kept.call is not None  # (run_kept refuses a run without it)
        args, kwargs = kept.call
        hidden, self.kv_name, _ = call_inputs(kept.call, self.plain)
        self.before, self.qk = _input_norm(kept, attention, kept.row(hidden), point)
        self.cross = cross
        self.at = torch.tensor(sorted({*q_at, *k_at})) if not self.cross else torch.tensor(q_at)
        where = {p: i for i, p in enumerate(self.at.tolist())}
        self.q_index = [where[p] for p in q_at]
        self.k_index = [where[p] for p in k_at] if not self.cross else list(range(len(k_at)))
        self.k_at = torch.tensor(k_at)
        self.head, self.model, self.attention = head, model, attention
        self.dtype, self.device = hidden.dtype, hidden.device
        self.caller = caller(model, attention)
        self.probe = Probe(stop=id(self.caller))
        self.args, self.kwargs = self._cut(args, kwargs, hidden.shape[1])
        shift = None if self.before is None else self.before.bias
        self.shift = torch.zeros(hidden.shape[-1]) if shift is None else shift

    def _cut(self, args: tuple, kwargs: dict, length: int) -> tuple[tuple, dict]:
        """The call's other arguments cut to the positions run (the hidden states and the encoder's
        output are given anew)."""
        kept = {
            k: _sliced(v, self.at, length, k) for k, v in kwargs.items() if k not in ("hidden_states", self.kv_name)
        }
        return tuple(_sliced(a, self.at, length) for a in args[1:]), kept

    def both(self, stream: Stream) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention: (Q [m, d], K [m, keys, d], q0 [d], k0 [keys, d]) in one pass per chunk."""
        qs, ks = [], []
        q0 = k0 = torch.zeros(0)
        with self._active():
            for rows in _rows(stream, self.at):
                q, k = self._call(self._hidden(rows))
                q0, k0 = q[0], k[0]
                qs.append(q[1:] - q0)
                ks.append(k[1:] - k0)
        return torch.cat(qs), torch.cat(ks), q0, k0

    def queries(self, stream: Stream) -> tuple[torch.Tensor, torch.Tensor]:
        """Each component's share of the query [m, d], and the constant's [d]."""
        if not self.cross:
            q, _, q0, _ = self.both(stream)
            return q, q0
        keys = lambda rows: torch.zeros(len(rows), len(self.k_at), rows.shape[-1])  # noqa: E731
        return self._shares(stream, self.at, lambda rows: self._call(self._hidden(rows), keys(rows))[0])

    def keys(self, stream: Stream) -> tuple[torch.Tensor, torch.Tensor]:
        """Each component's share of the keys [m, keys, d], and the constant's [keys, d]."""
        if not self.cross:
            _, k, _, k0 = self.both(stream)
            return k, k0
        queries = lambda rows: torch.zeros(len(rows), len(self.at), rows.shape[-1])  # noqa: E731
        return self._shares(stream, self.k_at, lambda rows: self._call(self._hidden(queries(rows)), rows)[1])

    def _shares(self, stream: Stream, at: torch.Tensor, project) -> tuple[torch.Tensor, torch.Tensor]:
        """A cross-attention's one side: `project` of each chunk of rows (after a zero row, whose
        result is the constant), less the constant."""
        shares, constant = [], torch.zeros(0)
        with self._active():
            for rows in _rows(stream, at):
                found = project(rows)
                constant = found[0]
                shares.append(found[1:] - constant)
        return torch.cat(shares), constant

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        with probing(self.model, [self.caller], self.probe), _held_norms(self.qk, self.at):
            yield

    def _hidden(self, rows: torch.Tensor) -> torch.Tensor:
        """The query side's rows through the input norm (held at its scale), its shift added."""
        normed = rows if self.before is None else self.before.linear(rows, self.before.scale[self.at])
        return normed + self.shift

    def _call(self, hidden: torch.Tensor, kv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's query at the query position and keys at the keys, per row: ([rows, d], [rows, keys, d])."""
        kv = None if kv is None else kv.to(self.dtype).to(self.device)
        query, key = self._queries_keys(hidden.to(self.dtype).to(self.device), kv)  # [rows, heads, positions, d]
        group = query.shape[1] // key.shape[1]
        q = query[:, self.head, self.q_index[0]].float().cpu()
        k = key[:, self.head // group, self.k_index].float().cpu()
        return q, k

    def _queries_keys(self, hidden: torch.Tensor, kv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The explained module run on the rows, stopped where its queries and keys arrive."""
        kwargs = dict(self.kwargs)
        if kv is not None:
            kwargs[self.kv_name] = kv
        try:
            self.attention(hidden, *self.args, **kwargs)
        except Stopped:
            pass
        return self.probe.calls[id(self.caller)]


class PlainProjector(Projector):
    """The same for nn.MultiheadAttention (a plain PyTorch model): its queries and keys are its
    input projections' (a cross-attention's keys read its `key` argument)."""

    plain = True

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        yield

    def _cut(self, args: tuple, kwargs: dict, length: int) -> tuple[tuple, dict]:
        return (), {}

    def _queries_keys(self, hidden: torch.Tensor, kv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(x: torch.Tensor, which: int) -> torch.Tensor:  # rows are [rows, positions, d]: the module's layout
            return projected(self.attention, x if self.attention.batch_first else x.transpose(0, 1), which)

        return heads(hidden, 0), heads(hidden if kv is None else kv, 1)


def _rows(stream: Stream, at: torch.Tensor) -> Iterator[torch.Tensor]:
    """The components a chunk at a time, after a zero row (what the constant parts give)."""
    for chunk in _chunks(stream, max(1, min(256, CHUNK_TOKENS // len(at)))):
        yield torch.cat([torch.zeros_like(chunk[:1]), chunk])


def _chunks(stream: Stream, size: int) -> Iterator[torch.Tensor]:
    """The components' vectors in the stream's order, `size` at a time (across its parts)."""
    buffer: list[torch.Tensor] = []
    held = 0
    for _, thunk in stream.parts:
        vectors = thunk()
        buffer.append(vectors)
        held += len(vectors)
        while held >= size:
            joined = torch.cat(buffer)
            yield joined[:size]
            buffer, held = [joined[size:].clone()], held - size  # (a copy: the rest does not keep `joined`)
    if held:
        yield torch.cat(buffer)


def _sliced(value: Any, at: torch.Tensor, length: int, name: str = "") -> Any:
    """A call argument cut to the positions `at`: tensors with a sequence axis of `length` (1 after
    the batch's, or the first for cache_position); caches and masks dropped (the probe stops first)."""
    if name in ("attention_mask", "mask", "past_key_values", "past_key_value", "layer_past", "cache"):
        return None
    if isinstance(value, torch.Tensor):
        if name == "cache_position" or (value.dim() == 1 and value.shape[0] == length):
            return value[at.to(value.device)]
        if value.dim() >= 2 and value.shape[1] == length:
            return value[:, at.to(value.device)]
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_sliced(v, at, length) for v in value)
    return value


def _input_norm(kept: Kept, attention: torch.nn.Module, hidden: torch.Tensor, point: torch.Tensor):
    """The explained attention's norm before it (held at its scale), and its QK-norms (inside the
    attention module, each with its scale): (input norm or None, [(module, frozen)])."""
    inside = set(map(id, attention.modules()))
    before, qk = None, []
    for module, a, b in kept.norms:
        if id(module) in inside:
            qk.append((module, frozen_of(kept, module, a, b)))
        elif before is None and same(b, hidden) and close(a, point):
            before = frozen_of(kept, module, a, b)
    if before is None and not close(hidden, point):
        raise InputError(
            "the explained attention does not read its residual stream through one norm: explain_attention "
            "cannot follow the stream into it"
        )
    return before, qk


@contextlib.contextmanager
def _held_norms(norms: list[tuple[torch.nn.Module, FrozenNorm]], at: torch.Tensor) -> Iterator[None]:
    """The QK-norms compute with their run scales at `at` while the probe runs."""

    def held_at(frozen: FrozenNorm):
        def hook(_m, args, _output):
            x = args[0]
            scale = frozen.scale  # [..., T, ..., 1] as the run's input; the axis that is now len(at) is positions
            for axis, (run, now) in enumerate(zip(scale.shape[:-1], x.shape[1:-1])):
                if run != now:
                    scale = scale.index_select(axis, at.to(scale.device))
            out = frozen.linear(x.float(), scale)
            return (out + frozen.bias if frozen.bias is not None else out).to(x.dtype)

        return hook

    handles = [module.register_forward_hook(held_at(frozen)) for module, frozen in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# --- the result ---


class AttentionExplanation:
    """Why head `layer.head` at `query` scores `keys` as it does: the pre-softmax score of each key
    split into (query-side component x key-side component) terms that add up to it.

    Components: the embeddings, each earlier head (`head l.h`) and MLP (`mlp l`), `biases` (the
    out projections' and post-norms' constant vectors) and, on each side, `bias` (what the
    projection gives a zero stream: its bias and its norm's shift). An encoder-decoder's are named
    by their stack ("encoder head 0.1", "decoder mlp 1", "cross head 1.2"); a cross-attention's key
    side (`key_components`) is the encoder's output, its query side (`components`) the decoder's
    stream. `extra`: terms that are not
    products (a position bias the model adds; an edit's log factor). The score is before any
    softcap (Gemma 2's) and before the mask; a sink (GPT-OSS) takes its share in the softmax, not
    here."""

    def __init__(self, trace, stack, layer, head, query, keys, names, q, k, scaling, extra, reference, key, softcap):
        self.trace, self.stack, self.layer, self.head, self.query, self.keys = trace, stack, layer, head, query, keys
        self.components = names[0] + ["bias"]  # the query side's
        self.key_components = names[1] + ["bias"]
        self._q, self._k = q, k  # [m + 1, d], [m + 1, keys, d]
        self.scaling, self.extra, self.softcap = scaling, extra, softcap
        self.reference = reference  # the run's own scores (from the trace's queries and keys) [keys]
        self.key = key  # the key explained by .terms, .top, .total: the one given, or the row's highest
        self.sources: dict[tuple[str, str], list[tuple[int, float]]] = {}  # depth 2: see by_source

    @property
    def scores(self) -> torch.Tensor:
        """Each key's score as the terms add it up [keys]."""
        total = torch.einsum("ad,bkd->k", self._q, self._k) * self.scaling
        for values in self.extra.values():
            total = total + values
        return total

    @property
    def total(self) -> float:
        """The explained key's score (the sum of its terms)."""
        return float(self.scores[self.keys.index(self.key)])

    @property
    def residual_error(self) -> float:
        """The largest difference between a key's summed terms and the run's score: ~0."""
        return float((self.scores - self.reference).abs().max())

    def terms(self, key: int | None = None) -> torch.Tensor:
        """[query-side components, key-side components]: each pair's term for `key` (default: the explained one)."""
        index = self._key_index(key)
        return (self._q @ self._k[:, index].t()) * self.scaling

    def versus(self, key: int, other: int) -> torch.Tensor:
        """Why `key` scores above `other`: the difference of their terms."""
        return self.terms(key) - self.terms(other)

    def query_side(self, key: int | None = None) -> dict[str, float]:
        """Each query-side component's part of the score (summed over the key side)."""
        return dict(zip(self.components, self.terms(key).sum(1).tolist()))

    def key_side(self, key: int | None = None) -> dict[str, float]:
        """Each key-side component's part of the score (summed over the query side)."""
        return dict(zip(self.key_components, self.terms(key).sum(0).tolist()))

    def top(self, n: int = 10, key: int | None = None, versus: int | None = None) -> list[tuple[str, str, float]]:
        """The n largest terms (by size) for `key`: (query-side component, key-side component, term);
        with `versus` (another key), of the difference: why `key` scores above (or below) it."""
        checks.integer(n, "n", low=1)
        terms = self.terms(key) if versus is None else self.versus(self.key if key is None else key, versus)
        order = terms.abs().flatten().argsort(descending=True)[:n].tolist()
        width = terms.shape[1]
        return [(self.components[i // width], self.key_components[i % width], float(terms.flatten()[i])) for i in order]

    def by_source(self, component: str, side: str = "key") -> list[tuple[int, str, float]]:
        """depth=2: a head component's part of the explained key's score on one side ("key" or
        "query"), split by the source token that head read: (position, token, term), largest first,
        adding up to that component's `key_side()` (or `query_side()`) value. The three largest head
        components of each side are split."""
        checks.choice(side, "side", ("key", "query"))
        if (side, component) not in self.sources:
            split = sorted(name for s, name in self.sources if s == side)
            raise InputError(
                f"{component!r} is not split by source on the {side} side: explain with depth=2; split there: {split}"
            )
        tokens = self.trace.tokens
        rows = sorted(self.sources[(side, component)], key=lambda st: -abs(st[1]))
        return [(t, tokens[t], term) for t, term in rows]

    def to_dataframe(self, key: int | None = None):
        """A row per pair of components: query_component, key_component, term (largest first)."""
        import pandas as pd

        rows = self.top(self.terms(key).numel(), key)
        return pd.DataFrame(rows, columns=["query_component", "key_component", "term"])

    def _key_index(self, key: int | None) -> int:
        key = self.key if key is None else key
        if key not in self.keys:
            raise InputError(f"key {key!r} is not among the explained keys ({self.keys[0]} to {self.keys[-1]})")
        return self.keys.index(key)

    def __repr__(self) -> str:
        what = f"key {self.key}" if len(self.keys) == 1 else f"{len(self.keys)} keys (highest: {self.key})"
        top = self.top(1)[0]
        return (
            f"AttentionExplanation({_stacked(self.stack)}head {self.layer}.{self.head}, query {self.query}, {what}: "
            f"score {self.total:.4g} = {len(self.components)}x{len(self.key_components)} terms, largest {top[0]} x "
            f"{top[1]} = {top[2]:.4g}; "
            f"residual error {self.residual_error:.2g})"
        )


def _stacked(stack: str) -> str:
    return "" if stack == "self" else f"{stack} "


@provides(Trace.explain_attention)
def explain_attention(
    trace: Trace, layer: int, head: int, query: int, key: Any, depth: int, stack: str | None
) -> AttentionExplanation:
    """See Trace.explain_attention."""
    with held(trace.model.model):
        return _explain(trace, layer, head, query, key, depth, stack)


def _explain(trace: Trace, layer: int, head: int, query: int, key: Any, depth: int, stack: str | None):
    chosen = trace.stack(stack)
    checks.integer(layer, "layer", low=0, high=chosen.n_layers - 1)
    checks.integer(head, "head", low=0, high=chosen.n_heads - 1)
    checks.integer(depth, "depth", low=1, high=2, note=" (1: the residual stream's components; 2: heads by source too)")
    data = chosen.layer(layer)  # (raises for a layer without attention, or a trace without capture)
    keys = _keys(trace, chosen, data, query, key)
    side = _Sides(trace, chosen.name, layer, values=depth == 2)
    (q_first, _), (k_first, _) = chosen.queries, chosen.keys
    q_at, k_at = [query - q_first], [j - k_first for j in keys]
    if side.cross:
        queries, keys_side = side.q_stream(q_at), side.k_stream(k_at)
    else:  # one stream, at the positions the projector runs: both sides'
        queries = keys_side = side.q_stream(sorted({*q_at, *k_at}))
    projector = side.projector(head, q_at, k_at)
    if side.cross:
        (q, q0), (k, k0) = projector.queries(queries), projector.keys(keys_side)
    else:
        q, k, q0, k0 = projector.both(queries)
    names = (queries.names, keys_side.names)
    reference, extra = _reference(chosen, data, layer, head, query, keys)
    explained = key if key is not None else keys[int(reference.argmax())]
    explanation = AttentionExplanation(
        trace,
        chosen.name,
        layer,
        head,
        query,
        keys,
        names,
        torch.cat([q, q0[None]]),
        torch.cat([k, k0[None]]),
        data.scaling,
        extra,
        reference,
        explained,
        data.softcap,
    )
    if depth == 2:
        explanation.sources = _by_source(explanation, side)
    return explanation


class _Sides:
    """The streams an attention reads: its own (the query side's, and a self-attention's key side
    too) and, for a cross-attention, the encoder's output (the key side)."""

    def __init__(self, trace: Trace, stack: str, layer: int, values: bool):
        lm = trace.model
        self.trace, self.stack, self.layer = trace, stack, layer
        self.cross = stack == "cross"
        heads = {name: trace.stack(name).n_heads for name in trace.stacks}
        if lm.plain or trace.n_source:
            spec = seq2seq_blocks(lm.model, stack, heads, plain=lm.plain)
        else:
            spec = decoder_only_blocks(lm)
        own = [m for kind, m in spec.attentions[layer] if kind == ("cross" if self.cross else "attention")]
        if not own:
            raise InputError(f"layer {layer} of {lm.name} has no attention module of its own: nothing to explain")
        self.attention = own[0]
        self.upto = ["attention"] if self.cross else []  # what the block adds before the explained attention
        streams = [(Kept(spec), layer)]
        if self.cross:
            encoder = seq2seq_blocks(lm.model, "encoder", heads, plain=lm.plain)
            streams.append((Kept(encoder), len(encoder.blocks)))
        self.kept = run_kept(trace, streams, self.attention, values)
        assert self.kept[0].call is not None  # (run_kept refuses a run without it)
        self.call = self.kept[0].call
        if self.cross and call_inputs(self.call, lm.plain)[1] is None:
            raise InputError(
                f"{type(self.attention).__name__} is not given the encoder's output as {' or '.join(KV_NAMES)}: "
                f"explain_attention cannot run its keys on the encoder's components"
            )
        self.point: torch.Tensor | None = None  # the explained attention's stream [T, d], from q_stream
        self.q_chains: dict[str, list[FrozenNorm]] = {}
        self.k_chains: dict[str, list[FrozenNorm]] = {}

    def projector(self, head: int, q_at: list[int], k_at: list[int]) -> Projector:
        """The explained attention run on components (after q_stream: the stream it reads is known)."""
        assert self.point is not None
        kind = PlainProjector if self.trace.model.plain else Projector
        return kind(self.trace.model.model, self.kept[0], self.attention, head, q_at, k_at, self.point, self.cross)

    def q_stream(self, at: list[int]) -> Stream:
        """The explained attention's own stream (its queries' and a self-attention's keys')."""
        found = stream(self.kept[0], self.layer, self.upto, torch.tensor(at))
        self.point, self.q_chains = found.point, found.chains
        return found

    def k_stream(self, at: list[int]) -> Stream:
        """The encoder's output: its last block's, through its final norm if it has one."""
        kept = self.kept[1]
        positions = torch.tensor(at)
        found = stream(kept, len(kept.spec.blocks), [], positions)
        _, _, given = call_inputs(self.call, self.trace.model.plain)
        assert found.point is not None and given is not None  # (refused in __init__ otherwise)
        kv = self.kept[0].row(given)
        norm = next(((m, x, y) for m, x, y in kept.after if same(y, kv) and close(x, found.point)), None)
        if norm is not None:  # (a norm that gave the very tensor: even where it hardly changed it)
            found = found.through(frozen_of(kept, *norm), positions, "encoder final norm bias")
        elif not close(kv, found.point):
            raise InputError(
                "the cross-attention's keys do not read the encoder's last block (or a norm after it): "
                "explain_attention cannot follow the encoder's output into them"
            )
        self.k_chains = found.chains
        return found


def call_inputs(call: tuple[tuple, dict], plain: bool) -> tuple[torch.Tensor, str | None, torch.Tensor | None]:
    """The explained attention call's hidden states, and the name and value it was given the
    encoder's output by (a cross-attention's; None for self-attention)."""
    args, kwargs = call
    if plain:
        bound = mha_arguments(args, kwargs)
        return bound["query"], "key", bound["key"]
    name = next((name for name in KV_NAMES if isinstance(kwargs.get(name), torch.Tensor)), None)
    return args[0] if args else kwargs["hidden_states"], name, None if name is None else kwargs[name]


def _keys(trace: Trace, chosen, data, query: Any, key: Any) -> list[int]:
    """The keys to explain (positions of the trace): `key`, or every key `query` may attend to; a
    masked one refused."""
    (q_first, q_stop), (k_first, k_stop) = chosen.queries, chosen.keys
    checks.integer(query, "query", low=q_first, high=q_stop - 1, note=_span_note(chosen))
    q = query - q_first
    allowed = [
        j
        for j in range(k_first, k_stop)
        if (not data.is_causal or j - k_first <= q)
        and (not data.sliding_window or j - k_first > q - data.sliding_window)
    ]
    if key is None:
        return allowed
    checks.integer(key, "key", low=k_first, high=k_stop - 1, note=_span_note(chosen))
    if key not in allowed:
        window = f" within its sliding window of {data.sliding_window}" if data.sliding_window else ""
        raise InputError(
            f"query {query} cannot attend to key {key}: it sees keys {allowed[0]} to {allowed[-1]}{window} (the mask "
            f"hides the rest, so there is no score to explain)"
        )
    return [key]


def _span_note(chosen) -> str:
    if chosen.name == "self":
        return ""
    (q_first, q_stop), (k_first, k_stop) = chosen.queries, chosen.keys
    return (
        f" (the {chosen.name} attention's queries are positions {q_first} to {q_stop - 1} of the trace, its keys "
        f"{k_first} to {k_stop - 1})"
    )


def _reference(stack, data, layer: int, head: int, query: int, keys: list[int]):
    """The run's own scores of these keys (from the trace's queries and keys, with any position bias
    and edit), and the terms that are not products: {name: [keys]}."""
    (q_first, _), (k_first, _) = stack.queries, stack.keys
    group = data.queries.shape[-3] // data.keys.shape[-3]
    k_at = torch.tensor(keys) - k_first
    q = data.queries[head, query - q_first].float().cpu()
    k = data.keys[head // group, k_at.to(data.keys.device)].float().cpu()
    scores = (k @ q) * data.scaling
    extra: dict[str, torch.Tensor] = {}
    if data.bias is not None:
        extra["position bias"] = data.bias[head, query - q_first][k_at.to(data.bias.device)].float().cpu()
    edit = stack._edit_bias(layer, [head], torch.tensor([query]), torch.tensor(keys))
    if edit is not None:
        extra["edit"] = edit[0, 0].float().cpu()
    for values in extra.values():
        scores = scores + values
    return scores, extra


# --- depth 2: a head's term split by the token it read ---

SOURCE_HEADS = 3  # the heads split by source token at depth 2, on each side
_HEAD = re.compile(r"^(?:(encoder|decoder|cross) )?head (\d+)\.(\d+)$")


def _by_source(explanation: AttentionExplanation, side: _Sides) -> dict:
    """The largest head components on each side, split by the source position each read from
    (its attention there times that position's value, through its columns of the out projection
    and any norm after): {(side, component): [(source, term)]}, each list adding up to that
    component's side total."""
    chosen = explanation.trace.stack(explanation.stack)
    (q_first, _), (k_first, _) = chosen.queries, chosen.keys
    q_pos, k_pos = explanation.query - q_first, explanation.key - k_first
    projector = side.projector(explanation.head, [q_pos], [k_pos])
    q_full = explanation._q.sum(0)
    k_full = explanation._k[:, explanation._key_index(None)].sum(0)
    out = {}
    for which, totals in (("key", explanation.key_side()), ("query", explanation.query_side())):
        kept = side.kept[1] if which == "key" and side.cross else side.kept[0]
        chains = side.k_chains if which == "key" and side.cross else side.q_chains
        position = k_pos if which == "key" else q_pos
        names = [n for n in sorted(totals, key=lambda n: -abs(totals[n])) if head_of(n)][:SOURCE_HEADS]
        for name in names:
            found = _source_vectors(explanation.trace, kept, name, position, chains.get(name, []))
            if found is None:
                continue
            vectors, sources = found
            labels = [f"{name} from {t}" for t in sources]
            width = len(projector.k_at) if which == "key" and side.cross else len(projector.at)
            split = Stream(labels, [(labels, lambda v=vectors, w=width: v[:, None].expand(-1, w, -1))])
            if which == "key":
                terms = projector.keys(split)[0][:, 0] @ q_full
            else:
                terms = projector.queries(split)[0] @ k_full
            out[(which, name)] = list(zip(sources, (terms * explanation.scaling).tolist()))
    return out


def head_of(component: str) -> tuple[str | None, int, int] | None:
    """A head component's (stack, layer, head): "head 3.1" -> (None, 3, 1), "cross head 0.2" ->
    ("cross", 0, 2); None for any other component."""
    match = _HEAD.match(component)
    return None if match is None else (match.group(1), int(match.group(2)), int(match.group(3)))


def _source_vectors(trace: Trace, kept: Kept, name: str, position: int, chain: list[FrozenNorm]):
    """What head `name` wrote at `position` (of its stream) from each source it attended to
    [sources, d], through the norms after it, and those sources' positions in the trace; None where
    the head's out projection or values were not seen."""
    found = head_of(name)
    assert found is not None
    prefix, layer, head = found
    kind = "cross" if prefix == "cross" else "attention"
    projection = out_projection(kept, (layer, kind))  # (BERT's: its attention module normalises after it)
    if projection is None or (layer, kind) not in kept.values:
        return None
    source = trace.stack(prefix)
    probs = source.attention(layer, head, source.queries[0] + position)[0]
    values = kept.values[(layer, kind)]
    v = values[head // (source.n_heads // values.shape[0])]  # [T, head dim]
    sources = (probs > 0).nonzero()[:, 0]
    weight = out_weight(projection[0])
    width = weight.shape[1] // source.n_heads
    if v.shape[-1] != width:
        raise InputError(f"layer {layer}'s values ({v.shape[-1]} wide) are not its heads' out-projection columns")
    written = (probs[sources, None] * v[sources].cpu()) @ weight[:, head * width : (head + 1) * width].t()
    for frozen in [frozen_post(kept, (layer, kind))[0], *chain]:
        if frozen is not None:
            written = frozen.linear(written, frozen.scale[position])
    return written, (sources + source.keys[0]).tolist()


# An explanation's own work besides the forward, per number of the residual stream's components it
# projects (components x positions x width), and at depth 2 per number of the sources it splits
# (earlier heads x key positions x source positions x head width): benchmarks/bench_estimate.py, 2-core CPU
EXPLAIN_ELEMENT_S = 12e-9
SOURCE_ELEMENT_S = 4e-9
KEPT_COPIES = 7  # the kept forward's residual-stream-sized tensors per block up to the explained one


@plans(Trace.explain_attention, explain_attention)
def plan_explain(trace, layer, head, query, key=None, depth=1, *, stack=None) -> Plan:
    """trace.explain_attention's work: one forward stopped at the explained attention, every earlier
    component of the stream projected at the query's and the keys' positions (depth 2: each earlier
    head's part at the keys split by the tokens it read)."""
    chosen = trace.stack(stack)
    checks.integer(layer, "layer", low=0, high=chosen.n_layers - 1)
    data = chosen.layer(layer)
    keys = _keys(trace, chosen, data, query, key)
    lm = trace.model
    facts = lm.facts
    heads = layer * chosen.n_heads
    components = heads + layer + 3  # earlier heads and MLPs, the embeddings, biases, edits
    positions = len(keys) + 1
    width = facts.hidden_size * 4
    extra = components * positions * facts.hidden_size * EXPLAIN_ELEMENT_S
    # the kept forward's streams at every position, and the components at the positions explained
    kept = KEPT_COPIES * (layer + 1) * len(trace) * width + 0.85 * components * min(positions, 512) * width
    if depth == 2:
        sources = heads * len(keys) * len(trace) * facts.head_dim
        extra += sources * SOURCE_ELEMENT_S
        kept += 4 * sources
    share = (layer + 0.5) / max(chosen.n_layers, 1)
    return Plan(
        lm, [Work("the forward to the attention, the components", 1, 1, len(trace), share=share, extra_s=extra)], kept
    )
