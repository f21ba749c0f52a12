"""Run records: what a trace needs to be run again, JSON-able, and `replay`."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import InvalidVersion, Version

from .. import checks
from .._version import __version__
from ..errors import InputError, ReplayMismatchError, WrongTypeError
from ..models import LanguageModel, load_model
from .batch import TraceBatch
from .edits import edit_from_dict
from .settings import RECORD_SCHEMA, check_generation_settings

RECORD_KEYS = {
    "schema",
    "llm_widgets",
    "torch",
    "transformers",
    "model",
    "prompt_ids",
    "generation",
    "edits",
    "output_ids",
    "batch",
}  # "batch": a row of a batched run ({"prompt_ids": every row's, "row": i})


MODEL_KEYS = {"name", "source", "architecture", "dtype", "device", "attn_implementation"}  # a record's "model"


def make_record(
    lm: LanguageModel, prompt_ids: list[int], generation: dict, edits: tuple, output_ids: list[int]
) -> dict[str, Any]:
    """The record of one run: versions, the model and where its weights came from, the
    prompt's ids, the generation settings (with the seed), the edits and the output ids."""
    facts = lm.facts
    return {
        "schema": RECORD_SCHEMA,
        "llm_widgets": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": {
            "name": _shareable(lm.name),
            "source": {("folder" if k == "path" else k): _shareable(str(v)) for k, v in lm.source.items()},
            "architecture": facts.architecture,
            "dtype": facts.dtype,
            "device": facts.device,
            "attn_implementation": facts.attn_implementation,
        },
        "prompt_ids": prompt_ids,
        "generation": generation,
        "edits": [e.to_dict() for e in edits],
        "output_ids": output_ids,
    }


@functools.lru_cache(maxsize=256)  # (a file system look per name, not per run)
def _shareable(name: str) -> str:
    """A model's name or source as a record keeps it: a local folder by its own name only (records
    are shared: the sender's file layout stays theirs); a bundled name or a hub id as it is."""
    path = Path(name)
    return path.name if (path.is_absolute() or len(path.parts) > 1) and path.exists() else name


def check_record(record: Any) -> dict:
    """A record read from elsewhere, checked key by key before anything runs: a ValueError
    names the key that is missing, of the wrong type, unknown, or refused."""

    def bad(message: str) -> InputError:
        return InputError(f"not a run record llm-widgets can replay: {message}")

    if not isinstance(record, dict):
        raise bad(f"expected a dict (Trace.record, or its JSON); got {type(record).__name__}")
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown}; a record has {sorted(RECORD_KEYS)}")
    schema = record.get("schema", RECORD_SCHEMA)  # records of 0.1.0 had no schema key: the same layout
    if schema != RECORD_SCHEMA or isinstance(schema, bool):
        raise bad(
            f"schema {schema!r} is not one this version reads ({RECORD_SCHEMA}); replay it with the "
            f"llm-widgets version that wrote it ({record.get('llm_widgets', 'unknown')})"
        )
    made_by = record.get("llm_widgets")
    if made_by is not None:
        try:
            newer = Version(str(made_by)) > Version(__version__)
        except InvalidVersion:
            raise bad(f"'llm_widgets' version {made_by!r} is not a version number") from None
        if newer:
            raise bad(f"it was written by llm-widgets {made_by}, newer than this one ({__version__}): upgrade")
    for key in ("model", "prompt_ids", "generation", "edits", "output_ids"):
        if key not in record:
            raise bad(f"the key {key!r} is missing")
    model = record["model"]
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("name"), str)
        or not isinstance(model.get("source", {}), dict)
    ):
        raise bad("'model' must be a dict with a 'name' string (and a 'source' dict)")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown} in 'model'; it has {sorted(MODEL_KEYS)}")
    for key in ("prompt_ids", "output_ids"):
        if not _id_list(record[key]):
            raise bad(f"{key!r} must be a list of token ids (integers); got {type(record[key]).__name__}")
    if not record["prompt_ids"]:
        raise bad("'prompt_ids' is empty")
    generation = record["generation"]
    if not isinstance(generation, dict):
        raise bad(f"'generation' must be a dict; got {type(generation).__name__}")
    for key in ("max_new_tokens", "do_sample", "seed"):
        if key not in generation:
            raise bad(f"'generation' has no {key!r}")
    if generation["do_sample"] is True and generation["seed"] is None:
        raise bad("it is of a sampled run ('do_sample': true) without its 'seed': it cannot be run again exactly")
    rest = {k: v for k, v in generation.items() if k not in ("max_new_tokens", "do_sample", "seed")}
    check_generation_settings(rest, where="replay")
    if not isinstance(record["edits"], list):
        raise bad("'edits' must be a list")
    if record.get("batch") is not None:
        _check_batch(record, bad)
    return record


