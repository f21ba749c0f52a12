"""Methods that the public API puts on a lower layer's object but a higher layer implements.

`model.trace(...)` lives on `LanguageModel` (models/) but runs the engine
(trace/); `trace.attribute(...)` lives on `Trace` (trace/) but runs an
analysis (analysis/). The lower class declares the method, with its signature
and docstring; the higher layer registers the implementation when it is
imported (`import llm_widgets` imports every layer). So no lower layer imports
a higher one, and readers and editors still see every method where users call
it: the inversion pandas uses for its accessors.
"""

from __future__ import annotations

from typing import Any, Callable

_IMPLEMENTATIONS: dict[tuple[str, str], Callable[..., Any]] = {}


def provides(owner: type, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for the higher layer: `fn` implements `owner.method`."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _IMPLEMENTATIONS[(owner.__qualname__, method)] = fn
        return fn

    return register


def implementation(owner: type, method: str) -> Callable[..., Any]:
    """For the lower layer's declared method: the registered implementation."""
    try:
        return _IMPLEMENTATIONS[(owner.__qualname__, method)]
    except KeyError:
        raise RuntimeError(f"{owner.__name__}.{method} is implemented by a layer of llm_widgets that is not "
                           f"imported: `import llm_widgets` loads them all") from None
