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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .edits import AblateHead, ScaleAttention

PREFIX = "llm_widgets_"
STATE = "_llm_widgets_run"


# --- masks and edit biases, shared by the live wrapper and the recomputation ---


def allowed_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, is_causal: bool, sliding_window: int | None) -> torch.Tensor:
    """[q, k] bool: which keys each query may see (batch of one, no padding)."""
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0 if is_causal else torch.ones_like(diff, dtype=torch.bool)
    if sliding_window:
        allowed &= diff < sliding_window  # transformers' convention: kv_idx > q_idx - window
    return allowed


def edit_bias(edits: tuple[ScaleAttention, ...], layer: int, n_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor,
              allowed: torch.Tensor, on_fully_masked: Callable[[], None] | None = None) -> torch.Tensor | None:
    """[heads, q, k] float32 log-factors of the ScaleAttention edits on this layer, or None.

    Rows whose every allowed key would get factor 0 keep no bias at all: they
    stay as the model computes them, never NaN.
    """
    bias = None
    for edit in edits:
        if edit.layers is not None and layer not in edit.layers:
            continue
        if bias is None:
            bias = torch.zeros(n_heads, len(q_pos), len(k_pos), device=q_pos.device)
        key_hit = _in_spans(k_pos, edit.keys)
        query_hit = _in_spans(q_pos, edit.queries) if edit.queries is not None else torch.ones_like(q_pos, dtype=torch.bool)
        cell = query_hit[:, None] & key_hit[None, :]
        heads = list(edit.heads) if edit.heads is not None else slice(None)
        value = torch.log(torch.tensor(edit.factor)).item() if edit.factor > 0 else float("-inf")
        bias[heads] += torch.where(cell, value, 0.0)
    if bias is None:
        return None
    dead = torch.isneginf(bias) | ~allowed  # [h, q, k]
    fully_masked = dead.all(-1) & allowed.any(-1)  # rows that had keys and would lose them all
    if fully_masked.any():
        bias[fully_masked] = 0.0
        if on_fully_masked is not None:
            on_fully_masked()
    return bias


def _in_spans(pos: torch.Tensor, spans) -> torch.Tensor:
    hit = torch.zeros_like(pos, dtype=torch.bool)
    for start, stop in spans:
        hit |= (pos >= start) & (pos < stop)
    return hit


# --- per-run state, kept on the model's attention modules ---


@dataclass
class LayerRecord:
    """Chunks of (positions, queries [H, n, d]) and (positions, keys [Hkv, n, d]) as the run produced them."""

    queries: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    keys: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    scaling: float | None = None
    softcap: float | None = None
    sliding_window: int | None = None
    is_causal: bool = True


