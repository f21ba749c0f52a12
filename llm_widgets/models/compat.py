"""What differs between the transformers releases we support, in one place.

transformers 5.24 renamed the cache argument of `forward` and the cache field of
outputs from `past_key_values` to `cache`; the old names still work there but
warn (and go in 5.40). We ask the running version which one it wants.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch
import transformers
from packaging.version import Version

from .structure import remembered


@cache
def _forward_takes(model_type: type, name: str) -> bool:
    return name in inspect.signature(model_type.forward).parameters


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether forward can compute the last position's logits alone (most causal LMs since 4.45)."""
    return _forward_takes(type(model), "logits_to_keep")


def takes_position_ids(model: torch.nn.Module) -> bool:
    """Whether forward takes position_ids (needed when left padding shifts a row's positions)."""
    return _forward_takes(type(model), "position_ids")


# Model types whose attention we cannot yet show exactly, each with the reason: a traced run refuses
# them with it (tests/test_registry_sweep.py checks every other causal LM of the installed transformers).
UNSUPPORTED_ATTENTION: dict[str, str] = {
    "diffllama": "its differential attention subtracts two softmax maps per head (weighted by a learned lambda), so no "
    "single map is the attention the values see; showing both maps and their difference is not built",
    "inkling_text": "it adds a learned position bias to the attention scores inside the attention function, which "
    "the recomputed maps would leave out",
}


# Types whose attention, on transformers releases before the one named, is not what their attention
# function's inputs give (found by the registry sweep under `make test-oldest`, transformers 5.2; not
# investigated further): refused there rather than shown wrong.
CORRECT_FROM = {"doge": "5.24", "glm_moe_dsa": "5.24", "minimax": "5.24"}


def unsupported_attention(model_type: str) -> str | None:
    """Why llm-widgets cannot trace this model type with the installed transformers, or None."""
    if model_type in UNSUPPORTED_ATTENTION:
        return UNSUPPORTED_ATTENTION[model_type]
    since = CORRECT_FROM.get(model_type)
    if since and Version(transformers.__version__) < Version(since):
        return (
            f"with transformers {transformers.__version__} its attention is not what llm-widgets recomputes from "
            f"the attention function's inputs; upgrade to transformers >= {since}"
        )
    return None


@cache
def calls_attention_interface(module_type: type) -> bool:
    """Whether a module's forward computes attention through transformers' registry
    (ALL_ATTENTION_FUNCTIONS). A hybrid's linear-attention and state-space modules may carry a
    layer_idx and an "...Attention" name too, but compute their own."""
    try:
        source = inspect.getsource(module_type.forward)
    except (OSError, TypeError):  # no source to read: trust the name
        return module_type.__name__.endswith(("Attention", "SelfAttention"))
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def uses_attention_registry(model: torch.nn.Module) -> bool:
    """Whether the model computes attention through transformers' attention registry, where the
    trace engine captures and edits it (else: viewing through eager output_attentions only). Not
    every model that does says so with `_supports_attention_backend` (BART, BioGPT, Marian,
    Pegasus, StableLM, Falcon-H1, ... in 5.24): its attention modules' code tells."""
    if getattr(type(model), "_supports_attention_backend", False):
        return True
    return remembered(
        model,
        "uses the attention registry",
        lambda m: any(hasattr(x, "layer_idx") and calls_attention_interface(type(x)) for x in m.modules()),
    )


def set_attention(model: Any, implementation: str | None) -> None:
    """Switch the model's attention implementation. All a switch changes is each config's
    `_attn_implementation_internal` (the model's, its sub-models', their sub-configs'), but
    transformers' `set_attn_implementation` walks the module tree to find them, twice per run: the
    values one switch left are remembered per model (models.structure) and set directly the next
    time the configs start from the same values."""
    configs = remembered(model, "configs", _configs)
    before = tuple(getattr(c, "_attn_implementation_internal", None) for c in configs)
    switches = remembered(model, "attention switches", lambda _: {})
    after = switches.get((before, implementation))
    if after is None:
        _switch(model, implementation)
        switches[(before, implementation)] = tuple(getattr(c, "_attn_implementation_internal", None) for c in configs)
        return
    for config, value in zip(configs, after):
        config._attn_implementation_internal = value


def _configs(model: Any) -> tuple[Any, ...]:
    """Every config the model's modules hold, and their sub-configs, once each."""
    found: dict[int, Any] = {}
    queue = [model.config, *(m.config for m in model.modules() if hasattr(getattr(m, "config", None), "sub_configs"))]
    while queue:
        config = queue.pop()
        if config is None or id(config) in found or not hasattr(config, "sub_configs"):
            continue
        found[id(config)] = config
        queue += [getattr(config, key, None) for key in config.sub_configs]
    return tuple(found.values())


def _switch(model: Any, implementation: str | None) -> None:
    """Models outside the attention registry refuse `set_attn_implementation` (with a log line each
    time) but read the config at every forward: for them the config is set directly (else Falcon,
    asked for weights under "sdpa", adds a boolean mask to its eager scores)."""
    can_switch = getattr(type(model), "_can_set_attn_implementation", None)
    if can_switch is None or can_switch():
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes `cache` to this model's forward."""
    return {"cache": cache} if _forward_takes(type(model), "cache") else {"past_key_values": cache}


def output_cache(output: Any) -> Any:
    """The cache a forward or generate output carries (None without one)."""
    names = {f for f in getattr(output, "__dataclass_fields__", {})}
    if "cache" in names:
        return getattr(output, "cache", None)
    return getattr(output, "past_key_values", None)
