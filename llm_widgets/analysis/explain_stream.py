"""The residual stream an attention reads, split into components, for `trace.explain_attention`.

One forward of the traced sequence keeps, per block of the stream that feeds the explained
attention: its input, what each sublayer adds (an attention's output, with its out projection's
input for the heads; an MLP's output) and every norm's input and output. Each norm is recognised
(LayerNorm or RMSNorm, with weight, 1 + weight or none, centred or not) by matching the output it
gave, and held at its run scale it is linear. So the stream at the explained attention is a sum of
components: embeddings, each earlier head and MLP, biases; in pre-norm blocks they add up, in
post-norm blocks (BERT, BART, Marian) every earlier component passes through the later norms.

An encoder-decoder's decoder blocks add three things (self-attention, cross-attention, MLP); its
cross-attention reads the decoder's stream for its queries and the encoder's output (every encoder
block, then the encoder's final norm, if any) for its keys: two streams, each split the same way.
The explained attention module then runs on the components (the positions needed only), stopped
at transformers' attention interface where the queries and keys arrive (`Projector`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..models.anatomy import anatomy, block_output, find_mlp
from ..models.devices import input_device
from ..trace import Trace
from ..trace.attention import stack_offsets
from ..trace.capture import STATE, RunState, attention_modules, instrument, routed, stack_modules
from ..trace.edits import AblateHead
from ..trace.plain import edited as plain_edited
from ..trace.plain import mha_arguments, plain_stacks, projected
from ..trace.steering import SteerResidual, added_by, enclosing_blocks

CHUNK_TOKENS = 4096  # component rows x positions run through the attention module at once (memory bounded)
TOLERANCE = 1e-4  # a norm is recognised when a formula gives its output to this (relative)
KV_NAMES = ("key_value_states", "encoder_hidden_states")  # how a cross-attention is given the encoder's output


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


def bias_of(module: torch.nn.Module) -> torch.Tensor | None:
    """A module's bias as float32, or None (no bias, or bias=False)."""
    bias = getattr(module, "bias", None)
    return bias.detach().float() if isinstance(bias, torch.Tensor) else None


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
    bias = bias_of(norm)
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


# --- the blocks of one residual stream ---


@dataclass(frozen=True)
class Blocks:
    """One residual stream's blocks and what adds to it in each: its attentions in call order
    (kind, module): "attention", then in an encoder-decoder's decoder "cross"; and its MLP (None
    where it is no module of its own, as BART's fc1 and fc2: with `remainder`, what the rest of the
    block adds). `prefix` starts its components' names ("encoder ", "decoder ")."""

    blocks: tuple[torch.nn.Module, ...]
    attentions: tuple[tuple[tuple[str, torch.nn.Module], ...], ...]
    mlps: tuple[torch.nn.Module | None, ...]
    heads: dict[str, int] = field(default_factory=dict)  # each attention kind's number of heads
    prefix: str = ""
    remainder: bool = False
    after: tuple[torch.nn.Module, ...] = ()  # norms registered after the blocks (an encoder's final norm)
    plain: bool = False  # nn.MultiheadAttention blocks (a plain PyTorch model)
    batch_first: bool = True  # a plain model's tensors may be [positions, batch, d]

    def kinds(self, i: int) -> list[str]:
        """What block i adds, in order: its attentions (or, in a hybrid's block without one, its
        "mixer": a state space or linear attention layer), then its MLP."""
        attentions = [kind for kind, _ in self.attentions[i]]
        return (attentions or ["mixer"]) + ["mlp"]

    def name(self, kind: str, i: int, head: int | None = None) -> str:
        """A component's name: "head 3.1", "mlp 3", "mixer 0"; "decoder head 3.1", "cross head 3.1"."""
        if kind == "mixer":
            return f"{self.prefix}mixer {i}"
        what = ("cross " if kind == "cross" else self.prefix) + ("mlp" if kind == "mlp" else "head")
        if head is None and kind != "mlp":
            what = what.removesuffix("head") + "attention"
        return f"{what} {i}" + ("" if head is None else f".{head}")


def decoder_only_blocks(lm: Any) -> Blocks:
    parts = anatomy(lm.model, lm.facts.n_layers)
    return Blocks(
        tuple(parts.blocks),
        tuple(() if a is None else (("attention", a),) for a in parts.attentions),
        tuple(parts.mlps),
        heads={"attention": lm.facts.n_heads},
    )


