"""Argument checks, one of each kind, so every entry point refuses bad input the same way.

Each returns the value it accepted (normalised: a float for a number) and raises
`InputError` naming the argument, what it takes and what it got. `bool` is never an
integer here, although Python says it is: `max_new_tokens=True` is a mistake.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

from .errors import InputError, WrongTypeError


def _bounds(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"<= {high}")
    return " " + " and ".join(parts) if parts else ""


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def of_int_type(value: Any, name: str) -> int:
    """`value` if it is an int (not a bool), whatever its range (checked where it is used)."""
    if not is_int(value):
        raise WrongTypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    return value


def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None, note: str = "") -> int:
    """`value` if it is an int (not a bool) within [low, high]."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be an integer{_bounds(low, high)}{note}; got {value!r}")
    return value


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    noun: str = "a finite number",
    note: str = "",
) -> float:
    """`value` as a float if it is a finite real number (not a bool) within [low, high] ((low, high]
    with `low_open`); `noun` is what the message calls it, `note` what follows the bounds."""
    bad = (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (low is not None and (value < low or (low_open and value == low)))
        or (high is not None and value > high)
    )
    if bad:
        raise InputError(f"{name} must be {noun}{_bounds(low, high, low_open=low_open)}{note}; got {value!r}")
    return float(value)


def flag(value: Any, name: str) -> bool:
    """`value` if it is True or False (a truthy string is not)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False; got {value!r}")
    return value


def choice(value: Any, name: str, options: Iterable[Any]) -> Any:
    """`value` if it is one of `options`."""
    options = list(options)
    if isinstance(value, bool) or not any(value == o and type(value) is type(o) for o in options):
        raise InputError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def integers(values: Any, name: str, *, low: int | None = None, high: int | None = None) -> list[int]:
    """A non-empty list of integers within [low, high] (a single integer counts as a list of one)."""
    listed = [values] if is_int(values) else values
    if isinstance(listed, (str, bytes)) or not isinstance(listed, Iterable):
        raise InputError(f"{name} must be an integer or a list of integers; got {values!r}")
    listed = list(listed)
    if not listed:
        raise InputError(f"{name} must name at least one integer; got {values!r}")
    return [integer(v, f"each of {name}", low=low, high=high) for v in listed]


def fits_context(prompt_tokens: int, max_new_tokens: int, context: int | None, model_name: str) -> None:
    """Refuse a prompt and generation longer than the model's context (None: no limit known)."""
    total = prompt_tokens + max_new_tokens
    if context and total > context:
        raise InputError(
            f"the prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) is {total} tokens, "
            f"longer than the context of {model_name} ({context}); shorten one of them"
        )


def folder_exists(path: Any, what: str) -> None:
    """Refuse to write `path` into a folder that is not there, naming it (the error a writer raises
    otherwise may name a temporary file of its own)."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(
            f"cannot save {what} as {str(path)!r}: the folder {str(folder)!r} does not exist; "
            f"create it first (Path({str(folder)!r}).mkdir(parents=True))"
        )
