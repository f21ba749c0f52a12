"""What a model's module tree holds, worked out once per model and reused by every run.

Walking a module tree costs about a microsecond per module (SmolLM2's 273 modules: 0.2 ms a
walk, more when each module is looked at), and a traced run used to walk it a dozen times: its
attention modules, its facts, where its weights are, its modes. Such facts are now kept per model
and worked out again only when the tree may have changed. Torch calls a global hook whenever any
module registers a submodule, a parameter or a buffer (peft's adapters, a quantiser's replaced
layers, a resized embedding, weights loaded with `assign=True` all do); those made on a module of
a tree whose facts are kept count, others not (Llama's forward slices its ModuleList of layers,
which registers them all on a new list, every run). A moved or cast model (`model.to`, `.half()`,
`to_empty`) changes its first weight's device or dtype: both are in the key.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch.nn.modules import module as torch_module

T = TypeVar("T")

_tree = [0]  # registrations on kept trees' modules since import: a change to any of them moves it
_watched: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # the modules of every tree with kept facts


def _registered(module: torch.nn.Module, *_args) -> None:
    if module in _watched:
        _tree[0] += 1  # (a hook returning None keeps what was registered)


torch_module.register_module_module_registration_hook(_registered)
torch_module.register_module_parameter_registration_hook(_registered)
torch_module.register_module_buffer_registration_hook(_registered)

_kept: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_TREE = object()  # a kept model's (registrations counted, first weight): no fact has this name
walks: collections.Counter[Hashable] = collections.Counter()  # facts worked out, by name (tests count them)


def remembered(model: torch.nn.Module, what: Hashable, compute: Callable[[torch.nn.Module], T]) -> T:
    """compute(model), worked out again only when the model's tree or weights' placement may have
    changed since it last was (see the module's docstring)."""
    facts = _kept.get(model)
    if facts is None:
        facts = _kept.setdefault(model, {})
    tree = facts.get(_TREE)
    if tree is None or tree[0] != _tree[0]:  # (where its first weight sits, found once per state of the trees)
        _watched.update(model.modules())
        tree = facts[_TREE] = (_tree[0], *_first_weight(model))
    _, owner, name = tree
    # read where it sits each time: `to_empty` and some casts put a new tensor there without registering it
    first = None if owner is None else owner._parameters.get(name)
    key = (
        tree[0],
        None if first is None else (first.device, first.dtype),
        id(getattr(model, "hf_device_map", None)),  # (accelerate's dispatch sets it)
    )
    found = facts.get(what)
    if found is not None and found[0] == key:
        return found[1]
    walks[what] += 1
    value = compute(model)
    facts[what] = (key, value)
    return value


def _first_weight(model: torch.nn.Module) -> tuple[torch.nn.Module | None, str]:
    """The module holding the model's first parameter, and its name there (None: no parameters)."""
    for path, _ in model.named_parameters():
        owner, _, name = path.rpartition(".")
        return model.get_submodule(owner), name
    return None, ""


def forget(model: torch.nn.Module, what: Hashable) -> None:
    """Drop a kept fact (one that may change without the key seeing it)."""
    facts = _kept.get(model)
    if facts is not None:
        facts.pop(what, None)


def modules_of(model: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """model.modules(), as a tuple kept while the tree stays as it was."""
    return remembered(model, "modules", lambda m: tuple(m.modules()))