def seq2seq_blocks(model: Any, stack: str, heads: dict[str, int], plain: bool = False) -> Blocks:
    """The encoder's blocks (stack "encoder"), or the decoder's (its self-attention and, after it,
    its cross-attention: stack "decoder" or "cross"); a plain model's one stack ("self") too."""
    stacks = plain_stacks(model) if plain else stack_modules(model)
    own = stack if stack in ("encoder", "self") else "decoder"
    try:
        blocks = enclosing_blocks(model, stacks[own])
    except InputError:
        raise InputError(
            f"{type(model).__name__}: no list of blocks holds its {own}'s attention modules one each, so "
            f"explain_attention cannot follow its residual stream"
        ) from None
    attentions = []
    for block, own_attention in zip(blocks, stacks[own]):
        inside = {id(m) for m in block.modules()}
        cross = [("cross", m) for m in stacks["cross"] if id(m) in inside] if own == "decoder" else []
        attentions.append((("attention", own_attention), *cross))
    return Blocks(
        tuple(blocks),
        tuple(attentions),
        tuple(find_mlp(block) for block in blocks),
        heads={"attention": heads[own], "cross": heads.get("cross", 0)},
        prefix="" if own == "self" else f"{own} ",
        remainder=True,
        after=_norms_after(model, blocks[0]),
        plain=plain,
        batch_first=not plain or bool(getattr(stacks[own][0], "batch_first", True)),
    )


