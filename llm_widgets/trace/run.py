"""Running a traced forward or generation: what `model.trace(...)` does, for every family of model."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError
from ..models import LanguageModel, ModelFacts
from ..models.devices import input_device
from ..models.plain import logits_of
from ..text import has_lone_surrogate
from .batch import TraceBatch, batch_rows, one_trace
from .decoder import DecoderRunner
from .masks import warn_spared_rows
from .plain import PlainRunner
from .plain import decoder_start as plain_start
from .runner import Request, Runner, held, refuse_unused_sampling
from .seq2seq import Seq2SeqRunner, decoder_start
from .settings import check_generation_settings
from .trace import Trace

SEED_MAX = 2**64 - 1  # torch.manual_seed takes no more


def prompt_ids(lm: LanguageModel, prompt: Any) -> torch.Tensor:
    """A string, a chat message list, or token ids -> 1-D LongTensor of ids."""
    tok = lm.tokenizer
    if isinstance(prompt, str):
        if not prompt:
            raise InputError("the prompt is empty: give some text, a chat message list or token ids")
        if has_lone_surrogate(prompt):
            raise InputError(
                "the prompt holds a lone surrogate (a character between U+D800 and U+DFFF on its own, as "
                "'\\ud800' in JSON): it is not text a tokenizer can read; remove it or pass token ids"
            )
        ids = tok(prompt, return_tensors="pt")["input_ids"][0]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        if not getattr(tok, "chat_template", None):
            raise InputError(f"{lm.name} has no chat template, so a message list cannot be formatted: pass a string")
        out = tok.apply_chat_template(list(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = out["input_ids"][0]
    elif isinstance(prompt, torch.Tensor) or (
        isinstance(prompt, (list, tuple)) and all(checks.is_int(i) for i in prompt)
    ):
        vocab = lm.facts.vocab_size
        if isinstance(prompt, torch.Tensor):
            if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
                raise InputError(
                    f"token ids must be integers; got a {prompt.dtype} tensor (did you pass embeddings or a mask?)"
                )
            if prompt.dim() not in (1, 2) or (prompt.dim() == 2 and prompt.shape[0] != 1):
                raise InputError(
                    f"token ids must be one sequence, shape [T] or [1, T] (or a batch, [B, T]); got "
                    f"shape {list(prompt.shape)}"
                )
            outside = prompt.numel() > 0 and (int(prompt.min()) < 0 or int(prompt.max()) >= vocab)
        else:  # a list is checked before it becomes a tensor: 2**70 does not fit an int64
            outside = any(i < 0 or i >= vocab for i in prompt)
        if outside:
            raise InputError(f"token ids must be between 0 and {vocab - 1} for {lm.name}")
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)  # [1, T]: a batch of one, as tokenizers return it
    else:
        raise InputError(
            f"prompt must be a string, a list of chat messages ({{'role': ..., 'content': ...}}) or token "
            f"ids; got {type(prompt).__name__}"
        )
    if ids.numel() == 0:
        raise InputError("the prompt is empty after tokenisation: give some text or token ids")
    return ids


@provides(LanguageModel.trace)
def run_trace(
    lm: LanguageModel,
    prompt,
    max_new_tokens,
    edits,
    seed,
    do_sample,
    keep_logits,
    capture,
    capture_device,
    capture_dtype,
    profile,
    **generation_kwargs,
) -> Trace | TraceBatch:
    """See LanguageModel.trace: every traced run, whatever the family of model, goes through here."""
    request = _request(
        lm,
        prompt,
        max_new_tokens=max_new_tokens,
        edits=edits,
        seed=seed,
        do_sample=do_sample,
        keep_logits=keep_logits,
        capture=capture,
        capture_device=capture_device,
        capture_dtype=capture_dtype,
        profile=profile,
        generation_kwargs=generation_kwargs,
    )
    runner = _runner_class(lm, request.facts)(request)  # the family's own checks and run state
    with held(lm.model, seed=request.generation["seed"]), runner.instrumented():
        runner.execute()
    if runner.spared_rows:
        warn_spared_rows(stacklevel=3)  # the user's call, past LanguageModel.trace's binding
    traces = runner.traces()
    if profile:
        for trace in traces:
            trace.profile()  # computed now, as asked
    return TraceBatch(traces, padding_side=runner.padding_side) if request.is_batch else traces[0]


def _runner_class(lm: LanguageModel, facts: ModelFacts) -> type[Runner]:
    if lm.plain:  # a plain PyTorch transformer: its own loop, hooks on nn.MultiheadAttention
        return PlainRunner
    if facts.kind == "seq2seq":  # the source runs through the encoder, the output is the decoder's
        return Seq2SeqRunner
    return DecoderRunner


def _request(
    lm: LanguageModel,
    prompt: Any,
    *,
    max_new_tokens: Any,
    edits: Any,
    seed: Any,
    do_sample: Any,
    keep_logits: Any,
    capture: Any,
    capture_device: Any,
    capture_dtype: Any,
    profile: Any,
    generation_kwargs: dict,
) -> Request:
    """The arguments every family takes, checked; the prompt turned into rows of ids."""
    facts = lm.facts
    if facts.n_heads == 0:
        raise InputError(
            f"{lm.name} ({facts.architecture}) has no attention heads; llm-widgets traces attention models"
        )
    checks.integer(max_new_tokens, "max_new_tokens", low=0)
    if seed is not None:
        checks.integer(seed, "seed", low=0, high=SEED_MAX, note=" (or None)")
    for value, name in (
        (do_sample, "do_sample"),
        (keep_logits, "keep_logits"),
        (capture, "capture"),
        (profile, "profile"),
    ):
        checks.flag(value, name)
    check_generation_settings(generation_kwargs)
    if not lm.plain:  # (a plain model's runner first refuses what its own loop does not take)
        refuse_unused_sampling(generation_kwargs, do_sample)
    if capture_device is not None:
        _check_capture_device(capture_device)
    if capture_dtype is not None and not (isinstance(capture_dtype, torch.dtype) and capture_dtype.is_floating_point):
        raise InputError(f"capture_dtype must be a floating torch dtype such as torch.float16; got {capture_dtype!r}")
    if max_new_tokens:
        _refuse_generation(lm, facts)
    batch = batch_rows(prompt)
    is_batch = batch is not None and not (isinstance(prompt, Mapping) and len(batch) == 1)
    rows = [prompt_ids(lm, p) for p in batch] if batch is not None else [prompt_ids(lm, prompt)]
    if do_sample and seed is None:
        seed = secrets.randbits(31)  # recorded, so a sampled run replays
    # JSON-able as it stands: check_generation_settings admitted only numbers, flags and token ids
    generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, **generation_kwargs}
    return Request(
        lm=lm,
        facts=facts,
        rows=rows,
        is_batch=is_batch,
        generation=generation,
        edits=edits,
        keep_logits=keep_logits,
        capture=capture,
        capture_device=capture_device,
        capture_dtype=capture_dtype,
        profile=profile,
    )


def _check_capture_device(device: Any) -> None:
    """A device the captured queries and keys can be kept on: real, and not "meta" (no values)."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"capture_device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r}") from None
    if where.type == "meta":
        raise InputError("capture_device='meta' keeps no values: the attention could not be shown; use 'cpu'")


