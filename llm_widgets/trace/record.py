"""Run records: what a trace needs to be run again, JSON-able, and `replay`."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import transformers

from .._version import __version__
from ..models import LanguageModel, load_model
from .edits import edit_from_dict


def make_record(lm: LanguageModel, prompt_ids: list[int], generation: dict, edits: tuple,
                output_ids: list[int]) -> dict[str, Any]:
    """The record of one run: versions, the model and where its weights came from, the
    prompt's ids, the generation settings (with the seed), the edits and the output ids."""
    facts = lm.facts
    return {
        "llm_widgets": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": {"name": lm.name, "source": {k: str(v) for k, v in lm.source.items()},
                  "architecture": facts.architecture, "dtype": facts.dtype, "device": facts.device,
                  "attn_implementation": facts.attn_implementation},
        "prompt_ids": prompt_ids,
        "generation": generation,
        "edits": [e.to_dict() for e in edits],
        "output_ids": output_ids,
    }


def replay(record: dict, model: LanguageModel | None = None, *, check: bool = True):
    """Run again what `record` (a `Trace.record`) describes; with check=True, raise if the tokens differ.
    Without `model`, the recorded one is loaded (bundled name, local path or hub id)."""
    if model is None:
        source = record["model"].get("source", {})
        model = load_model(source.get("bundled") or source.get("path") or record["model"]["name"])
    weights = record["model"].get("source", {}).get("weights_sha256")
    if weights and model.source.get("weights_sha256") and weights != model.source["weights_sha256"]:
        warnings.warn("the model's weights differ from the recorded ones (weights_sha256): replay may diverge",
                      stacklevel=2)
    generation = dict(record["generation"])
    trace = model.trace(record["prompt_ids"], edits=[edit_from_dict(e) for e in record["edits"]],
                        max_new_tokens=generation.pop("max_new_tokens"), seed=generation.pop("seed"),
                        do_sample=generation.pop("do_sample"), **generation)
    if check and trace.generated_ids != record["output_ids"]:
        raise RuntimeError(f"replay produced different tokens: {trace.generated_ids} instead of the recorded "
                           f"{record['output_ids']} (different hardware, dtype or library versions can do this)")
    return trace
