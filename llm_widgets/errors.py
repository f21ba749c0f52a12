"""The errors llm-widgets raises on purpose, so callers can catch ours and only ours.

    try:
        model.trace(prompt, edits=edits)
    except lw.LLMWidgetsError as error:   # bad input we named, a busy model, ...
        ...

Each also derives from the built-in callers expect (ValueError, TypeError,
TimeoutError), so `except ValueError` keeps working.
"""


class LLMWidgetsError(Exception):
    """Base of every error llm-widgets raises itself."""


class InputError(LLMWidgetsError, ValueError):
    """A value out of range, malformed, or refused (the message names it and what is allowed)."""


class WrongTypeError(LLMWidgetsError, TypeError):
    """An argument of the wrong type (the message names what was given and what is taken)."""


class ModelBusyError(LLMWidgetsError, TimeoutError):
    """Another run held the model for longer than the caller would wait."""


class ReplayMismatchError(LLMWidgetsError, RuntimeError):
    """A replayed run produced other tokens than its record says."""
