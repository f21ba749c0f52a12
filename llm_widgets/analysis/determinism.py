"""`lw.determinism(model, prompt)`: does this generation come out the same run again, in a batch,
under another attention implementation, in float32? For each: whether the tokens are identical
and where they first differ, and the largest difference of the logits along the first run's
tokens (teacher-forced, so a difference is read where it starts, not after the texts part)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.devices import input_device
from ..models.modes import model_mode
from ..text import printable
from ..trace import Trace, TraceBatch
from ..trace.runner import held

IMPLEMENTATIONS = ("sdpa", "eager")
OTHER_PROMPT = "Hello"  # the batch's other row: shorter, so the checked row is not padded


@dataclass
class Determinism:
    """The first run (`baseline`: alone, the model's attention implementation and dtype) against
    each other setting: a row per setting with same_tokens, first_difference (the first generated
    token that differs, None), max_logit_difference and identical_logits (exactly equal)."""

    model: str
    baseline: str
    tokens: list[int]
    sampled: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Tokens and logits exactly the same under every setting."""
        return all(row["same_tokens"] and row["identical_logits"] for row in self.rows)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __repr__(self) -> str:
        parts = []
        for row in self.rows:
            tokens = "same tokens" if row["same_tokens"] else f"tokens differ from {row['first_difference']}"
            parts.append(f"{row['setting']}: {tokens}, logits max |diff| {row['max_logit_difference']:.2g}")
        return f"Determinism({printable(self.model)}, {self.baseline} vs " + "; ".join(parts) + ")"


def _teacher_forced(lm: LanguageModel, ids: torch.Tensor, n_prompt: int, other: torch.Tensor | None = None):
    """Float32 logits [generated, vocab] along `ids`; with `other`, run beside it in one batch
    (`other` left-padded to the same length, its own positions)."""
    model = lm.model
    device = input_device(model)
    batch = ids[None]
    mask = torch.ones_like(batch)
    if other is not None:
        pad = len(ids) - len(other)
        other_row = torch.cat([torch.zeros(pad, dtype=ids.dtype), other])
        batch = torch.stack([ids, other_row])
        mask = torch.stack([torch.ones_like(ids), (torch.arange(len(ids)) >= pad).long()])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with held(model):
        out = model(
            input_ids=batch.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
        )
    return out.logits[0, n_prompt - 1 : len(ids) - 1].float().cpu()


def _row(setting: str, base: Trace, tokens: list[int], base_logits, logits) -> dict[str, Any]:
    first = next((i for i, (x, y) in enumerate(zip(base.generated_ids, tokens)) if x != y), None)
    if first is None and len(tokens) != len(base.generated_ids):
        first = min(len(tokens), len(base.generated_ids))
    diff = float((logits - base_logits).abs().max()) if base_logits.numel() else 0.0
    return {
        "setting": setting,
        "same_tokens": first is None,
        "first_difference": first,
        "max_logit_difference": diff,
        "identical_logits": diff == 0.0,
    }


def determinism(
    model: LanguageModel,
    prompt: Any,
    max_new_tokens: int = 16,
    *,
    do_sample: bool = False,
    seed: int | None = None,
    other_prompt: str = OTHER_PROMPT,
) -> Determinism:
    """The same greedy (or seeded, sampled) generation run again, in a batch beside `other_prompt`,
    with each other attention implementation and (for a model not in float32) a float32 copy."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"determinism takes an lw.LanguageModel; got {type(model).__name__}")
    if model.plain or model.kind != "causal":
        raise InputError(f"determinism checks causal Hugging Face language models; {model.name} is {model.kind}")
    checks.integer(max_new_tokens, "max_new_tokens", low=1)
    checks.flag(do_sample, "do_sample")
    if do_sample and seed is None:
        raise InputError("a sampled run is compared with its seed: give seed= (any integer)")

    def run(lm: LanguageModel, prompts: Any = prompt) -> Trace | TraceBatch:
        return lm.trace(prompts, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed, capture=False)

    base = run(model)
    assert isinstance(base, Trace)
    ids, n = base.input_ids, base.n_prompt
    impl = model.facts.attn_implementation
    result = Determinism(model.name, f"alone, {impl}, {model.facts.dtype}", base.generated_ids, do_sample)
    base_logits = _teacher_forced(model, ids, n)
    again = run(model)
    assert isinstance(again, Trace)
    result.rows.append(_row("again", base, again.generated_ids, base_logits, _teacher_forced(model, ids, n)))
    _in_a_batch(result, model, base, base_logits, other_prompt, run)
    for other in (i for i in IMPLEMENTATIONS if i != impl):
        with model_mode(model.model, attn_implementation=other):
            trace = run(model)
            assert isinstance(trace, Trace)
            logits = _teacher_forced(model, ids, n)
        result.rows.append(_row(other, base, trace.generated_ids, base_logits, logits))
    if model.facts.dtype != "float32":
        wide = LanguageModel(copy.deepcopy(model.model).float(), model.tokenizer, name=f"{model.name} float32")
        trace = run(wide)
        assert isinstance(trace, Trace)
        result.rows.append(_row("float32", base, trace.generated_ids, base_logits, _teacher_forced(wide, ids, n)))
    else:
        result.notes.append("the model runs in float32: no other dtype to compare")
    return result


def _in_a_batch(result: Determinism, lm: LanguageModel, base: Trace, base_logits, other_prompt: str, run) -> None:
    if not isinstance(other_prompt, str) or not other_prompt:
        raise InputError(f"other_prompt must be some text, shorter than the prompt; got {other_prompt!r}")
    prompt = lm.tokenizer.decode(base.input_ids[: base.n_prompt].tolist())
    other = lm.tokenizer(other_prompt, return_tensors="pt")["input_ids"][0]
    if len(other) >= base.n_prompt:
        result.notes.append(
            f"other_prompt is not shorter than the prompt ({len(other)} tokens): the batch check is left out"
        )
        return
    if result.sampled:
        result.notes.append(
            "in a batch, generate draws every row's token from one random generator: the same seed draws other "
            "tokens there whatever the numbers (lw.sample_tree gives each row its own)"
        )
    batch = run(lm, [prompt, other_prompt])
    assert isinstance(batch, TraceBatch)
    logits = _teacher_forced(lm, base.input_ids, base.n_prompt, other)
    result.rows.append(_row("in a batch", base, batch[0].generated_ids, base_logits, logits))
