"""The generation settings a trace accepts, and so a run record may carry.

Records are shared (the editor's "download record" button), and `replay` runs
them: a setting passed through to `generate` unchecked could make transformers
import and run code (`custom_generate` with `trust_remote_code`). So only the
settings below are accepted, each checked by type and range, on the way into a
trace and again when a record is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import checks
from ..errors import InputError

RECORD_SCHEMA = 1  # the layout of Trace.record; replay refuses other versions


def _number(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        checks.number(value, f"generation setting {name}", low=low, high=high, low_open=low_open, noun="a number")
        return value  # as given: the record keeps what the user wrote

    return check


def _integer(low: int) -> Callable[[str, Any], int]:
    return lambda name, value: checks.integer(value, f"generation setting {name}", low=low)


def _flag(name: str, value: Any) -> bool:
    return checks.flag(value, f"generation setting {name}")


def _token_ids(name: str, value: Any) -> Any:
    ids = value if isinstance(value, list) else [value]
    if value is None or not ids or any(not checks.is_int(i) or i < 0 for i in ids):
        raise InputError(f"generation setting {name} must be a token id or a list of token ids; got {value!r}")
    return value


def _id_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value or any(not checks.is_int(i) or i < 0 for i in value):
        raise InputError(f"generation setting {name} must be a non-empty list of token ids; got {value!r}")
    return value


def _one(name: str, value: Any) -> int:
    if not checks.is_int(value) or value != 1:
        what = "beam search" if name == "num_beams" else "several returned sequences"
        raise InputError(
            f"{name}={value!r}: {what} is not traced (a trace follows one sequence token by token); "
            f"trace each candidate you want to see, e.g. with do_sample=True and different seeds"
        )
    return value


GENERATION_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "temperature": _number(1e-3),  # (a smaller one overflows the logits it divides)
    "top_k": _integer(0),
    "top_p": _number(0, 1, low_open=True),
    "min_p": _number(0, 1),
    "typical_p": _number(0, 1, low_open=True),
    "repetition_penalty": _number(0, low_open=True),
    "no_repeat_ngram_size": _integer(0),
    "min_new_tokens": _integer(0),
    "use_cache": _flag,
    "eos_token_id": _token_ids,
    "pad_token_id": _integer(0),
    "num_beams": _one,
    "num_return_sequences": _one,
    # an encoder-decoder's decoder begins with these after its start token (a forced prefix)
    "decoder_prompt_ids": _id_list,
}
# settings that would load or run code, or hand generate objects a record cannot hold
CODE_SETTINGS = (
    "custom_generate",
    "trust_remote_code",
    "assistant_model",
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "streamer",
    "generation_config",
    "synced_gpus",
    "assistant_tokenizer",
    "tokenizer",
)


def check_generation_settings(settings: dict[str, Any], where: str = "trace") -> dict[str, Any]:
    """The settings, each checked; a ValueError names any that is refused and why."""
    for name, value in settings.items():
        if name in CODE_SETTINGS:
            raise InputError(
                f"{where}: the generation setting {name!r} is refused: it would let a run (or a shared "
                f"record) load or run code or objects beyond the model's own"
            )
        if name not in GENERATION_SETTINGS:
            raise InputError(
                f"{where}: unknown generation setting {name!r}; a trace takes {', '.join(sorted(GENERATION_SETTINGS))}"
            )
        GENERATION_SETTINGS[name](name, value)
    return settings
