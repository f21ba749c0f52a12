"""Capture and edit attention inside the model's own attention function.

We register wrappers in transformers' `AttentionInterface` (one per wrapped
implementation: "llm_widgets_sdpa", "llm_widgets_eager", ...). A wrapper looks
for the run state that `instrument()` puts on the model's own attention
modules; a module without state (another model sharing the config, say) goes
straight to the wrapped function. With state, it:

- keeps this call's post-rotary queries and new keys, by absolute position,
  so probabilities can be recomputed later for any head and tile;
- turns ScaleAttention edits into an additive mask (log factor) on top of the
  model's own mask, so SDPA stays SDPA;
- zeroes or mean-replaces ablated heads in the output.

Nothing is left behind: `instrument()` restores the attention implementation
and removes the state in `finally`, on errors and interrupts too.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..models.anatomy import anatomy
from ..models.compat import calls_attention_interface, set_attention
from ..models.structure import remembered
from .edits import AblateHead, AblateMLP, ScaleAttention, SteerResidual
from .masks import allowed_mask, edit_bias, spare_fully_masked
from .steering import ResidualSteering, enclosing_blocks

PREFIX = "llm_widgets_"
STATE = "_llm_widgets_run"
MASK_ELEMENTS = 1 << 24  # an edited call's explicit mask is built in blocks of query rows of at most this size


# --- per-run state, kept on the model's attention modules ---


@dataclass
class LayerCapture:
    """Chunks of (first position, queries [B, H, n, d]) and (first position, keys [B, Hkv, n, d]) as
    the run produced them; a chunk covers positions first .. first + n - 1 of its stack."""

    queries: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    keys: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    biases: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)  # (first query, first key,
    # [B or 1, H, n, kv]): a position bias the model adds to the scores (T5's relative one)
    scaling: float | None = None
    softcap: float | None = None
    sliding_window: int | None = None
    is_causal: bool = True
    sinks: torch.Tensor | None = None  # [H] attention-sink logits (GPT-OSS, ...): in every row's softmax, then dropped
    next_position: int = 0  # positions this layer has seen so far in the run
    last_start: int = 0  # the first query position of this layer's latest call
    forward: int = 0  # the run's forward (its model call) this layer last attended in


SELF = "self"  # the one attention of a decoder-only (or encoder-only) model
Place = tuple[str, int]  # (stack, layer): "self", or an encoder-decoder's "encoder", "decoder", "cross"


class RunState:
    """What one traced run captures and changes. Lives on the modules only while the run lasts.

    Edit positions are the trace's; `offsets` says where each stack's queries and keys
    start in it (an encoder-decoder's decoder positions follow the source's)."""

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        length: int,
        edits: tuple = (),
        capture: bool = True,
        capture_device: torch.device | str | None = None,
        capture_dtype: torch.dtype | None = None,
        head_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        offsets: dict[str, tuple[int, int]] | None = None,
        n_prompt: int | None = None,
        row_edits: list[tuple] | None = None,
    ):
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.length = length  # every position the run can reach
        self.n_prompt = length if n_prompt is None else n_prompt  # the first generated position
        self.steering = tuple(e for e in edits if isinstance(e, SteerResidual))
        self.mlp_ablations = tuple(e for e in edits if isinstance(e, AblateMLP))
        # each batch row's own edits (a search scores many candidates in one forward); with `edits`: refused
        self.row_edits = [tuple(row) for row in row_edits] if row_edits is not None else None
        if self.row_edits is not None and edits:
            raise InputError("a run takes edits for every row or each row's own (row_edits), not both")
        self._row_places: dict[Place, bool] = {}
        self.offsets = offsets or {SELF: (0, 0)}
        self.scale_edits = tuple(e for e in edits if isinstance(e, ScaleAttention))
        self._edits_at: dict[Place, tuple[ScaleAttention, ...]] = {}
        self.ablations: dict[Place, list[AblateHead]] = {}
        for e in edits:
            if isinstance(e, AblateHead):
                self.ablations.setdefault((e.stack or SELF, e.layer), []).append(e)
        self.capture = capture
        self.capture_device = capture_device
        self.capture_dtype = capture_dtype
        self.layers: dict[Place, LayerCapture] = {}
        self.places: dict[int, Place] = {}  # id(module) -> (stack, layer); instrument() fills it
        self.head_means: dict[tuple[Place, int], torch.Tensor] = {}
        self.inner = "sdpa"  # the wrapped implementation; instrument() sets it
        self.key_bias: dict[Place, torch.Tensor] = {}  # bias over every key position, when queries don't matter
        self.fully_masked_rows = False
        self.forwards = 0  # calls of the model itself so far (instrument() counts them)
        self.thread = threading.get_ident()  # the thread whose forwards this run captures and edits
        # (layer, out [batch, q, heads, head_dim]) -> out: what an analysis reads or replaces at each
        # head's output, after edits and ablations (activation patching, ablation sweeps)
        self.head_hook = head_hook

    def edits_at(self, place: Place) -> tuple[ScaleAttention, ...]:
        if not self.scale_edits:
            return ()
        found = self._edits_at.get(place)
        if found is None:
            stack, layer = place
            found = self._edits_at[place] = tuple(
                e for e in self.scale_edits if e.stack in (None, stack) and (e.layers is None or layer in e.layers)
            )
        return found

    def edited_heads(self, place: Place) -> set[int] | None:
        """The heads this layer's edits name (None: an edit there covers every head)."""
        edits = self.edits_at(place)
        return None if any(e.heads is None for e in edits) else {h for e in edits for h in e.heads}

    def capture_of(self, place: Place) -> LayerCapture:
        found = self.layers.get(place)
        if found is None:
            found = self.layers[place] = LayerCapture()
        return found

    @property
    def changes_attention(self) -> bool:
        return bool(self.scale_edits) or any(isinstance(e, ScaleAttention) for e in self._row_flat())

    def _row_flat(self) -> list[Any]:
        return [e for row in self.row_edits or () for e in row]

    def _row_scales(self, place: Place) -> list[tuple[ScaleAttention, ...]]:
        """Each row's ScaleAttention edits on this layer (row_edits)."""
        stack, layer = place
        return [
            tuple(
                e
                for e in row
                if isinstance(e, ScaleAttention)
                and e.stack in (None, stack)
                and (e.layers is None or layer in e.layers)
            )
            for row in self.row_edits or ()
        ]

    def place(self, module: Any) -> Place:
        place = self.places.get(id(module))
        return place if place is not None else (SELF, module.layer_idx)

    def attend(
        self,
        fn: Callable,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        kwargs: dict,
    ) -> tuple[torch.Tensor, Any]:
        place = self.place(module)
        stack, layer = place
        captured = self._called(place, module)
        q_len, kv_len = query.shape[2], key.shape[2]
        q_start, k_start = self._starts(place, captured, q_len, kv_len)
        is_causal = _is_causal(attention_mask, q_len, kv_len, kwargs, module)
        sliding_window = captured.sliding_window = _window(kwargs, attention_mask, is_causal, q_len, kv_len, captured)
        if self.capture:
            self._capture(captured, module, query, key, kwargs, q_start, k_start, q_len, stack == "cross")
            captured.is_causal = bool(is_causal)
        edits = self.edits_at(place)
        heads = self.edited_heads(place) if edits and self.inner == "sdpa" else None
        if edits:
            q_off, k_off = self.offsets[stack]

            def edited_mask(rows: tuple[int, int], q_heads: list[int] | None = None) -> torch.Tensor:
                return self._edited_mask(
                    place,
                    edits,
                    attention_mask,
                    query,
                    q_off + q_start,
                    k_off + k_start,
                    kv_len,
                    bool(is_causal),
                    sliding_window,
                    rows,
                    q_heads,
                )

        rows = self._row_scales(place) if self.row_edits is not None else []
        if any(rows):
            where = (*(o + s for o, s in zip(self.offsets[stack], (q_start, k_start))), bool(is_causal), sliding_window)
            out, weights = self._rows_attend(fn, module, query, key, value, attention_mask, kwargs, place, rows, where)
        elif edits and heads is not None and len(heads) < query.shape[1] and q_len > 1:
            # An explicit mask takes SDPA off its fused causal kernel: give it only to
            # the (whole key/value groups of) edited heads, the rest keep the model's own.
            # (A single-query step has no fused path to lose: one masked call is cheaper.)
            out = self._split_heads(fn, module, query, key, value, attention_mask, kwargs, heads, edited_mask)
            weights = None
        elif edits:
            out, weights = self._masked(fn, module, query, key, value, edited_mask, kwargs)
        else:
            out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        if place in self.ablations:
            out = self._ablate(place, out, self.offsets[stack][0] + q_start)
        if self.head_hook is not None and stack == SELF:
            out = self.head_hook(layer, out)
        return out, weights

    def _rows_attend(self, fn, module, query, key, value, mask, kwargs, place, rows, where) -> tuple[Any, Any]:
        """fn with each batch row's own ScaleAttention edits: the model's mask plus a bias per row
        and head [batch, heads, q, k]. where: (first query, first key, causal, sliding window)."""
        if len(rows) != query.shape[0]:
            raise InputError(f"row_edits has {len(rows)} rows and this forward {query.shape[0]}: one per row")
        if any(e.factor == 0 for row in rows for e in row):
            raise InputError("row_edits scale attention by factors above 0 (masking is for whole runs)")
        (q0, k0, causal, window), (n_heads, q_len, kv_len) = where, (query.shape[1], query.shape[2], key.shape[2])
        base = self._edited_mask(place, (), mask, query, q0, k0, kv_len, causal, window, (0, q_len))
        q_pos = torch.arange(q0, q0 + q_len, device=query.device)
        k_pos = torch.arange(k0, k0 + kv_len, device=query.device)
        bias = torch.zeros(len(rows), n_heads, q_len, kv_len, device=query.device)
        for b, edits in enumerate(rows):
            if edits:
                bias[b] = edit_bias(edits, n_heads, q_pos, k_pos)
        return fn(module, query, key, value, base + bias.to(base.dtype), **kwargs)

    def _called(self, place: Place, module: Any) -> LayerCapture:
        """The layer's capture, refusing a second call of one module in one forward (recurrent depth)."""
        captured = self.capture_of(place)
        if self.forwards and captured.forward == self.forwards:
            what = recurring(f"the {type(module).__name__} modules")
            raise InputError(f"llm-widgets cannot trace this model: {what}")
        captured.forward = self.forwards
        return captured

    def _starts(self, place: Place, captured: LayerCapture, q_len: int, kv_len: int) -> tuple[int, int]:
        """Where this call's queries and keys start in the stack, kept on the CPU (no device sync): a
        pass over as many keys as queries starts at 0 (the prompt, or generation without a cache); a
        cached step continues where this layer left off."""
        stack, layer = place
        if stack == "cross":  # the decoder's queries (as its self-attention just placed them) over every source key
            q_start, k_start = self.capture_of(("decoder", layer)).last_start, 0
        else:
            q_start = 0 if kv_len == q_len else captured.next_position
            k_start = q_start + q_len - kv_len if kv_len <= q_start + q_len else 0  # caches keep the latest keys;
            # a static cache (more slots than tokens) is indexed by position
        captured.last_start, captured.next_position = q_start, q_start + q_len
        return q_start, k_start

    def _capture(self, captured: LayerCapture, module, query, key, kwargs, q_start, k_start, q_len, cross) -> None:
        captured.scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        captured.softcap = kwargs.get("softcap")
        sinks = kwargs.get("s_aux")
        if sinks is None:  # (a parameter of the module, if any: read without nn.Module's slow missing-attribute path)
            sinks = _own(module, "sinks")
        if captured.sinks is None and isinstance(sinks, torch.Tensor):  # a parameter: copied once a run
            captured.sinks = sinks.detach().float().flatten().to(self.capture_device or sinks.device)
        captured.queries.append((q_start, self._keep(query, query)))  # every batch row: [B, H, n, d]
        if cross:  # the source's keys: the same at every step (cached after the first)
            if not captured.keys:
                captured.keys.append((0, self._keep(key, key)))
        else:
            new = slice(q_start - k_start, q_start - k_start + q_len)  # the key slots of this call's positions
            captured.keys.append((q_start, self._keep(key[:, :, new], key)))
        bias = kwargs.get("position_bias")
        if isinstance(bias, torch.Tensor):  # kept as the model passed it: T5 shares one across layers
            captured.biases.append((q_start, k_start, self._keep(bias, bias)))

    def _split_heads(self, fn, module, query, key, value, mask, kwargs, heads, edited_mask) -> torch.Tensor:
        n_kv = key.shape[1]
        group = query.shape[1] // n_kv
        kv_edited = sorted({h // group for h in heads})
        kv_rest = [g for g in range(n_kv) if g not in kv_edited]
        q_of = lambda groups: [g * group + i for g in groups for i in range(group)]  # noqa: E731
        out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
        for groups, edited in ((kv_edited, True), (kv_rest, False)):
            if not groups:
                continue
            q_heads = q_of(groups)
            q, k, v = _heads(query, q_heads), _heads(key, groups), _heads(value, groups)
            part_kwargs = kwargs
            bias = kwargs.get("position_bias")
            if isinstance(bias, torch.Tensor) and bias.shape[1] > 1:  # a per-head position bias (T5): these heads'
                part_kwargs = {**kwargs, "position_bias": _heads(bias, q_heads)}
            if edited:
                part, _ = self._masked(
                    fn, module, q, k, v, lambda rows, heads=q_heads: edited_mask(rows, heads), part_kwargs
                )
            else:
                part, _ = fn(module, q, k, v, mask, **part_kwargs)
            out[:, :, q_heads] = part
        return out

    @staticmethod
    def _masked(
        fn, module, query, key, value, mask_for: Callable[[tuple[int, int]], torch.Tensor], kwargs: dict
    ) -> tuple[torch.Tensor, Any]:
        """fn with an explicit mask, in blocks of query rows: a long prompt's mask is
        never T x T at once (at most MASK_ELEMENTS per block)."""
        q_len, kv_len = query.shape[2], key.shape[2]
        rows = max(1, MASK_ELEMENTS // kv_len)
        if rows >= q_len:
            return fn(module, query, key, value, mask_for((0, q_len)), **kwargs)
        bias = kwargs.get("position_bias")
        per_row = isinstance(bias, torch.Tensor) and bias.shape[2] > 1  # a position bias (T5) has rows too
        parts = [
            fn(
                module,
                query[:, :, r : r + rows],
                key,
                value,
                mask_for((r, min(q_len, r + rows))),
                **(
                    {**kwargs, "position_bias": bias[:, :, r : r + rows]}
                    if isinstance(bias, torch.Tensor) and per_row
                    else kwargs
                ),
            )[0]
            for r in range(0, q_len, rows)
        ]
        return torch.cat(parts, dim=1), None  # out is [batch, q, heads, d]; weights are not assembled

    def _keep(self, part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """A view when `part` is all of a fresh tensor (the prompt pass: no copy, no
        cost); a copy when it is a slice of a cache, which a view would keep alive
        whole (and a static cache overwrites in place)."""
        part = part.detach()
        if self.capture_device is not None or self.capture_dtype is not None:
            return part.to(device=self.capture_device, dtype=self.capture_dtype, copy=True)
        return part if part.numel() == whole.numel() else part.clone()

    def _edited_mask(
        self,
        place,
        edits,
        mask,
        query,
        q_start,
        k_start,
        kv_len,
        is_causal,
        sliding_window,
        rows: tuple[int, int],
        q_heads: list[int] | None = None,
    ) -> torch.Tensor:
        """The model's own mask as an additive float mask, plus the edits' log-factors, for
        this call's query rows [r0, r1) (and the query heads `q_heads` only, when given)."""
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise NotImplementedError(
                f"attention edits need a tensor mask; this attention implementation uses {type(mask).__name__}"
            )
        r0, r1 = rows
        dtype, device = query.dtype, query.device

        def positions() -> tuple[torch.Tensor, torch.Tensor]:  # (made only where needed: not in a decoding step)
            return (
                torch.arange(q_start + r0, q_start + r1, device=device),
                torch.arange(k_start, k_start + kv_len, device=device),
            )

        if any(edit.queries is not None for edit in edits):
            bias = edit_bias(edits, query.shape[1], *positions())
        else:  # keys only (the usual case): one bias row per layer for the whole run, sliced per call
            if place not in self.key_bias:
                everywhere = torch.arange(self.length, device=device)
                self.key_bias[place] = edit_bias(edits, query.shape[1], everywhere[:1], everywhere)
            bias = self.key_bias[place][:, :, k_start : k_start + kv_len]
        if q_heads is not None and bias.shape[0] > 1:
            bias = bias[q_heads]
        # a single query that sees every key: the model's own mask would be all zeros (a decoding step)
        every = mask is None and _sees_every_key(q_start + r0, r1 - r0, k_start, kv_len, is_causal, sliding_window)
        if mask is None and not every:  # plain causal (or bidirectional): SDPA's flag, spelt out
            mask = torch.where(allowed_mask(*positions(), is_causal, sliding_window), 0.0, torch.finfo(dtype).min)
            mask = mask.to(dtype)[None, None]
        elif mask is not None:
            mask = mask[:, :, r0:r1] if mask.shape[2] > 1 else mask
            if mask.dtype == torch.bool:
                mask = torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
        if any(edit.factor == 0 for edit in edits):  # only then does it matter which keys a row may see
            if mask is None:
                allowed = torch.ones(1, kv_len, dtype=torch.bool, device=device)
            else:
                allowed = mask[0, 0] > torch.finfo(mask.dtype).min / 2
            bias, spared = spare_fully_masked(bias, allowed.expand(r1 - r0, -1))
            self.fully_masked_rows |= spared
        bias = bias.to(dtype)[None]
        return bias if mask is None else mask + bias

    def _ablate(self, place: Place, out: torch.Tensor, start: int) -> torch.Tensor:
        """The heads' outputs [batch, q, heads, head_dim] of queries from position `start` on, the
        ablated ones removed (at their positions only, when they name some)."""
        out = out.clone()
        for edit in self.ablations[place]:
            rows = slice(None) if edit.positions is None else _rows_in(edit.positions, start, out.shape[1])
            if edit.mode == "zero":
                out[:, rows, edit.head] = 0
            else:
                mean = self.head_means.setdefault((place, edit.head), out[:, :, edit.head].mean(dim=1, keepdim=True))
                out[:, rows, edit.head] = mean.expand_as(out[:, rows, edit.head])
        return out


def _sees_every_key(
    q_first: int, q_len: int, k_first: int, kv_len: int, is_causal: bool, sliding_window: int | None
) -> bool:
    """Whether a single query sees all the call's keys (no key after it, none out of its window):
    its mask is all zeros, nothing to build."""
    if q_len != 1:
        return False
    return (not is_causal or k_first + kv_len - 1 <= q_first) and (
        not sliding_window or k_first > q_first - sliding_window
    )


def _rows_in(spans, start: int, n: int) -> torch.Tensor:
    """Which of the n query rows from position `start` on fall in `spans`."""
    positions = torch.arange(start, start + n)
    inside = torch.zeros(n, dtype=torch.bool)
    for first, stop in spans:
        inside |= (positions >= first) & (positions < stop)
    return inside


def _heads(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    """t[:, index]: a view when the heads are contiguous, a copy only when they are not."""
    if index == list(range(index[0], index[-1] + 1)):
        return t[:, index[0] : index[-1] + 1]
    return t[:, index]


# --- registration with transformers, and installing a run on a model ---

_WRAPPERS: dict[str, Callable] = {}


_INNER: dict[tuple[str, type], Callable] = {}  # (implementation, attention class) -> its function


def _inner_function(inner: str, module: torch.nn.Module) -> Callable:
    found = _INNER.get((inner, type(module)))
    if found is not None:  # (looked up once: this runs at every layer of every forward)
        return found
    if inner == "eager":
        # each model file has its own eager function (GPT-2's differs from Llama's)
        found = sys.modules[type(module).__module__].eager_attention_forward
    else:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        found = ALL_ATTENTION_FUNCTIONS[inner]
    _INNER[(inner, type(module))] = found
    return found


def registered_name(inner: str) -> str:
    """Register (once per process) the wrapper of `inner` and its mask function; return its name."""
    name = PREFIX + inner
    if name in _WRAPPERS:
        return name
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    def wrapper(module, query, key, value, attention_mask, **kwargs):
        fn = _inner_function(inner, module)
        run = module.__dict__.get(STATE)
        if run is None or run.thread != threading.get_ident():  # not our run: a forward of someone else's
            return fn(module, query, key, value, attention_mask, **kwargs)
        return run.attend(fn, module, query, key, value, attention_mask, kwargs)

    AttentionInterface.register(name, wrapper)
    # the mask must come from the wrapped implementation's mask function, or
    # causal models silently attend both ways
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    _WRAPPERS[name] = wrapper
    return name


def _own(module: torch.nn.Module, name: str) -> Any:
    """A module's own parameter, buffer or attribute `name`, or None."""
    for store in (module._parameters, module._buffers, module.__dict__):
        if name in store:
            return store[name]
    return None


def _window(kwargs: dict, mask: Any, is_causal: Any, q_len: int, kv_len: int, captured: LayerCapture) -> int | None:
    """The model's window: said to the attention function, else read from its mask, else (a cached
    step's single query) the one this layer's prompt pass showed; kept on the layer for those steps."""
    window = kwargs.get("sliding_window") or (_window_in(mask, q_len, kv_len) if is_causal else None)
    return captured.sliding_window if window is None and q_len == 1 else window


def _seen(mask: torch.Tensor) -> torch.Tensor:
    """Which entries of a model's mask let a key be seen: True in a boolean one, not (near) -inf in
    an additive one."""
    return mask if mask.dtype == torch.bool else mask > -1e4


def _window_in(mask: Any, q_len: int, kv_len: int) -> int | None:
    """The sliding window a pass's own mask applies, where the model says it only there (Phi-MoE,
    Doge pass no sliding_window to the attention function), else None. Read at the last query and
    the first: with a window the last sees only its last `window` keys while the first saw key 0
    (left padding hides the same keys from both)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or q_len < 2 or q_len != kv_len:
        return None
    seen = _seen(mask[:, 0, [0, -1], :])  # [batch, (first query, last query), keys]
    # the first key each row sees (kv_len where it sees none), fewest over the batch
    first = torch.where(seen, torch.arange(kv_len, device=mask.device), kv_len).amin(-1).amin(0).tolist()
    return kv_len - first[1] if first[1] > first[0] else None


def _is_causal(mask: Any, q_len: int, kv_len: int, kwargs: dict, module: Any) -> Any:
    """Whether a call is causal: what the model's mask does, where it shows; else what the call or
    the module says (BigBird-Pegasus' decoder says is_causal=False and passes a causal mask)."""
    is_causal = _causal_in(mask, q_len, kv_len)
    if is_causal is None:
        is_causal = kwargs.get("is_causal")
    return getattr(module, "is_causal", True) if is_causal is None else is_causal


def _causal_in(mask: Any, q_len: int, kv_len: int) -> bool | None:
    """Whether a pass's own mask hides the next key from a query (None where it cannot say: no
    mask tensor, or a single query). Read at the last key: hidden from the query before it but
    seen by its own (a padded key is hidden from both)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or q_len < 2 or q_len != kv_len:
        return None
    seen = _seen(mask[:, 0, -2:, -1])  # [batch, (query before, own query)]
    for before, own in seen.tolist():
        if own:
            return not before
    return None


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules that call the attention interface: they carry `layer_idx` and the projections (found
    once per model: models.structure)."""
    return list(remembered(model, "attention modules", _attention_modules))


def _attention_modules(model: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    return tuple(m for m in model.modules() if hasattr(m, "layer_idx") and calls_attention_interface(type(m)))


def unshowable(model: torch.nn.Module, name: str) -> str | None:
    """Why the trace cannot show this model's attention as one map per layer and head, or None: it
    has no layer that attends, or its attention modules run several times per forward (recurrent
    depth, as HRM's; one block shared by several layers), where one map per module would hide calls."""
    return remembered(model, ("unshowable", name), lambda m: _unshowable(m, name))


def _unshowable(model: torch.nn.Module, name: str) -> str | None:
    modules = attention_modules(model)
    if not modules:
        kinds = getattr(getattr(model, "config", None), "layer_types", None)
        return (
            f"{name} has no layer that attends"
            + (f" (its layers are {list(kinds)})" if isinstance(kinds, (list, tuple)) else "")
            + ": there is no attention to trace or steer"
        )
    # every place a self-attention module sits in the tree: a shared block counts each time
    placed = [
        m
        for path, m in model.named_modules(remove_duplicate=False)
        if hasattr(m, "layer_idx") and calls_attention_interface(type(m)) and not _is_cross(path)
    ]
    distinct = list(dict.fromkeys(placed))
    indices = [m.layer_idx for m in distinct if isinstance(m.layer_idx, int)]
    if len(placed) > len(distinct) or len(set(indices)) < len(indices):
        return recurring(f"the {len(distinct)} attention modules of {name}")
    return None


def recurring(what: str) -> str:
    return (
        f"{what} run several times per forward (recurrent depth, or a block shared by several layers), and "
        f"a trace keeps one map per layer: showing each call as its own layer is not built yet"
    )


def attention_layers(model: torch.nn.Module) -> tuple[int, ...]:
    """The layers that attend through the registry: all of them, but in a hybrid model (Qwen3-Next,
    OLMo-hybrid, Nemotron-H, ...) only those between its linear-attention or state-space layers."""
    layers = set()
    for i, module in enumerate(attention_modules(model)):
        index = getattr(module, "layer_idx", None)
        layers.add(index if isinstance(index, int) else i)
    return tuple(sorted(layers))


_CROSS_NAMES = ("encoder_attn", "encdecattention", "crossattention", "cross_attn", "cross_attention")


def _is_cross(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in _CROSS_NAMES


def stack_modules(model: Any) -> dict[str, list[torch.nn.Module]]:
    """The attention modules of each stack, in layer order: {"self": [...]}, or an
    encoder-decoder's {"encoder": [...], "decoder": [...], "cross": [...]}. A decoder's
    cross-attention is told by its name (BART's encoder_attn, T5's EncDecAttention, ...), or,
    failing that, by not being causal. Found once per model (models.structure)."""
    return {name: list(modules) for name, modules in remembered(model, "stack modules", _stack_modules).items()}


def _stack_modules(model: Any) -> dict[str, list[torch.nn.Module]]:
    if not getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "get_encoder"):
        return {SELF: attention_modules(model)}
    encoder = {id(m) for m in model.get_encoder().modules()}
    stacks: dict[str, list[torch.nn.Module]] = {"encoder": [], "decoder": [], "cross": []}
    for name, module in model.named_modules():
        if not (hasattr(module, "layer_idx") and calls_attention_interface(type(module))):
            continue
        leaf = name.rsplit(".", 1)[-1].lower()
        if id(module) in encoder:
            stacks["encoder"].append(module)
        elif leaf in _CROSS_NAMES or getattr(module, "is_causal", True) is False:
            stacks["cross"].append(module)
        else:
            stacks["decoder"].append(module)
    return stacks


@contextmanager
def routed(model: Any, *, additive_mask: bool = False) -> Iterator[str]:
    """The model's attention through our wrapper of its own implementation (of SDPA when the run
    adds a mask: flash and flex kernels take none) for a while, as it was after, on errors too.
    Yields the wrapped implementation's name. Modules without a run state pass straight through."""
    original = model.config._attn_implementation or "eager"
    inner = original.removeprefix(PREFIX)
    if additive_mask and inner not in ("sdpa", "eager"):
        inner = "sdpa"
    set_attention(model, registered_name(inner))
    try:
        yield inner
    finally:
        set_attention(model, original)


@contextmanager
def instrument(model: Any, run: RunState) -> Iterator[str]:
    """Route the model's attention through our wrapper for the duration of a run."""
    stacks = stack_modules(model)
    modules = [module for stack in stacks.values() for module in stack]
    for stack, members in stacks.items():
        for index, module in enumerate(members):
            layer = module.layer_idx if stack == SELF and isinstance(module.layer_idx, int) else index
            run.places[id(module)] = (stack, layer)
            module.__dict__[STATE] = run

    def count(_model, _args):  # (this run's thread only: another thread's forward waits at the gate)
        if threading.get_ident() == run.thread:
            run.forwards += 1

    counting = model.register_forward_pre_hook(count)
    try:
        with routed(model, additive_mask=run.changes_attention) as inner, _steered(model, run, stacks):
            run.inner = inner
            yield inner
    finally:
        counting.remove()
        for module in modules:
            module.__dict__.pop(STATE, None)


@contextmanager
def _steered(model: Any, run: RunState, stacks: dict[str, list[torch.nn.Module]]) -> Iterator[None]:
    """The run's SteerResidual edits on the model's blocks (nothing to find or hook without one)."""
    steers = [*run.steering, *(e for e in run._row_flat() if isinstance(e, SteerResidual))]
    if not any(edit.strength for edit in steers) and not run.mlp_ablations:
        yield
        return
    mlps: list[Any] = []
    if SELF in stacks:
        parts = anatomy(model, run.n_layers)
        blocks: dict[str, Any] = {SELF: parts.blocks}
        starters, mlps = {SELF: model}, list(parts.mlps)
    else:  # an encoder-decoder: the encoder's blocks and the decoder's (which hold its cross-attention too)
        decoder = model.get_decoder()
        blocks = {
            "encoder": enclosing_blocks(model.get_encoder(), stacks["encoder"]),
            "decoder": enclosing_blocks(decoder, stacks["decoder"]),
        }
        starters = {"decoder": decoder}
    offsets = {name: run.offsets.get(name, (0, 0))[0] for name in blocks}
    steering = ResidualSteering(
        (*run.steering, *run.mlp_ablations),
        blocks,
        offsets=offsets,
        n_prompt=run.n_prompt,
        row_edits=run.row_edits,
        mlps=mlps,
    )
    with steering.installed(starters):
        yield
