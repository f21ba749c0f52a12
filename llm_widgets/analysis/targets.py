"""Target and contrast tokens as users give them: text (" Paris") or an id."""

from __future__ import annotations

import warnings
from typing import Any

from .. import checks
from ..errors import InputError


def first_token_id(tokenizer: Any, token: Any, what: str, notes: list[str], vocab_size: int) -> int:
    """The id of `token`. Text that is several tokens: its first token is used (the one the model
    must choose first), with a warning and a note saying so."""
    if checks.is_int(token):
        if not 0 <= token < vocab_size:
            raise InputError(f"{what} id {token} is outside the vocabulary (0 to {vocab_size - 1})")
        return token
    if not isinstance(token, str) or not token:
        raise InputError(f"give the {what} as text (e.g. ' Paris', mind the space) or as a token id; got {token!r}")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if not ids:
        raise InputError(f"{what} {token!r} is no token at all: give a word, e.g. ' Paris' (mind the space)")
    if len(ids) > 1:
        pieces = tokenizer.batch_decode([[i] for i in ids])
        message = (
            f"{what} {token!r} is {len(ids)} tokens {pieces}; using its first token {pieces[0]!r}, "
            f"the one the model must choose first"
        )
        notes.append(message)
        warnings.warn(message, stacklevel=4)
    return ids[0]