def _refuse_generation(lm: LanguageModel, facts: ModelFacts) -> None:
    """A classifier or a masked model gives its answer in one pass: asked to generate, say so."""
    if facts.kind in ("classifier", "token_classifier"):
        what = "trace.label_probabilities" if facts.kind == "classifier" else "trace.token_labels"
        raise InputError(
            f"{lm.name} is a classifier: it gives class probabilities ({what}), not text; use max_new_tokens=0"
        )
    if facts.kind == "masked":
        raise InputError(f"{lm.name} is a masked (bidirectional) model: it does not generate, use max_new_tokens=0")


def fidelity(lm: LanguageModel, prompt: Any) -> float:
    """Max |logit difference| between the instrumented and the plain model on `prompt`, no edits:
    0.0 when capturing changes nothing (what the editor's badge shows)."""
    ids = prompt_ids(lm, prompt)
    traced = one_trace(lm.trace(ids, keep_logits=True), "fidelity")
    assert traced.logits is not None  # (kept, as asked)
    model = lm.model
    with held(model):
        device = input_device(model)
        if lm.plain:  # (an encoder-decoder's first step: its output's start token)
            start = [torch.tensor([[plain_start(lm)]], device=device)] if lm.kind == "seq2seq" else []
            return float((traced.logits - logits_of(model(ids[None].to(device), *start))[0].float().cpu()).abs().max())
        decoder = (
            {"decoder_input_ids": torch.tensor([[decoder_start(lm)]], device=device)} if lm.kind == "seq2seq" else {}
        )  # an encoder-decoder's first step: the decoder's start token
        plain = model(input_ids=ids[None].to(device), use_cache=False, **decoder).logits[0].float().cpu()
    return float((traced.logits - plain).abs().max())