class Run:
    """What one traced run captures and changes. Lives on the modules only while the run lasts."""

    def __init__(self, n_layers: int, n_heads: int, edits: tuple = (), capture: bool = True,
                 capture_device: torch.device | str | None = None):
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.scale_edits = tuple(e for e in edits if isinstance(e, ScaleAttention))
        self.ablations: dict[int, list[AblateHead]] = {}
        for e in edits:
            if isinstance(e, AblateHead):
                self.ablations.setdefault(e.layer, []).append(e)
        self.capture = capture
        self.capture_device = capture_device
        self.layers = [LayerRecord() for _ in range(n_layers)]
        self.layer_of: dict[int, int] = {}  # id(module) -> layer, for modules whose layer_idx is None
        self.head_means: dict[tuple[int, int], torch.Tensor] = {}
        self.fully_masked_rows = False

    @property
    def changes_attention(self) -> bool:
        return bool(self.scale_edits)

    def layer_index(self, module: torch.nn.Module) -> int:
        idx = getattr(module, "layer_idx", None)
        return idx if isinstance(idx, int) else self.layer_of[id(module)]

    def attend(self, fn: Callable, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, attention_mask: Any, kwargs: dict) -> tuple[torch.Tensor, Any]:
        layer = self.layer_index(module)
        q_len, kv_len = query.shape[2], key.shape[2]
        q_pos = _query_positions(kwargs.get("position_ids"), q_len, kv_len, query.device)
        k_pos = _key_positions(q_pos, kv_len)
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        sliding_window = kwargs.get("sliding_window")
        record = self.layers[layer]
        if self.capture:
            record.scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            record.softcap = kwargs.get("softcap")
            record.sliding_window = sliding_window
            record.is_causal = bool(is_causal)
            # the new keys are the slots of this call's query positions: a contiguous run
            first = int(torch.searchsorted(k_pos, q_pos[0]))
            last = int(torch.searchsorted(k_pos, q_pos[-1], right=True))
            record.queries.append((q_pos.cpu(), self._keep(query[0], query)))
            record.keys.append((k_pos[first:last].cpu(), self._keep(key[0, :, first:last], key)))
        if self.scale_edits:
            attention_mask = self._edited_mask(layer, attention_mask, query, q_pos, k_pos, bool(is_causal), sliding_window)
        out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        if layer in self.ablations:
            out = self._ablate(layer, out)
        return out, weights

    def _keep(self, part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """A view when `part` is all of a fresh tensor (the prompt pass: no copy, no
        cost); a copy when it is a slice of a cache, which a view would keep alive
        whole (and a static cache overwrites in place)."""
        part = part.detach()
        if self.capture_device is not None:
            return part.to(self.capture_device, copy=True)
        return part if part.numel() == whole.numel() else part.clone()

    def _edited_mask(self, layer, mask, query, q_pos, k_pos, is_causal, sliding_window) -> torch.Tensor | Any:
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise NotImplementedError("attention edits need a tensor mask; this attention implementation uses "
                                      f"{type(mask).__name__}")
        dtype = query.dtype
        if mask is None:
            allowed = allowed_mask(q_pos, k_pos, is_causal, sliding_window)
            mask = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
        elif mask.dtype == torch.bool:
            allowed = mask[0, 0]
            mask = torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
        else:
            allowed = mask[0, 0] > torch.finfo(mask.dtype).min / 2
        bias = edit_bias(self.scale_edits, layer, self.n_heads, q_pos, k_pos, allowed, self._warn_fully_masked)
        if bias is None:
            return mask if mask.dtype != torch.bool else mask
        return mask + bias.to(dtype)[None]

    def _warn_fully_masked(self) -> None:
        self.fully_masked_rows = True

    def _ablate(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()  # [batch, q, heads, head_dim]
        for edit in self.ablations[layer]:
            if edit.mode == "zero":
                out[:, :, edit.head] = 0
            else:
                mean = self.head_means.setdefault((layer, edit.head), out[:, :, edit.head].mean(dim=1, keepdim=True))
                out[:, :, edit.head] = mean
        return out


def _query_positions(position_ids: Any, q_len: int, kv_len: int, device) -> torch.Tensor:
    if isinstance(position_ids, torch.Tensor) and position_ids.shape[-1] == q_len:
        pos = position_ids.reshape(-1, q_len)[0]
        return pos.to(device=device, dtype=torch.long)
    # no positions passed (GPT-2, BERT): full caches hold every earlier key, so
    # the queries are the last q_len of kv_len
    return torch.arange(kv_len - q_len, kv_len, device=device)


def _key_positions(q_pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Absolute position of each key slot: caches hold the most recent keys, so
    the slots end at the last query. A static cache (more slots than tokens
    seen) is indexed by position directly."""
    last = int(q_pos[-1])
    if kv_len <= last + 1:
        return torch.arange(last + 1 - kv_len, last + 1, device=q_pos.device)
    return torch.arange(kv_len, device=q_pos.device)


# --- registration with transformers, and installing a run on a model ---

_WRAPPERS: dict[str, Callable] = {}


def _inner_function(inner: str, module: torch.nn.Module) -> Callable:
    if inner == "eager":
        # each model file has its own eager function (GPT-2's differs from Llama's)
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[inner]


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
        if run is None:
            return fn(module, query, key, value, attention_mask, **kwargs)
        return run.attend(fn, module, query, key, value, attention_mask, kwargs)

    AttentionInterface.register(name, wrapper)
    # the mask must come from the wrapped implementation's mask function, or
    # causal models silently attend both ways
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    _WRAPPERS[name] = wrapper
    return name


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules that call the attention interface: they carry `layer_idx` and the projections."""
    found = [m for m in model.modules() if hasattr(m, "layer_idx") and type(m).__name__.endswith(("Attention", "SelfAttention"))]
    return found


@contextmanager
def instrument(model: torch.nn.Module, run: Run) -> Iterator[str]:
    """Route the model's attention through our wrapper for the duration of a run."""
    original = model.config._attn_implementation or "eager"
    inner = original.removeprefix(PREFIX)
    if run.changes_attention and inner not in ("sdpa", "eager"):
        inner = "sdpa"  # flash and flex kernels take no additive mask: edits run on SDPA
    name = registered_name(inner)
    modules = attention_modules(model)
    for index, module in enumerate(modules):
        if not isinstance(getattr(module, "layer_idx", None), int):
            run.layer_of[id(module)] = index
        module.__dict__[STATE] = run
    try:
        model.set_attn_implementation(name)
        yield inner
    finally:
        for module in modules:
            module.__dict__.pop(STATE, None)
        model.set_attn_implementation(original)
