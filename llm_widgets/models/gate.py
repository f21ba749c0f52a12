"""Forwards of a model that are not ours wait while a run of ours holds it.

A traced run, the lens, patching, profiles and attribution change the model for
their duration: eval mode, hooks, the attention implementation. A forward of the
same model on another thread (a training loop, a server) must never meet those
changes. So the model's own forward passes a gate (a pre-hook and an always-called
hook on the root module, put there once when a LanguageModel wraps it): while a
run holds the model, other threads' forwards wait at the gate, and a run waits
for the forwards already inside to leave before it changes anything. Each thread
then sees the model exactly as its owner left it. Forwards on the holding thread
(the run's own) pass; so do nested calls.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_gates: weakref.WeakKeyDictionary[torch.nn.Module, ForwardGate] = weakref.WeakKeyDictionary()
_creating = threading.Lock()


class ForwardGate:
    def __init__(self):
        self._cond = threading.Condition()
        self._inside: Counter[int] = Counter()  # forwards under way, by thread (not the holder's)
        self._holder: int | None = None
        self._depth = 0  # the holder's nested holds (a run calling another on its thread)

    def enter(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._holder == me:
                return
            while self._holder is not None and not self._inside[me]:  # (a nested call of a forward under way runs)
                self._cond.wait()
            self._inside[me] += 1

    def leave(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._inside[me]:
                self._inside[me] -= 1
                if not self._inside[me]:
                    del self._inside[me]
                    self._cond.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        """This thread holds the model: other threads' forwards wait until the block ends, and the
        block starts once the forwards already under way on other threads have finished."""
        me = threading.get_ident()
        with self._cond:
            if self._holder != me:
                while self._holder is not None or any(t != me for t in self._inside):
                    self._cond.wait()
                self._holder = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._holder = None
                    self._cond.notify_all()


def _enter(module: torch.nn.Module, _args: Any) -> None:
    found = _gates.get(module)
    if found is not None:
        found.enter()


def _leave(module: torch.nn.Module, _args: Any, _output: Any) -> None:
    found = _gates.get(module)
    if found is not None:
        found.leave()


def gate(model: torch.nn.Module) -> ForwardGate:
    """The model's gate, made the first time it is asked for. The hooks are plain functions that
    look the gate up, so a deep copy or a pickle of the model carries no lock (a copy gets a gate
    of its own when it is asked for one)."""
    found = _gates.get(model)
    if found is None:
        with _creating:
            found = _gates.get(model)
            if found is None:
                found = _gates[model] = ForwardGate()
                if _enter not in model._forward_pre_hooks.values():  # (a copy of a gated model has them)
                    model.register_forward_pre_hook(_enter, prepend=True)
                    model.register_forward_hook(_leave, always_call=True)
    return found
