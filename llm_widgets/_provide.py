"""Methods that the public API puts on a lower layer's object but a higher layer implements.

`model.trace(...)` lives on `LanguageModel` (models/) but runs the engine
(trace/); `trace.attribute(...)` lives on `Trace` (trace/) but runs an
analysis (analysis/). The lower class declares the method once, signature,
types, defaults and docstring, and marks it `@provided`; the higher layer
registers the function that does the work with `@provides(Class.method)` when it
is imported (`import llm_widgets` imports every layer). A call binds the
arguments against the declaration (its defaults applied) and passes every one by
name, so the implementation lists the same names without repeating a default or
a type. No lower layer imports a higher one at run time, and readers, editors
and type checkers see every method where users call it (the result types are
imported for the type checker only): the inversion pandas uses for its accessors.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {}


def provided(declaration: Callable[P, R]) -> Callable[P, R]:
    """Decorator for the lower layer's declared method (its body is `...`)."""
    signature = inspect.signature(declaration)
    key = declaration.__qualname__

    @functools.wraps(declaration)
    def method(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            implementation = _IMPLEMENTATIONS[key]
        except KeyError:
            raise RuntimeError(
                f"{key} is implemented by a layer of llm_widgets that is not imported: "
                f"`import llm_widgets` loads them all"
            ) from None
        return implementation(*bound.args, **bound.kwargs)

    method.__provided__ = signature  # type: ignore[attr-defined]
    return method


def provides(declaration: Callable[..., Any]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator for the higher layer: `fn` implements `declaration` (a `@provided` method), taking
    the same parameters by the same names."""
    signature = getattr(declaration, "__provided__", None)
    if signature is None:
        raise RuntimeError(f"{declaration.__qualname__} is not declared @provided")

    def register(fn: Callable[..., R]) -> Callable[..., R]:
        declared, given = list(signature.parameters), list(inspect.signature(fn).parameters)
        if declared[1:] != given[1:]:  # the first is the object itself, named as each side likes
            raise RuntimeError(
                f"{fn.__qualname__} must take the parameters of {declaration.__qualname__}: "
                f"{declared[1:]}; it takes {given[1:]}"
            )
        _IMPLEMENTATIONS[declaration.__qualname__] = fn
        return fn

    return register
