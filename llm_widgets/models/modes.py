"""Changing a model's modes for one computation, and always putting them back.

Every layer that runs a model in a mode the user did not choose (eval for a
trace, eager attention for attention weights) goes through `model_mode`, so restoring is written once and happens on
errors and interrupts too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.utils.checkpoint

from .compat import set_attention
from .structure import modules_of


@contextmanager
def model_mode(
    model: torch.nn.Module,
    *,
    training: bool | None = None,
    attn_implementation: str | None = None,
) -> Iterator[torch.nn.Module]:
    """Within the block: `training` sets train/eval mode; `attn_implementation` switches the
    model's attention (e.g. "eager" for attention weights). Afterwards the model is exactly as it was."""
    # each module's own flag, restored exactly (a user's model in training may hold a frozen
    # submodule in eval); train() walks the tree, so it is called only when something changes
    modules = modules_of(model) if training is not None else ()
    modes = [m.training for m in modules]
    attn_before = getattr(model.config, "_attn_implementation", None) if attn_implementation else None
    switch = attn_implementation is not None and attn_before != attn_implementation
    changed = training is not None and any(mode != training for mode in modes)
    try:
        if changed and training is not None:
            model.train(training)
        if switch:
            set_attention(model, attn_implementation)
        yield model
    finally:
        if switch:
            set_attention(model, attn_before)
        for module, mode in zip(modules, modes) if changed else ():  # (nothing to put back otherwise)
            if module.training == training:  # (a mode another thread set meanwhile is its own: kept)
                module.training = mode


_MISSING = object()


@contextmanager
def checkpointed(blocks: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Within the block, each of `blocks` keeps only its input for a backward and runs again during
    it (torch's non-reentrant activation checkpointing): a long prompt's backward holds one block's
    activations at a time instead of all of them. Values and gradients are those of the plain run.
    The blocks' own forward is put back afterwards (an instance's own, as accelerate sets, too)."""
    changed: list[tuple[torch.nn.Module, object]] = []
    try:
        for block in blocks:
            own = block.__dict__.get("forward", _MISSING)
            forward = block.forward

            def run(*args, _forward=forward, **kwargs):
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            changed.append((block, own))
            block.forward = run
        yield
    finally:
        for block, own in reversed(changed):
            if own is _MISSING:
                del block.forward
            else:
                block.__dict__["forward"] = own
