"""`trace.explain_attention(layer, head, query, key)`: why a head attends where it does, as an exact
sum of (query-side component x key-side component) terms.

With each normalisation's scale held at the value it had in the run, a layer's queries and keys
are affine in its residual stream (projections, QK-norms, rotary embeddings are linear), and the
residual stream is a sum of components: the token (and position) embeddings, every earlier head's
output (the output projection split by head) and MLP's output, and biases. So the pre-softmax
score q_i . k_j * scaling splits into one term per pair of components, adding up to it. In a
post-norm model (BERT) each block's norms act on the stream itself: held at their scales they are
linear maps, which every earlier component passes through.

No per-model code: one forward of the traced sequence keeps each block's input, attention output
(and the output projection's input, for the heads), MLP output and every norm's input; each norm
is recognised (LayerNorm or RMSNorm, with weight, 1 + weight or none, centred or not) by matching
the output it gave; the layer's own attention module then runs on the components (the positions
needed only), its attention call stopped at transformers' attention interface where the queries
and keys arrive. The decomposition is checked against the run's own score (`residual_error`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError
from ..models.anatomy import anatomy, block_output
from ..models.devices import input_device
from ..trace import Trace
from ..trace.capture import STATE, RunState, attention_modules, instrument, routed
from ..trace.runner import held
from ..trace.steering import added_by

CHUNK_TOKENS = 4096  # component rows x positions run through the attention module at once (memory bounded)
TOLERANCE = 1e-4  # a norm is recognised when a formula gives its output to this (relative)


# --- norms held at their run scale ---


@dataclass
class FrozenNorm:
    """A norm with its scale held at the run's: f(c) = weight * centre(c) / scale (linear), plus
    `bias` (a constant). scale: [..., positions, (heads,) 1] as the run computed it."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    centred: bool
    scale: torch.Tensor

    def linear(self, c: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.centred:
            c = c - c.mean(-1, keepdim=True)
        c = c / (self.scale if scale is None else scale)
        return c if self.weight is None else c * self.weight


def _eps(norm: torch.nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon", "layer_norm_eps"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-6


def freeze(norm: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> FrozenNorm:
    """`norm` as it acted on its run input `x` (output `y`), its scale held: the formula (centred or
    not; weight, 1 + weight or none; its bias) that gives `y` from `x`, or a clear error."""
    x, y = x.float(), y.float()
    eps = _eps(norm)
    raw = getattr(norm, "weight", None)
    weights = [None] if raw is None else [raw.detach().float(), 1 + raw.detach().float()]
    bias = getattr(norm, "bias", None)
    bias = bias.detach().float() if isinstance(bias, torch.Tensor) else None
    size = float(y.abs().max()) + 1e-6
    for centred in (False, True):
        p = x - x.mean(-1, keepdim=True) if centred else x
        scale = torch.sqrt(p.pow(2).mean(-1, keepdim=True) + eps)
        for weight in weights:
            frozen = FrozenNorm(weight, bias, centred, scale)
            guess = frozen.linear(x) + (0 if bias is None else bias)
            if guess.shape == y.shape and float((guess - y).abs().max()) <= TOLERANCE * size:
                return frozen
    raise InputError(
        f"explain_attention cannot hold the scale of {type(norm).__name__}: its output is not a LayerNorm's or an "
        f"RMSNorm's of its input (centred or not, with weight, 1 + weight or none), so the residual stream does "
        f"not split linearly through it"
    )


# --- one forward of the traced sequence, kept ---


class _Probe:
    """Stands in for a run's state on some attention modules (capture.py's wrapper calls `attend`):
    keeps each call's queries, keys and values; at `stop` (a module's id) ends the forward there;
    elsewhere hands the call on to the run's own state (an edited run's), if any."""

    def __init__(self, stop: int | None = None):
        self.thread = threading.get_ident()
        self.stop = stop
        self.inner: dict[int, Any] = {}
        self.calls: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the stopped call's queries and keys
        self.values: dict[int, torch.Tensor] = {}  # every call's values [kv_heads, T, d] (row 0)

    def attend(self, fn, module, query, key, value, attention_mask, kwargs):
        if id(module) == self.stop:
            self.calls[id(module)] = (query.detach(), key.detach())
            raise _Stopped
        self.values[id(module)] = value[0].detach().float()
        inner = self.inner.get(id(module))
        if inner is not None:
            return inner.attend(fn, module, query, key, value, attention_mask, kwargs)
        return fn(module, query, key, value, attention_mask, **kwargs)


class _Stopped(Exception):
    """The probe has the queries and keys: the rest of the forward need not run."""


@contextlib.contextmanager
def _probing(model: Any, modules: list[torch.nn.Module], probe: _Probe) -> Iterator[None]:
    """`probe` on `modules` (before a run's own state there, which it hands calls on to), the
    model's attention through our wrapper (already so inside an edited run); all as it was after."""
    previous = {id(m): m.__dict__.get(STATE) for m in modules}
    probe.inner = {k: v for k, v in previous.items() if v is not None}
    try:
        for module in modules:
            module.__dict__[STATE] = probe
        with routed(model):
            yield
    finally:
        for module in modules:
            if previous[id(module)] is None:
                module.__dict__.pop(STATE, None)
            else:
                module.__dict__[STATE] = previous[id(module)]


@dataclass
class _Kept:
    """Row 0 of one forward (float32), per block up to the explained layer: its input; for earlier
    blocks, what each adds (attention, MLP: the module's output, or a post-norm's output of it)
    and the attention's out projection (module, input); for the explained layer, its norms'
    (module, input, output) and its attention module's call (args, kwargs)."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    attention_out: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)
    last_linear: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    projection: dict[int, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)
    post_norms: dict[tuple[int, str], tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    norms: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    block_norms: dict[int, list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    call: tuple[tuple, dict] | None = None
    positions: torch.Tensor | None = None  # a learned position embedding's output (GPT-2's wpe), if any
    tokens: torch.Tensor | None = None  # the token embedding's output
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # earlier layers' values [kv_heads, T, d]
    frozen: dict[int, FrozenNorm] = field(default_factory=dict)  # each norm held at its scale, by id
    steered: dict[int, torch.Tensor] = field(default_factory=dict)  # what SteerResidual edits add after block i


def _frozen(kept: _Kept, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> FrozenNorm:
    """freeze(module, x, y), worked out once per explanation (depth 2 asks again per head split)."""
    if id(module) not in kept.frozen:
        kept.frozen[id(module)] = freeze(module, x, y)
    return kept.frozen[id(module)]


def _caller(model: Any, attention: torch.nn.Module) -> torch.nn.Module:
    """The module inside a block's attention that calls transformers' attention interface (the
    attention itself, or BERT's self-attention inside its BertAttention): where a probe stands."""
    inside = set(map(id, attention.modules()))
    return next((m for m in attention_modules(model) if id(m) in inside), attention)


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and not any(True for _ in module.children())


def _same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.shape == b.shape and torch.equal(a, b)


def _hooks(model: Any, parts, layer: int, kept: _Kept) -> list:
    """Forward hooks that fill `kept` (removed by the caller)."""
    handles = []

    def block_in(i):
        def hook(_m, args, kwargs):
            if len(kept.inputs) == i:
                kept.inputs.append(_row(args[0] if args else kwargs["hidden_states"]))

        return hook

    def norm(i):
        def hook(module, args, output):
            x, y = _row(args[0]), _row(block_output(output))
            if i == layer:
                kept.norms.append((module, x, y))
            else:
                kept.block_norms.setdefault(i, []).append((module, x, y))
            for what, store in (("attention", kept.attention_out), ("mlp", kept.mlp_out)):
                if _same(store.get(i), x):  # a post-norm: what the block adds is its output
                    kept.post_norms.setdefault((i, what), (module, x, y))

        return hook

    def linear(i):
        def hook(module, args, output):
            kept.last_linear[i] = (module, args[0], output)

        return hook

    def attention_out(i):
        def hook(_m, _args, output):
            out = _row(block_output(output))
            kept.attention_out.setdefault(i, out)
            last = kept.last_linear.get(i)  # the out projection is the attention's last linear, if it gave the output
            if last is not None and _same(_row(last[2]), out):
                kept.projection.setdefault(i, (last[0], _row(last[1])))

        return hook

    def call(_m, args, kwargs):
        kept.call = (args, kwargs)

    handles += _embedding_hooks(model, kept)
    for i, block in enumerate(parts.blocks[: layer + 1]):
        handles.append(block.register_forward_pre_hook(block_in(i), with_kwargs=True))
        handles += [m.register_forward_hook(norm(i)) for m in block.modules() if _is_norm(m)]
        attention, mlp = parts.attentions[i], parts.mlps[i]
        if i == layer and attention is not None:
            handles.append(attention.register_forward_pre_hook(call, with_kwargs=True))
        if i < layer and attention is not None:
            handles.append(attention.register_forward_hook(attention_out(i)))
            linears = [m for m in attention.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
            handles += [m.register_forward_hook(linear(i)) for m in linears]
        if i < layer and mlp is not None:
            handles.append(mlp.register_forward_hook(_setter(kept.mlp_out, i)))
    return handles


def _embedding_hooks(model: Any, kept: _Kept) -> list:
    """Hooks keeping the token embedding's output and a learned position embedding's (GPT-2's wpe)."""

    def position(_m, _args, output):
        kept.positions = _row(output) if output.dim() == 3 else None

    def token(_m, _args, output):
        kept.tokens = _row(output) if output.dim() == 3 else None

    tokens = model.get_input_embeddings()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not tokens]
    return [m.register_forward_hook(position) for m in embeddings] + [tokens.register_forward_hook(token)]


def _setter(store: dict, i: int):
    def hook(_m, _args, output):
        store.setdefault(i, _row(block_output(output)))

    return hook


def _row(t: torch.Tensor) -> torch.Tensor:
    return t[0].detach().float()


# --- the residual stream's components at the explained layer ---


@dataclass
class _Stream:
    """The components of the explained layer's input at the positions `at`: their names, and per
    part (an embedding, a layer's heads, an MLP, the biases summed) a function giving its vectors
    [n, len(at), d] when asked (a row's worth of every head at once would not fit)."""

    names: list[str]
    parts: list[tuple[list[str], Any]]  # (names, thunk -> [n, len(at), d])


def _frozen_post(kept: _Kept, i: int, what: str) -> tuple[FrozenNorm | None, torch.Tensor | None]:
    found = kept.post_norms.get((i, what))
    if found is None:
        return None, None
    frozen = _frozen(kept, *found)
    return frozen, frozen.bias


def _stream(kept: _Kept, layer: int, n_heads: int, at: torch.Tensor) -> _Stream:
    """Embeddings, each earlier head and MLP, and the biases: what adds up to the layer's input
    (through the blocks' norms held at their scales, in post-norm models)."""
    if layer and not _additive(kept, 0):
        post = _post_stream(kept, layer, n_heads, at)
        if post is not None:
            return post
    x0 = kept.inputs[0][at]
    parts: list[tuple[list[str], Any]] = []
    tokens, positions = kept.tokens, kept.positions
    if (
        tokens is not None
        and positions is not None
        and positions.shape == tokens.shape
        and _close(tokens + positions, kept.inputs[0])  # (not where a norm follows: BERT's)
    ):
        position = positions[at]  # learned absolute positions (GPT-2's wpe), as the model added them
        parts += [
            (["token embedding"], lambda: (x0 - position)[None]),
            (["position embedding"], lambda: position[None]),
        ]
    else:
        parts.append((["embedding"], lambda: x0[None]))
    biases = torch.zeros_like(x0[0])
    for i in range(layer):
        _check_additive(kept, i)
        projection = kept.projection.get(i)
        if projection is not None and i in kept.attention_out:  # split by head: the out projection's columns
            module, z = projection
            frozen, shift = _frozen_post(kept, i, "attention")
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias = bias.detach().float()
                biases = biases + (bias if frozen is None else frozen.linear(bias, frozen.scale[at]))
            if shift is not None:
                biases = biases + shift
            parts.append(([f"head {i}.{h}" for h in range(n_heads)], _heads(module, z, n_heads, at, frozen)))
        elif i in kept.attention_out:
            parts.append(([f"attention {i}"], lambda i=i: _added(kept, i, "attention")[at][None]))
        if i in kept.mlp_out:
            parts.append(([f"mlp {i}"], lambda i=i: _added(kept, i, "mlp")[at][None]))
        if i in kept.steered:  # a direction the run adds (lw.SteerResidual): a component of its own
            parts.append(([f"steering {i}"], lambda i=i: kept.steered[i][at][None]))
    constant = biases.expand(len(at), -1) if biases.dim() == 1 else biases
    parts.append((["biases"], lambda: constant[None].clone()))
    return _Stream([n for names, _ in parts for n in names], parts)


def _added(kept: _Kept, i: int, what: str) -> torch.Tensor:
    """What block i adds to the residual stream through its attention or MLP [T, d]."""
    post = kept.post_norms.get((i, what))
    if post is not None:
        return post[2]
    return (kept.attention_out if what == "attention" else kept.mlp_out)[i]


def _heads(module: Any, z: torch.Tensor, n_heads: int, at: torch.Tensor, frozen: FrozenNorm | None):
    """A thunk giving each head's share of the out projection's output (no bias), through the
    block's post-norm held at its scale if it has one: [heads, len(at), d]."""

    def thunk() -> torch.Tensor:
        weight = _out_weight(module)
        width = z.shape[-1] // n_heads
        zs = z[at].reshape(len(at), n_heads, width)
        out = torch.einsum("phw,ohw->hpo", zs, weight.reshape(weight.shape[0], n_heads, width))
        return out if frozen is None else frozen.linear(out, frozen.scale[at])

    return thunk


def _out_weight(module: Any) -> torch.Tensor:
    """An out projection's weight as [out, in] (GPT-2's Conv1D keeps [in, out])."""
    weight = module.weight.detach().float()
    return weight.t() if type(module).__name__ == "Conv1D" else weight


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= 1e-4 * (float(b.abs().max()) + 1.0)


def _summed(kept: _Kept, i: int) -> torch.Tensor:
    """Block i's input plus what its attention, its MLP and a steering edit add."""
    added = kept.inputs[i].clone()
    for what, store in (("attention", kept.attention_out), ("mlp", kept.mlp_out)):
        if i in store:
            added = added + _added(kept, i, what)
    if i in kept.steered:
        added = added + kept.steered[i]
    return added


def _additive(kept: _Kept, i: int) -> bool:
    """Block i's output is its input plus what its attention and its MLP add."""
    return _close(_summed(kept, i), kept.inputs[i + 1])


def _post_stream(kept: _Kept, layer: int, n_heads: int, at: torch.Tensor) -> _Stream | None:
    """Post-norm blocks (BERT): each of a block's norms acts on the residual stream plus what a
    sublayer adds (its attention's out projection, split by head, or its MLP); held at its run scale
    a norm is linear, so every component before it passes through it, and its shift joins the
    biases. None where the blocks are not so."""
    chain: list[FrozenNorm] = []
    raw: list[tuple[list[str], Any, int]] = [(["embedding"], lambda: kept.inputs[0][at][None], 0)]
    constant = torch.zeros_like(kept.inputs[0][at])
    for i in range(layer):
        residual = kept.inputs[i]
        if i in kept.steered or not kept.block_norms.get(i):
            return None
        for k, (module, u, y) in enumerate(kept.block_norms[i]):
            added, last = u - residual, kept.last_linear.get(i)
            if k == 0 and last is not None and _close(_row(last[2]), added):  # the out projection, by head
                bias = getattr(last[0], "bias", None)
                constant = constant + (bias.detach().float() if isinstance(bias, torch.Tensor) else 0)
                raw.append(
                    (
                        [f"head {i}.{h}" for h in range(n_heads)],
                        _heads(last[0], _row(last[1]), n_heads, at, None),
                        len(chain),
                    )
                )
            else:
                raw.append(([f"attention {i}" if k == 0 else f"mlp {i}"], lambda a=added: a[at][None], len(chain)))
            frozen = _frozen(kept, module, u, y)
            chain.append(frozen)
            constant = frozen.linear(constant, frozen.scale[at]) + (0 if frozen.bias is None else frozen.bias)
            residual = y
        if not _close(residual, kept.inputs[i + 1]):
            return None
    parts = [(names, _through(thunk, chain[start:], at)) for names, thunk, start in raw]
    parts.append((["biases"], lambda: constant[None].clone()))
    return _Stream([n for names, _ in parts for n in names], parts)


def _through(thunk: Any, norms: list[FrozenNorm], at: torch.Tensor) -> Any:
    """A part's vectors passed through these norms (each held at its scale), in order."""

    def passed() -> torch.Tensor:
        vectors = thunk()
        for frozen in norms:
            vectors = frozen.linear(vectors, frozen.scale[at])
        return vectors

    return passed


def _check_additive(kept: _Kept, i: int) -> None:
    """Block i's output is its input plus what its attention and its MLP add, or a clear error."""
    if not _additive(kept, i):
        error = float((kept.inputs[i + 1] - _summed(kept, i)).abs().max())
        raise InputError(
            f"block {i}'s output is not its input plus its attention's and its MLP's outputs (off by {error:.3g}): "
            f"explain_attention splits a residual stream that blocks add to (pre-norm or sandwich-norm blocks, "
            f"sequential or parallel) or that post-norm blocks normalise, which this model's are not"
        )


# --- the explained layer's queries and keys, per component ---


def _forward(trace: Trace, layer: int, parts, values: bool) -> _Kept:
    """One forward of the traced sequence (its edits applied), kept up to `layer`'s attention call
    (with `values`, every earlier attention's values too)."""
    lm = trace.model
    model = lm.model
    kept = _Kept()
    callers: list[torch.nn.Module | None] = [
        None if a is None else _caller(model, a) for a in parts.attentions[: layer + 1]
    ]
    probe = _Probe(stop=id(callers[layer]))
    ids = trace.input_ids[None].to(input_device(model))
    shape = (lm.facts.n_layers, lm.facts.n_heads)
    edited = (
        instrument(model, RunState(*shape, len(trace), trace.edits, capture=False, n_prompt=trace.n_prompt))
        if trace.edits
        else contextlib.nullcontext()
    )
    watched = [a for a in (callers if values else callers[layer:]) if a is not None]
    with edited:  # our hooks after the edits' own: what a module gave is read as the edits left it
        handles = _hooks(model, parts, layer, kept)
        try:
            with _probing(model, watched, probe):
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        except _Stopped:
            pass
        finally:
            for handle in handles:
                handle.remove()
    if kept.call is None or len(kept.inputs) <= layer:
        raise InputError(f"layer {layer}'s attention was not called in a forward of {lm.name}: nothing to explain")
    kept.values = {i: probe.values[id(a)] for i, a in enumerate(callers[:layer]) if id(a) in probe.values}
    for i in range(layer):
        steered = added_by(trace.edits, i, len(trace), trace.n_prompt)
        if steered is not None:
            kept.steered[i] = steered
    return kept


def _sliced(value: Any, at: torch.Tensor, length: int, name: str = "") -> Any:
    """A call argument cut to the positions `at`: tensors with a sequence axis of `length` (1 after
    the batch's, or the first for cache_position); caches and masks dropped (the probe stops first)."""
    if name in ("attention_mask", "past_key_values", "past_key_value", "layer_past", "cache"):
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


def _input_norm(kept: _Kept, attention: torch.nn.Module, hidden: torch.Tensor, x: torch.Tensor):
    """The explained layer's norm before its attention (held at its scale), and its QK-norms (inside
    the attention module, each with its scale): (input norm or None, [(module, frozen)])."""
    inside = set(map(id, attention.modules()))
    before, qk = None, []
    for module, a, b in kept.norms:
        if id(module) in inside:
            qk.append((module, _frozen(kept, module, a, b)))
        elif before is None and _same(b, hidden) and _same(a, x):
            before = _frozen(kept, module, a, b)
    if before is None and not _same(hidden, x):
        raise InputError(
            "the explained layer's attention does not read its block's input through one norm: explain_attention "
            "cannot follow the residual stream into it"
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


def _project(model, kept: _Kept, attention, stream: _Stream, at: torch.Tensor, head: int, query_at: int, keys_at):
    """Each component's share of the head's query (at `query_at` in `at`) and key (at `keys_at`),
    and the constant parts (what a zero stream gives: biases, the norm's shift): (Q [m, d],
    K [m, keys, d], q0 [d], k0 [keys, d])."""
    assert kept.call is not None  # (_forward refuses a run without it)
    args, kwargs = kept.call
    hidden = args[0] if args else kwargs["hidden_states"]
    before, qk = _input_norm(kept, attention, _row(hidden), kept.inputs[-1])
    length = hidden.shape[1]
    args = tuple(_sliced(a, at, length) for a in args[1:])
    kwargs = {k: _sliced(v, at, length, k) for k, v in kwargs.items() if k != "hidden_states"}
    shift = before.bias if before is not None and before.bias is not None else torch.zeros(hidden.shape[-1])
    qs: list[torch.Tensor] = []
    ks: list[torch.Tensor] = []
    q0 = k0 = torch.zeros(0)
    caller = _caller(model, attention)
    probe = _Probe(stop=id(caller))
    with _probing(model, [caller], probe), _held_norms(qk, at):
        for chunk in _chunks(stream, max(1, min(256, CHUNK_TOKENS // len(at)))):
            normed = chunk if before is None else before.linear(chunk, before.scale[at])
            rows = torch.cat([shift.expand(1, len(at), -1), normed + shift]).to(hidden.dtype).to(hidden.device)
            try:
                attention(rows, *args, **kwargs)
            except _Stopped:
                pass
            query, key = probe.calls[id(caller)]
            group = query.shape[1] // key.shape[1]
            q = query[:, head, query_at].float().cpu()
            k = key[:, head // group, keys_at].float().cpu()
            q0, k0 = q[0], k[0]
            qs.append(q[1:] - q0)
            ks.append(k[1:] - k0)
    return torch.cat(qs), torch.cat(ks), q0, k0


def _chunks(stream: _Stream, size: int) -> Iterator[torch.Tensor]:
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


# --- the result ---


class AttentionExplanation:
    """Why head `layer.head` at `query` scores `keys` as it does: the pre-softmax score of each key
    split into (query-side component x key-side component) terms that add up to it.

    Components: the embeddings, each earlier head (`head l.h`) and MLP (`mlp l`), `biases` (the
    out projections' and post-norms' constant vectors) and, on each side, `bias` (what the
    projection gives a zero stream: its bias and its norm's shift). `extra`: terms that are not
    products (a position bias the model adds; an edit's log factor). The score is before any
    softcap (Gemma 2's) and before the mask; a sink (GPT-OSS) takes its share in the softmax, not
    here."""

    def __init__(self, trace, layer, head, query, keys, names, q, k, scaling, extra, reference, key, softcap):
        self.trace, self.layer, self.head, self.query, self.keys = trace, layer, head, query, keys
        self.components = names + ["bias"]
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
        return dict(zip(self.components, self.terms(key).sum(0).tolist()))

    def top(self, n: int = 10, key: int | None = None, versus: int | None = None) -> list[tuple[str, str, float]]:
        """The n largest terms (by size) for `key`: (query-side component, key-side component, term);
        with `versus` (another key), of the difference: why `key` scores above (or below) it."""
        checks.integer(n, "n", low=1)
        terms = self.terms(key) if versus is None else self.versus(self.key if key is None else key, versus)
        order = terms.abs().flatten().argsort(descending=True)[:n].tolist()
        width = terms.shape[1]
        return [(self.components[i // width], self.components[i % width], float(terms.flatten()[i])) for i in order]

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
            f"AttentionExplanation(head {self.layer}.{self.head}, query {self.query}, {what}: score {self.total:.4g} = "
            f"{len(self.components)}x{len(self.components)} terms, largest {top[0]} x {top[1]} = {top[2]:.4g}; "
            f"residual error {self.residual_error:.2g})"
        )


@provides(Trace.explain_attention)
def explain_attention(trace: Trace, layer: int, head: int, query: int, key: Any, depth: int) -> AttentionExplanation:
    """See Trace.explain_attention."""
    lm = trace.model
    lm.check_analysable("explain_attention")
    stack = trace.stack()
    checks.integer(layer, "layer", low=0, high=stack.n_layers - 1)
    checks.integer(head, "head", low=0, high=stack.n_heads - 1)
    checks.integer(depth, "depth", low=1, high=2, note=" (1: the residual stream's components; 2: heads by source too)")
    data = stack.layer(layer)  # (raises for a layer without attention, or a trace without capture)
    keys = _keys(trace, data, query, key)
    parts = anatomy(lm.model, lm.facts.n_layers)
    attention = parts.attentions[layer]
    if attention is None:
        raise InputError(f"layer {layer} of {lm.name} has no attention module of its own: nothing to explain")
    at = torch.tensor(sorted({query, *keys}))
    where = {p: i for i, p in enumerate(at.tolist())}
    with held(lm.model):
        kept = _forward(trace, layer, parts, values=depth == 2)
        stream = _stream(kept, layer, stack.n_heads, at)
        q, k, q0, k0 = _project(lm.model, kept, attention, stream, at, head, where[query], [where[j] for j in keys])
    q = torch.cat([q, q0[None]])
    k = torch.cat([k, k0[None]])
    reference, extra = _reference(stack, data, layer, head, query, keys)
    chosen = key if key is not None else keys[int(reference.argmax())]
    explanation = AttentionExplanation(
        trace, layer, head, query, keys, stream.names, q, k, data.scaling, extra, reference, chosen, data.softcap
    )
    if depth == 2:
        with held(lm.model):
            explanation.sources = _by_source(explanation, lm.model, kept, attention, stack.n_heads)
    return explanation


def _keys(trace: Trace, data, query: Any, key: Any) -> list[int]:
    """The keys to explain: `key`, or every key `query` may attend to; a masked one refused."""
    n = len(trace)
    checks.integer(query, "query", low=0, high=n - 1)
    allowed = [
        j
        for j in range(n)
        if (not data.is_causal or j <= query) and (not data.sliding_window or j > query - data.sliding_window)
    ]
    if key is None:
        return allowed
    checks.integer(key, "key", low=0, high=n - 1)
    if key not in allowed:
        window = f" within its sliding window of {data.sliding_window}" if data.sliding_window else ""
        raise InputError(
            f"query {query} cannot attend to key {key}: it sees keys {allowed[0]} to {allowed[-1]}{window} (the mask "
            f"hides the rest, so there is no score to explain)"
        )
    return [key]


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


def _by_source(explanation: AttentionExplanation, model, kept: _Kept, attention, n_heads: int) -> dict:
    """The largest head components on each side, split by the source position each read from
    (its attention there times that position's value, through its columns of the out projection):
    {(side, component): [(source, term)]}, each list adding up to that component's side total."""
    trace, query, key, head = explanation.trace, explanation.query, explanation.key, explanation.head
    at = torch.tensor(sorted({query, key}))
    where = {p: i for i, p in enumerate(at.tolist())}
    q_full = explanation._q.sum(0)
    k_full = explanation._k[:, explanation._key_index(key)].sum(0)
    out = {}
    for side, totals in (("key", explanation.key_side()), ("query", explanation.query_side())):
        position = key if side == "key" else query
        heads = [n for n in sorted(totals, key=lambda n: -abs(totals[n])) if n.startswith("head ")][:SOURCE_HEADS]
        for name in heads:
            layer, source_head = map(int, name.removeprefix("head ").split("."))
            if layer not in kept.projection or layer not in kept.values:
                continue
            vectors, sources = _source_vectors(trace, kept, layer, source_head, position, n_heads)
            names = [f"{name} from {t}" for t in sources]
            stream = _Stream(names, [(names, lambda v=vectors: v[:, None].expand(-1, len(at), -1))])
            q, k, _, _ = _project(model, kept, attention, stream, at, head, where[query], [where[key]])
            terms = (k[:, 0] @ q_full if side == "key" else q @ k_full) * explanation.scaling
            out[(side, name)] = list(zip(sources, terms.tolist()))
    return out


def _source_vectors(trace: Trace, kept: _Kept, layer: int, head: int, position: int, n_heads: int):
    """What head `layer.head` wrote at `position` from each source it attended to [sources, d], and
    those sources' positions."""
    probs = trace.attention(layer, head, queries=position)[0]
    values = kept.values[layer]
    v = values[head // (n_heads // values.shape[0])]  # [T, head dim]
    sources = (probs > 0).nonzero()[:, 0]
    weight = _out_weight(kept.projection[layer][0])
    width = weight.shape[1] // n_heads
    if v.shape[-1] != width:
        raise InputError(f"layer {layer}'s values ({v.shape[-1]} wide) are not its heads' out-projection columns")
    written = (probs[sources, None] * v[sources].cpu()) @ weight[:, head * width : (head + 1) * width].t()
    frozen, _ = _frozen_post(kept, layer, "attention")
    if frozen is not None:
        written = frozen.linear(written, frozen.scale[position])
    return written, sources.tolist()
