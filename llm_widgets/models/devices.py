"""Where a model's inputs go, also when accelerate has split or offloaded it.

A model loaded with `device_map` (or passed through accelerate's `dispatch_model`,
`cpu_offload`, `disk_offload`) keeps offloaded weights on the meta device and
moves them in for each call; its hooks name the device each module runs on.
The first parameter's device, the usual answer, is then "meta".
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ..errors import InputError
from .structure import forget, remembered


def execution_device(module: torch.nn.Module) -> torch.device | None:
    """The device accelerate's hook runs this module on, or None when it has no hook."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        return None
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def input_device(model: Any) -> torch.device:
    """The device input ids (or embeddings) must be on for `model(...)`."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in (embed, model):
        if module is not None and (device := execution_device(module)) is not None:
            return device
    weights = embed.parameters() if embed is not None else iter(())
    for p in itertools.chain(weights, model.parameters()):  # (lazily: the first placed weight is the answer)
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def placement(model: torch.nn.Module) -> str:
    """Where the weights live, in words: "cpu", "cuda:0", or a split such as "cuda:0 + cpu + disk"."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        places = []
        for where in device_map.values():
            name = f"cuda:{where}" if isinstance(where, int) else str(where)
            if name not in places:
                places.append(name)
        return " + ".join(places)
    devices = {str(p.device) for p in model.parameters()}
    # "meta": offloaded weights, moved in for each call
    places = sorted(devices - {"meta"}) + (["offloaded"] if "meta" in devices else [])
    return " + ".join(places) if places else "cpu"


def _runnable(model: torch.nn.Module) -> bool:
    return not any(p.is_meta for p in model.parameters()) or any(
        getattr(m, "_hf_hook", None) is not None for m in model.modules()
    )


def check_runnable(model: torch.nn.Module) -> None:
    """Refuse, saying what to do, a model whose weights are on the meta device with nothing to load
    them (made under init_empty_weights, or with device="meta"): accelerate's offloaded weights are
    there too, but its hooks move them in for each call. A runnable model is remembered (see
    structure.py); one that is not is looked at again each time (hooks may have been added since)."""
    if remembered(model, "runnable", _runnable):
        return
    forget(model, "runnable")
    if not _runnable(model):
        raise InputError(
            f"{type(model).__name__} has weights on the meta device (shapes without values, as "
            f"init_empty_weights or device='meta' make them): there is nothing to run. Load its weights "
            f"first: from_pretrained(...), or model.to_empty(device='cpu') then load_state_dict(...)"
        )