def _check_batch(record: dict, bad: Callable[[str], InputError]) -> None:
    """A batch row's record: every row's ids, and which row it is."""
    batch = record["batch"]
    rows, row = (batch.get("prompt_ids"), batch.get("row")) if isinstance(batch, dict) else (None, None)
    if (
        not isinstance(batch, dict)
        or set(batch) != {"prompt_ids", "row"}
        or not isinstance(rows, list)
        or not rows
        or not all(_id_list(r) and r for r in rows)
    ):
        raise bad("'batch' must be {'prompt_ids': a list of token id lists, 'row': an index into it}")
    if not checks.is_int(row) or not 0 <= row < len(rows) or rows[row] != record["prompt_ids"]:
        raise bad(f"'batch' row {row!r} is not the index of this record's prompt_ids among the batch's rows")


def _id_list(ids: Any) -> bool:
    return isinstance(ids, list) and all(checks.is_int(i) for i in ids)


def replay(record: dict, model: LanguageModel | None = None, *, check: bool = True):
    """Run again what `record` (a `Trace.record`) describes; with check=True, raise if the tokens differ.
    A row of a batch runs with its whole batch again, and its row's trace is returned.
    Without `model`, the recorded one is loaded (bundled name, local path or hub id; never with
    remote code). The record is checked first: only known generation settings are passed on."""
    record = check_record(record)
    edits = [edit_from_dict(e) for e in record["edits"]]
    if model is not None and not isinstance(model, LanguageModel):
        raise WrongTypeError(
            f"replay's model must be an lw.LanguageModel (or None to load the recorded one); got {type(model).__name__}"
        )
    recorded_architecture = record["model"].get("architecture")
    if model is not None and recorded_architecture and recorded_architecture != model.facts.architecture:
        raise InputError(
            f"this record is of a {recorded_architecture} ({record['model']['name']!r}); the model "
            f"given is a {model.facts.architecture} ({model.name!r}): pass the recorded model, or "
            f"model=None to load it"
        )
    if model is None:
        source = record["model"].get("source", {})
        if "folder" in source and "bundled" not in source:
            raise InputError(
                f"this record's model was loaded from a local folder ({source['folder']!r}, its path not "
                f"recorded, as records are shared): load it and pass it, lw.replay(record, model)"
            )
        model = load_model(source.get("bundled") or source.get("path") or record["model"]["name"])
    weights = record["model"].get("source", {}).get("weights_sha256")
    if weights and model.source.get("weights_sha256") and weights != model.source["weights_sha256"]:
        warnings.warn(
            "the model's weights differ from the recorded ones (weights_sha256): replay may diverge", stacklevel=2
        )
    generation = dict(record["generation"])
    batch = record.get("batch")  # a row of a batch runs with its batch: padding can change the last bits
    trace = model.trace(
        batch["prompt_ids"] if batch else record["prompt_ids"],
        edits=edits,
        max_new_tokens=generation.pop("max_new_tokens"),
        seed=generation.pop("seed"),
        do_sample=generation.pop("do_sample"),
        **generation,
    )
    if isinstance(trace, TraceBatch):  # (a record of a batch's row: check_record saw its "batch")
        trace = trace[record["batch"]["row"]]
    if check and trace.generated_ids != record["output_ids"]:
        recorded = record["model"]["name"]
        why = (
            f"the record is of {recorded!r}, this model is {_shareable(model.name)!r}: another model (or another "
            f"checkpoint of one architecture) generates otherwise"
            if recorded != _shareable(model.name)
            else "different hardware, dtype or library versions can do this"
        )
        raise ReplayMismatchError(
            f"replay produced different tokens: {trace.generated_ids} instead of the recorded "
            f"{record['output_ids']} ({why})"
        )
    return trace
