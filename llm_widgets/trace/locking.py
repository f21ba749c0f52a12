"""One traced run of a model at a time.

A run switches the model's attention implementation and puts its state on the
model's attention modules; two overlapping runs would see each other's edits
and restore each other's settings. So every run holds the model's lock: a
second caller (another thread, a widget callback) waits its turn, and the
attention setting is restored exactly when each run ends. The lock is
re-entrant, so a run may call another on the same thread (replay, fidelity).
Forwards of the model that are not ours (a training loop in a thread) wait at
the model's gate while a run holds it, and a run starts once those under way
have finished (models/gate.py): they never meet a run's modes, hooks or edits.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..errors import ModelBusyError
from ..models.gate import gate

WARN_AFTER_S = 10.0

_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_creating = threading.Lock()  # guards only the creation of a model's lock


def model_lock(model: torch.nn.Module) -> threading.RLock:
    lock = _locks.get(model)
    if lock is None:
        with _creating:
            lock = _locks.setdefault(model, threading.RLock())
    return lock


@contextmanager
def exclusive(
    model: torch.nn.Module, *, on_wait: Callable[[], None] | None = None, timeout: float | None = None
) -> Iterator[None]:
    """Hold `model` for one run. When another run holds it: call `on_wait` (a widget says
    "waiting for the model"), warn after WARN_AFTER_S seconds, and raise TimeoutError
    after `timeout` seconds if one is given."""
    lock = model_lock(model)
    if not lock.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        waited, warned = 0.0, False
        while True:
            step = WARN_AFTER_S if timeout is None else min(WARN_AFTER_S, max(timeout - waited, 0.0))
            if lock.acquire(timeout=step):
                break
            waited += step
            if timeout is not None and waited >= timeout:
                raise ModelBusyError(
                    f"{type(model).__name__} was busy with another run for {waited:.0f} s; "
                    f"try again when it has finished"
                )
            if not warned:
                warnings.warn(
                    f"waiting for another run of {type(model).__name__} to finish ({waited:.0f} s so far): "
                    f"runs of one model take turns",
                    stacklevel=3,
                )
                warned = True
    try:
        with gate(model).closed():  # and other threads' own forwards of it wait (models/gate.py)
            yield
    finally:
        lock.release()