def _norms_after(model: Any, first: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """The norms registered after the list holding `first` in its parent (mBART registers its
    embedding's norm there too: the one that gave the encoder's output is told later)."""
    for parent in model.modules():
        children = list(parent.children())
        for index, child in enumerate(children):
            if isinstance(child, torch.nn.ModuleList) and any(b is first for b in child):
                return tuple(m for m in children[index + 1 :] if _is_norm(m))
    return ()


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and not any(True for _ in module.children())


# --- one forward of the traced sequence, kept ---


class Probe:
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
            raise Stopped
        self.values[id(module)] = value[0].detach().float()
        inner = self.inner.get(id(module))
        if inner is not None:
            return inner.attend(fn, module, query, key, value, attention_mask, kwargs)
        return fn(module, query, key, value, attention_mask, **kwargs)


class Stopped(Exception):
    """The probe has the queries and keys: the rest of the forward need not run."""


@contextlib.contextmanager
def probing(model: Any, modules: list[torch.nn.Module], probe: Probe) -> Iterator[None]:
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


Sublayer = tuple[int, str]  # (block, kind): what block i adds through its "attention", "cross" or "mlp"


@dataclass
class Kept:
    """Row 0 of one forward (float32) for one stream, per block up to the explained one: its input
    (and, for a stream read whole, the last block's output); what each earlier sublayer adds (the
    module's output, or a post-norm's output of it) and an attention's out projection (module,
    input); every norm's (module, input, output); the explained attention's call (args, kwargs)."""

    spec: Blocks
    inputs: list[torch.Tensor] = field(default_factory=list)
    added: dict[Sublayer, torch.Tensor] = field(default_factory=dict)
    last_linear: dict[Sublayer, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    raw_linear: dict[Sublayer, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    calls: dict[Sublayer, dict[str, Any]] = field(default_factory=dict)  # a plain model's attention arguments
    projection: dict[Sublayer, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)
    post_norms: dict[Sublayer, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    norms: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # explained block's
    before_call: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    block_norms: dict[int, list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    after: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    call: tuple[tuple, dict] | None = None
    positions: torch.Tensor | None = None  # a learned position embedding's output (GPT-2's wpe), if any
    tokens: torch.Tensor | None = None  # the token embedding's output
    values: dict[Sublayer, torch.Tensor] = field(default_factory=dict)  # earlier attentions' values [kv_heads, T, d]
    frozen: dict[int, FrozenNorm] = field(default_factory=dict)  # each norm held at its scale, by id
    steered: dict[int, torch.Tensor] = field(default_factory=dict)  # what SteerResidual edits add after block i

    def row(self, t: torch.Tensor) -> torch.Tensor:
        """Batch row 0 as [positions, ...] float32 (a plain model's tensors may be positions-first)."""
        return (t[0] if self.spec.batch_first else t[:, 0]).detach().float()


def frozen_of(kept: Kept, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> FrozenNorm:
    """freeze(module, x, y), worked out once per explanation (depth 2 asks again per head split)."""
    if id(module) not in kept.frozen:
        kept.frozen[id(module)] = freeze(module, x, y)
    return kept.frozen[id(module)]


def caller(model: Any, attention: torch.nn.Module) -> torch.nn.Module:
    """The module inside a block's attention that calls transformers' attention interface (the
    attention itself, or BERT's self-attention inside its BertAttention): where a probe stands."""
    inside = set(map(id, attention.modules()))
    return next((m for m in attention_modules(model) if id(m) in inside), attention)


def same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.shape == b.shape and torch.equal(a, b)


def _hooks(model: Any, kept: Kept, layer: int, explained: torch.nn.Module | None) -> list:
    """Forward hooks that fill `kept` for blocks 0 to `layer` (up to the `explained` attention's
    call in block `layer`; every block, and the norms after them, when `layer` is past the last)."""
    spec = kept.spec
    handles = [] if spec.plain else _embedding_hooks(model, kept)
    for i, block in enumerate(spec.blocks[: layer + 1]):
        handles.append(block.register_forward_pre_hook(_block_in(kept, i), with_kwargs=True))
        handles += [m.register_forward_hook(_norm_hook(kept, i, layer)) for m in block.modules() if _is_norm(m)]
        writers = spec.attentions[i]
        if i == layer and explained is not None:
            handles.append(explained.register_forward_pre_hook(_call_hook(kept, stop=spec.plain), with_kwargs=True))
            writers = writers[: [m for _, m in writers].index(explained)]
        for kind, attention in writers:
            handles.append(attention.register_forward_hook(_attention_out(kept, (i, kind))))
            if spec.plain:
                handles.append(attention.register_forward_pre_hook(_arguments(kept, (i, kind)), with_kwargs=True))
            linears = [m for m in attention.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
            handles += [m.register_forward_hook(_linear_hook(kept, (i, kind))) for m in linears]
        mlp = spec.mlps[i]
        if i < layer and mlp is not None:
            handles.append(mlp.register_forward_hook(_mlp_out(kept, i)))
    if layer == len(spec.blocks):
        handles.append(spec.blocks[-1].register_forward_hook(_block_out(kept)))
        handles += [m.register_forward_hook(_after_hook(kept)) for m in spec.after]
    return handles


def _block_in(kept: Kept, i: int):
    def hook(_m, args, kwargs):
        if len(kept.inputs) == i:
            kept.inputs.append(kept.row(args[0] if args else kwargs["hidden_states"]))

    return hook


def _block_out(kept: Kept):
    def hook(_m, _args, output):
        if len(kept.inputs) == len(kept.spec.blocks):
            kept.inputs.append(kept.row(block_output(output)))

    return hook


def _norm_hook(kept: Kept, i: int, layer: int):
    def hook(module, args, output):
        x, y = kept.row(args[0]), kept.row(block_output(output))
        if i == layer:
            kept.norms.append((module, x, y))
            if kept.call is None:
                kept.before_call.append((module, x, y))
        else:
            kept.block_norms.setdefault(i, []).append((module, x, y))
        for kind in kept.spec.kinds(i):
            if same(kept.added.get((i, kind)), x):  # a post-norm of a sublayer: what it adds is its output
                kept.post_norms.setdefault((i, kind), (module, x, y))

    return hook


def _after_hook(kept: Kept):
    def hook(module, args, output):
        kept.after.append((module, kept.row(args[0]), kept.row(block_output(output))))

    return hook


def _linear_hook(kept: Kept, at: Sublayer):
    def hook(module, args, output):
        kept.raw_linear[at] = (module, args[0], output)  # (rows taken once the attention's output is known)

    return hook


def _attention_out(kept: Kept, at: Sublayer):
    def hook(_m, _args, output):
        out = kept.row(block_output(output))
        kept.added.setdefault(at, out)
        raw = kept.raw_linear.pop(at, None)  # the out projection is the attention's last linear, if it gave the output
        if raw is not None and at not in kept.last_linear and at not in kept.projection:
            if same(kept.row(raw[2]), out):
                kept.projection[at] = (raw[0], kept.row(raw[1]))
            else:  # (BERT's: a norm inside its attention module comes after it)
                kept.last_linear[at] = (raw[0], kept.row(raw[1]), kept.row(raw[2]))

    return hook


def _mlp_out(kept: Kept, i: int):
    def hook(_m, _args, output):
        kept.added.setdefault((i, "mlp"), kept.row(block_output(output)))

    return hook


def _call_hook(kept: Kept, stop: bool):
    """Keeps the explained attention's call; a plain model's forward ends there (a transformers
    model's at its attention interface, where the probe stops it)."""

    def hook(_m, args, kwargs):
        kept.call = (args, kwargs)
        if stop:
            raise Stopped

    return hook


def _arguments(kept: Kept, at: Sublayer):
    def hook(_m, args, kwargs):
        kept.calls[at] = mha_arguments(args, kwargs)

    return hook


def _embedding_hooks(model: Any, kept: Kept) -> list:
    """Hooks keeping the token embedding's output and a learned position embedding's (GPT-2's wpe),
    as the stream's own embedding call gave them (the one before its first block)."""

    def position(_m, _args, output):
        if not kept.inputs:
            kept.positions = kept.row(output) if output.dim() == 3 else None

    def token(_m, _args, output):
        if not kept.inputs:
            kept.tokens = kept.row(output) if output.dim() == 3 else None

    tokens = model.get_input_embeddings()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not tokens]
    return [m.register_forward_hook(position) for m in embeddings] + [tokens.register_forward_hook(token)]


def run_kept(
    trace: Trace, streams: list[tuple[Kept, int]], explained: torch.nn.Module, values: bool
) -> tuple[Kept, ...]:
    """One forward of the traced sequence (its edits applied), each stream kept up to its block
    (the first: up to the `explained` attention's call, where the forward stops; with `values`,
    every earlier attention's values too)."""
    lm = trace.model
    model = lm.model
    watched = [caller(model, explained)] if not lm.plain else []
    if values and not lm.plain:
        for kept, layer in streams:
            blocks = range(min(layer + 1, len(kept.spec.blocks)))
            watched += [caller(model, m) for i in blocks for _, m in kept.spec.attentions[i]]
    probe = Probe(stop=id(watched[0]) if watched else None)
    with _edited(trace):  # our hooks after the edits' own: what a module gave is read as the edits left it
        handles = [
            h for i, (kept, layer) in enumerate(streams) for h in _hooks(model, kept, layer, None if i else explained)
        ]
        try:
            with probing(model, list({id(m): m for m in watched}.values()), probe) if watched else _no_fast_path():
                _forward(trace)
        except Stopped:
            pass
        finally:
            for handle in handles:
                handle.remove()
    first, layer = streams[0]
    if first.call is None or len(first.inputs) <= layer:
        raise InputError(f"layer {layer}'s attention was not called in a forward of {lm.name}: nothing to explain")
    for kept, layer in streams:
        _fill(trace, kept, layer, probe)
    return tuple(kept for kept, _ in streams)


@contextlib.contextmanager
def _no_fast_path() -> Iterator[None]:
    """nn.TransformerEncoderLayer's fused fast path never calls its modules: off for a while."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _edited(trace: Trace):
    lm = trace.model
    if not trace.edits:
        return contextlib.nullcontext()
    if (trace.n_source or lm.plain) and any(isinstance(e, SteerResidual) and e.strength for e in trace.edits):
        raise InputError(
            f"explain_attention of {'a plain PyTorch model' if lm.plain else 'an encoder-decoder'} does not follow "
            f"SteerResidual edits yet: explain the run without them, or with attention edits only"
        )
    if lm.plain:
        return plain_edited(lm.model, tuple(trace.edits), trace.n_source)
    shape = (lm.facts.n_layers, lm.facts.n_heads)
    offsets = stack_offsets(trace.n_source) if trace.n_source else None
    run = RunState(*shape, len(trace), trace.edits, capture=False, n_prompt=trace.n_prompt, offsets=offsets)
    return instrument(lm.model, run)


def _forward(trace: Trace) -> None:
    model = trace.model.model
    ids = trace.input_ids[None].to(input_device(model))
    if trace.n_source:
        source, output = ids[:, : trace.n_source], ids[:, trace.n_source :]
        if trace.model.plain:
            model(source, output)
        else:
            model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=output, use_cache=False)
    elif trace.model.plain:
        model(ids)
    else:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _fill(trace: Trace, kept: Kept, layer: int, probe: Probe) -> None:
    """After the forward: the values each earlier attention computed (a plain model's: its heads'
    outputs too), what a steering edit adds, and (`remainder`) the MLP of a block that has none of
    its own as the rest of what it adds."""
    spec = kept.spec
    for i in range(min(layer + 1, len(spec.blocks))):  # (block `layer`: what ran before the explained attention)
        for kind, attention in spec.attentions[i]:
            if isinstance(attention, torch.nn.MultiheadAttention):
                _plain_heads(trace, kept, (i, kind), attention)
                continue
            found = probe.values.get(id(caller(trace.model.model, attention)))
            if found is not None:
                kept.values[(i, kind)] = found
    for i in range(min(layer, len(spec.blocks))):
        if not trace.n_source and not spec.plain:
            steered = added_by(trace.edits, i, len(trace), trace.n_prompt)
            if steered is not None:
                kept.steered[i] = steered
        if i + 1 < len(kept.inputs) and not spec.attentions[i]:  # a hybrid's mixer
            _the_rest(kept, i, "mixer")
        if i + 1 < len(kept.inputs) and spec.remainder and spec.mlps[i] is None:  # BART's fc1 and fc2
            _the_rest(kept, i, "mlp")


def _the_rest(kept: Kept, i: int, kind: str) -> None:
    """Block i's `kind`, seen by no hook, as what the block adds besides its other sublayers (and a
    steering edit)."""
    rest = kept.inputs[i + 1] - kept.inputs[i] - kept.steered.get(i, 0)
    for other in kept.spec.kinds(i):
        if other != kind:
            rest = rest - kept.added.get((i, other), 0)
    kept.added[(i, kind)] = rest


def _plain_heads(trace: Trace, kept: Kept, at: Sublayer, mha: torch.nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention applies its out projection inside one call: each head's output before
    it (the run's attention times the values) worked out again, kept where it gives the module's
    output (an ablated head's does not: the attention stays one component)."""
    call = kept.calls.get(at)
    if call is None or at not in kept.added:
        return
    i, kind = at
    stack = trace.stack("cross" if kind == "cross" else (kept.spec.prefix.strip() or None))
    values = projected(mha, call["value"], 2)[0].detach().float().cpu()  # [heads, keys, head dim]
    probs = torch.stack([stack.attention(i, h) for h in range(mha.num_heads)])  # [heads, queries, keys]
    z = probs @ values  # [heads, queries, head dim]
    for edit in trace.edits:  # a head the run zeroed (AblateHead): its share is zero
        if (
            isinstance(edit, AblateHead)
            and edit.mode == "zero"
            and (edit.layer, edit.stack or "self") == (i, stack.name)
        ):
            z[edit.head] = 0
    z = z.transpose(0, 1).flatten(1)  # [queries, heads x head dim]
    bias = mha.out_proj.bias
    out = torch.nn.functional.linear(
        z, mha.out_proj.weight.detach().float(), None if bias is None else bias.detach().float()
    )
    if close(out, kept.added[at]):
        kept.values[at] = values
        kept.projection[at] = (mha.out_proj, z)


# --- the residual stream's components at the explained attention ---


@dataclass
class Stream:
    """The components of a stream at the positions `at`: their names, and per part (an embedding,
    a layer's heads, an MLP, the biases summed) a function giving its vectors [n, len(at), d] when
    asked (a row's worth of every head at once would not fit); `point` [T, d]: the stream itself."""

    names: list[str]
    parts: list[tuple[list[str], Any]]  # (names, thunk -> [n, len(at), d])
    point: torch.Tensor | None = None
    chains: dict[str, list[FrozenNorm]] = field(default_factory=dict)  # the norms a component passes through

    def through(self, frozen: FrozenNorm, at: torch.Tensor, shift_name: str) -> Stream:
        """This stream passed through a norm held at its scale (its shift a component of its own)."""
        parts = [(names, through(thunk, [frozen], at)) for names, thunk in self.parts]
        if frozen.bias is not None:
            bias = frozen.bias
            parts.append(([shift_name], lambda: bias.expand(len(at), -1)[None].clone()))
        chains = {name: [*self.chains.get(name, []), frozen] for name in self.names}
        return Stream([n for names, _ in parts for n in names], parts, None, chains)


def through(thunk: Any, norms: list[FrozenNorm], at: torch.Tensor) -> Any:
    """A part's vectors passed through these norms (each held at its scale), in order."""

    def passed() -> torch.Tensor:
        vectors = thunk()
        for frozen in norms:
            vectors = frozen.linear(vectors, frozen.scale[at])
        return vectors

    return passed


def stream(kept: Kept, layer: int, upto: list[str], at: torch.Tensor) -> Stream:
    """Embeddings, each earlier head and MLP, and the biases: what adds up to block `layer`'s input
    plus what its sublayers `upto` add (through the blocks' norms held at their scales, in
    post-norm models)."""
    if (layer or upto) and (kept.spec.remainder or not _additive(kept, 0)):
        post = _post_stream(kept, layer, upto, at)
        if post is not None:
            return post
    spec = kept.spec
    parts: list[tuple[list[str], Any]] = [*_embedding_parts(kept, at)]
    biases = torch.zeros_like(kept.inputs[0][at][0])
    for i in range(layer + 1):
        if i < layer:
            _check_additive(kept, i)
        for kind in spec.kinds(i) if i < layer else upto:
            found, biases = _sublayer_part(kept, (i, kind), at, biases)
            parts += found
        if i < layer and i in kept.steered:  # a direction the run adds (lw.SteerResidual): a component of its own
            parts.append(([f"steering {i}"], lambda i=i: kept.steered[i][at][None]))
    constant = biases.expand(len(at), -1) if biases.dim() == 1 else biases
    parts.append(([f"{spec.prefix}biases"], lambda: constant[None].clone()))
    point = kept.inputs[layer] + sum((_added(kept, (layer, kind)) for kind in upto), torch.zeros(()))
    return Stream([n for names, _ in parts for n in names], parts, point)


def _embedding_parts(kept: Kept, at: torch.Tensor) -> list[tuple[list[str], Any]]:
    x0 = kept.inputs[0][at]
    tokens, positions, prefix = kept.tokens, kept.positions, kept.spec.prefix
    if (
        tokens is not None
        and positions is not None
        and positions.shape == tokens.shape
        and close(tokens + positions, kept.inputs[0])  # (not where a norm follows: BERT's)
    ):
        position = positions[at]  # learned absolute positions (GPT-2's wpe), as the model added them
        return [
            ([f"{prefix}token embedding"], lambda: (x0 - position)[None]),
            ([f"{prefix}position embedding"], lambda: position[None]),
        ]
    return [([f"{prefix}embedding"], lambda: x0[None])]


def _sublayer_part(kept: Kept, at_: Sublayer, at: torch.Tensor, biases: torch.Tensor):
    """A pre-norm sublayer's components (an attention's heads, through its sandwich norm if it has
    one; or the whole attention, or the MLP) and the biases with its constant added."""
    i, kind = at_
    spec = kept.spec
    if at_ not in kept.added:
        return [], biases
    projection = kept.projection.get(at_)
    if kind == "mlp" or projection is None:
        return [([spec.name(kind, i)], lambda: _added(kept, at_)[at][None])], biases
    module, z = projection
    frozen, shift = frozen_post(kept, at_)
    bias = bias_of(module)
    if bias is not None:
        biases = biases + (bias if frozen is None else frozen.linear(bias, frozen.scale[at]))
    if shift is not None:
        biases = biases + shift
    n_heads = spec.heads[kind]
    return [([spec.name(kind, i, h) for h in range(n_heads)], heads(module, z, n_heads, at, frozen))], biases


def frozen_post(kept: Kept, at_: Sublayer) -> tuple[FrozenNorm | None, torch.Tensor | None]:
    found = kept.post_norms.get(at_)
    if found is None:
        return None, None
    frozen = frozen_of(kept, *found)
    return frozen, frozen.bias


def _added(kept: Kept, at_: Sublayer) -> torch.Tensor:
    """What a sublayer adds to the residual stream [T, d] (through its sandwich norm, if any)."""
    post = kept.post_norms.get(at_)
    return kept.added[at_] if post is None else post[2]


def heads(module: Any, z: torch.Tensor, n_heads: int, at: torch.Tensor, frozen: FrozenNorm | None):
    """A thunk giving each head's share of the out projection's output (no bias), through the
    block's post-norm held at its scale if it has one: [heads, len(at), d]."""

    def thunk() -> torch.Tensor:
        weight = out_weight(module)
        width = z.shape[-1] // n_heads
        zs = z[at].reshape(len(at), n_heads, width)
        out = torch.einsum("phw,ohw->hpo", zs, weight.reshape(weight.shape[0], n_heads, width))
        return out if frozen is None else frozen.linear(out, frozen.scale[at])

    return thunk


def out_weight(module: Any) -> torch.Tensor:
    """An out projection's weight as [out, in] (GPT-2's Conv1D keeps [in, out])."""
    weight = module.weight.detach().float()
    return weight.t() if type(module).__name__ == "Conv1D" else weight


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= 1e-4 * (float(b.abs().max()) + 1.0)


def _summed(kept: Kept, i: int) -> torch.Tensor:
    """Block i's input plus what its sublayers and a steering edit add."""
    added = kept.inputs[i].clone()
    for kind in kept.spec.kinds(i):
        if (i, kind) in kept.added:
            added = added + _added(kept, (i, kind))
    if i in kept.steered:
        added = added + kept.steered[i]
    return added


def _additive(kept: Kept, i: int) -> bool:
    """Block i's output is its input plus what its sublayers add."""
    return close(_summed(kept, i), kept.inputs[i + 1])


def _check_additive(kept: Kept, i: int) -> None:
    """Block i's output is its input plus what its sublayers add, or a clear error."""
    if not _additive(kept, i):
        error = float((kept.inputs[i + 1] - _summed(kept, i)).abs().max())
        raise InputError(
            f"block {i}'s output is not its input plus its attention's and its MLP's outputs (off by {error:.3g}): "
            f"explain_attention splits a residual stream that blocks add to (pre-norm or sandwich-norm blocks, "
            f"sequential or parallel) or that post-norm blocks normalise, which this model's are not"
        )


def out_projection(kept: Kept, at_: Sublayer) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor] | None:
    """An attention's out projection (module, input, output) as rows, where it was seen."""
    if at_ in kept.projection and at_ in kept.added:
        return (*kept.projection[at_], kept.added[at_])
    return kept.last_linear.get(at_)


def _post_stream(kept: Kept, layer: int, upto: list[str], at: torch.Tensor) -> Stream | None:
    """Post-norm blocks (BERT, BART): each of a block's norms acts on the residual stream plus what
    a sublayer adds (an attention's out projection, split by head, or its MLP); held at its run
    scale a norm is linear, so every component before it passes through it, and its shift joins
    the biases. None where the blocks are not so."""
    spec = kept.spec
    chain: list[FrozenNorm] = []
    raw: list[tuple[list[str], Any, int]] = [([f"{spec.prefix}embedding"], lambda: kept.inputs[0][at][None], 0)]
    constant = torch.zeros_like(kept.inputs[0][at])
    residual = kept.inputs[0]
    for i in range(layer + 1):
        partial = i == layer
        norms, kinds = (kept.before_call, upto) if partial else (kept.block_norms.get(i, []), spec.kinds(i))
        if (partial and len(norms) != len(upto)) or (not partial and (i in kept.steered or not norms)):
            return None
        residual = kept.inputs[i]
        for k, (module, u, y) in enumerate(norms):
            kind = kinds[min(k, len(kinds) - 1)]
            added, last = u - residual, out_projection(kept, (i, kind))
            if kind != "mlp" and last is not None and close(last[2], added):  # the out projection, by head
                bias = bias_of(last[0])
                constant = constant + (0 if bias is None else bias)
                n_heads = spec.heads[kind]
                names = [spec.name(kind, i, h) for h in range(n_heads)]
                raw.append((names, heads(last[0], last[1], n_heads, at, None), len(chain)))
            else:
                raw.append(([spec.name(kind, i)], lambda a=added: a[at][None], len(chain)))
            frozen = frozen_of(kept, module, u, y)
            chain.append(frozen)
            constant = frozen.linear(constant, frozen.scale[at]) + (0 if frozen.bias is None else frozen.bias)
            residual = y
        if not partial and not close(residual, kept.inputs[i + 1]):
            return None
    parts = [(names, through(thunk, chain[start:], at)) for names, thunk, start in raw]
    parts.append(([f"{spec.prefix}biases"], lambda: constant[None].clone()))
    chains = {name: chain[start:] for names, _, start in raw for name in names}
    return Stream([n for names, _ in parts for n in names], parts, residual, chains)
