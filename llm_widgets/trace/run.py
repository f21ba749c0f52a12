"""Running a traced forward or generation: what `model.trace(...)` does."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from .._provide import provides
from ..errors import InputError
from ..models import LanguageModel
from ..models.compat import (cache_kwargs, output_cache, takes_logits_to_keep,
                             takes_position_ids, unsupported_attention, uses_attention_registry)
from ..models.devices import input_device
from ..models.plain import logits_of
from ..models.modes import model_mode
from .capture import RunState, attention_layers, instrument
from .edits import validate_edits
from .locking import exclusive
from .masks import warn_spared_rows
from .record import make_record
from .settings import check_generation_settings
from .batch import TraceBatch, batch_rows, pad, positions
from .attention import SELF, AttentionStack, assembled
from .plain import decoder_start as plain_start
from .plain import trace_plain
from .seq2seq import decoder_start, trace_seq2seq
from .trace import Trace, predictions



def prompt_ids(lm: LanguageModel, prompt: Any) -> torch.Tensor:
    """A string, a chat message list, or token ids -> 1-D LongTensor of ids."""
    tok = lm.tokenizer
    if isinstance(prompt, str):
        if not prompt:
            raise InputError("the prompt is empty: give some text, a chat message list or token ids")
        ids = tok(prompt, return_tensors="pt")["input_ids"][0]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        if not getattr(tok, "chat_template", None):
            raise InputError(f"{lm.name} has no chat template, so a message list cannot be formatted: pass a string")
        out = tok.apply_chat_template(list(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = out["input_ids"][0]
    elif isinstance(prompt, torch.Tensor) or (
            isinstance(prompt, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)):
        if isinstance(prompt, torch.Tensor):
            if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
                raise InputError(f"token ids must be integers; got a {prompt.dtype} tensor (did you pass embeddings "
                                 f"or a mask?)")
            if prompt.dim() not in (1, 2) or (prompt.dim() == 2 and prompt.shape[0] != 1):
                raise InputError(f"token ids must be one sequence, shape [T] or [1, T] (or a batch, [B, T]); got "
                                 f"shape {list(prompt.shape)}")
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)  # [1, T]: a batch of one, as tokenizers return it
        vocab = lm.facts.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputError(f"token ids must be between 0 and {vocab - 1} for {lm.name}")
    else:
        raise InputError(f"prompt must be a string, a list of chat messages ({{'role': ..., 'content': ...}}) or token "
                         f"ids; got {type(prompt).__name__}")
    if ids.numel() == 0:
        raise InputError("the prompt is empty after tokenisation: give some text or token ids")
    return ids


@provides(LanguageModel, "trace")
def run_trace(lm: LanguageModel, prompt: Any, *, max_new_tokens: int = 0, edits=(), seed: int | None = None, do_sample: bool = False,
              keep_logits: bool = False, capture: bool = True, capture_device: str | torch.device | None = None,
              capture_dtype: torch.dtype | None = None, profile: bool = False, **generation_kwargs) -> Trace | TraceBatch:
    """See LanguageModel.trace. keep_logits keeps the prompt's logits [T, vocab] on the trace;
    capture=False skips keeping queries and keys (no attention views); capture_device moves
    them off the accelerator as they are captured (e.g. "cpu" for long contexts on a GPU) and
    capture_dtype stores them in a lower precision (half the memory of float32; the recomputed
    probabilities then differ from the run's by up to about 3e-3 with torch.float16 and 2e-2 with
    torch.bfloat16, as measured on SmolLM2 at 1,024 tokens);
    profile=True also profiles the run (trace.profile, an lw.Profile).
    Several prompts (a list of them, a 2-D id tensor, a tokenizer's padded output) run as one
    padded batch and give a `TraceBatch`, a Trace per row."""
    facts = lm.facts
    if facts.n_heads == 0:
        raise InputError(f"{lm.name} ({facts.architecture}) has no attention heads; llm-widgets traces attention models")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0; got {max_new_tokens!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(f"seed must be an integer >= 0 (or None); got {seed!r}")
    if not isinstance(do_sample, bool):
        raise InputError(f"do_sample must be True or False; got {do_sample!r}")
    check_generation_settings(generation_kwargs)
    if capture_dtype is not None and not (isinstance(capture_dtype, torch.dtype) and capture_dtype.is_floating_point):
        raise InputError(f"capture_dtype must be a floating torch dtype such as torch.float16; got {capture_dtype!r}")
    if facts.kind in ("classifier", "token_classifier") and max_new_tokens:
        what = "trace.label_probabilities" if facts.kind == "classifier" else "trace.token_labels"
        raise InputError(f"{lm.name} is a classifier: it gives class probabilities ({what}), not text; use "
                         f"max_new_tokens=0")
    if facts.kind == "masked" and max_new_tokens:
        raise InputError(f"{lm.name} is a masked (bidirectional) model: it does not generate, use max_new_tokens=0")
    batch = batch_rows(prompt)
    is_batch = batch is not None and not (isinstance(prompt, Mapping) and len(batch) == 1)
    rows = [prompt_ids(lm, p) for p in batch] if batch is not None else [prompt_ids(lm, prompt)]
    longest = max(len(ids) for ids in rows)
    total = longest + max_new_tokens
    if do_sample and seed is None:
        seed = secrets.randbits(31)  # recorded, so a sampled run replays
    # JSON-able as it stands: check_generation_settings admitted only numbers, flags and token ids
    generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, **generation_kwargs}
    if lm.plain:  # a plain PyTorch transformer: its own loop, hooks on nn.MultiheadAttention
        if is_batch:
            raise InputError(f"{lm.name} is a plain PyTorch model: trace one prompt at a time")
        if capture_device is not None or capture_dtype is not None or profile:
            raise InputError("capture_device, capture_dtype and profile are for transformers models")
        return trace_plain(lm, rows[0], generation, edits, keep_logits=keep_logits, capture=capture)
    if facts.kind == "seq2seq":  # an encoder-decoder: the source runs through the encoder, the output is the decoder's
        if is_batch:
            raise InputError(f"{lm.name} is an encoder-decoder: trace one source text at a time (batches are for "
                             f"decoder-only models)")
        trace = trace_seq2seq(lm, rows[0], generation, edits, keep_logits=keep_logits,
                              capture=capture, capture_device=capture_device, capture_dtype=capture_dtype)
        if profile:
            trace.profile  # noqa: B018 - computed now, as asked
        return trace
    if facts.context_length and total > facts.context_length:
        raise InputError(f"the prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) is {total} tokens, "
                         f"longer than the context of {lm.name} ({facts.context_length}); shorten one of them")
    edits = validate_edits(edits, n_layers=facts.n_layers, n_heads=facts.n_heads, sequence_length=total)
    if edits and is_batch:
        raise InputError("attention edits steer one prompt at a time (their positions are a prompt's own): trace the "
                         "row you want to steer on its own, e.g. model.trace(batch[i].record['prompt_ids'], edits=...)")
    supported = uses_attention_registry(lm.model)
    unsupported = unsupported_attention(facts.model_type)
    if unsupported:
        raise InputError(f"llm-widgets cannot trace {facts.architecture} (model_type {facts.model_type!r}) yet: "
                         f"{unsupported}")
    if edits and not supported:
        raise InputError(
            f"attention edits need a model whose attention goes through transformers' AttentionInterface; "
            f"{facts.architecture} (model_type {facts.model_type!r}) computes attention its own way. Viewing works "
            f"(through eager output_attentions); edits work on Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, GPT-2, BERT "
            f"and the other models that use the registry."
        )
    with_attention = attention_layers(lm.model) if supported else tuple(range(facts.n_layers))
    for edit in edits:
        named = [layer for layer in (getattr(edit, "layers", None) or [getattr(edit, "layer", None)])
                 if layer is not None and layer not in with_attention]
        if named:
            raise InputError(f"{edit!r} names layer {named[0]}, which has no attention in {facts.architecture} (a "
                             f"hybrid model: its other layers are linear attention or state space); its attention "
                             f"layers are {list(with_attention)}")

    model = lm.model
    device = input_device(model)
    left = facts.kind == "causal"  # batched generation appends on the right: padding goes left
    padded = pad(rows, lm.pad_token_id, left=left)
    shifted = left and padded.has_padding and takes_position_ids(model)  # right padding leaves positions as they are
    inputs = _Inputs(padded.input_ids.to(device), padded.attention_mask.to(device),
                     positions(padded.attention_mask).to(device) if shifted else None)
    run = RunState(facts.n_layers, facts.n_heads, padded.input_ids.shape[1] + max_new_tokens, edits,
                   capture=capture and supported, capture_device=capture_device, capture_dtype=capture_dtype)
    devices = [device] if device.type == "cuda" else []
    eager_attentions = None
    with exclusive(model), model_mode(model, training=False), torch.no_grad(), \
            torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        if supported:
            with instrument(model, run):
                sequence, step_logits, prompt_logits, cache = _forward_or_generate(
                    model, lm, inputs, max_new_tokens, do_sample, generation_kwargs, keep_logits)
                if run.capture and max_new_tokens:
                    _last_token_step(model, sequence, inputs, cache)
        else:
            sequence, step_logits, prompt_logits, _ = _forward_or_generate(
                model, lm, inputs, max_new_tokens, do_sample, generation_kwargs, keep_logits)
            eager_attentions = _eager_attentions(model, sequence, inputs) if capture else None
    if run.fully_masked_rows:
        warn_spared_rows(stacklevel=3)

    layers = assembled(run, SELF, facts.n_layers, facts.n_heads, sequence.shape[1], sequence.shape[1],
                       facts.architecture) if run.capture else None
    width = padded.input_ids.shape[1]
    stops = set(_eos_ids(lm, generation_kwargs)) if is_batch else set()
    listed = [ids.tolist() for ids in rows]
    traces = []
    for b, ids in enumerate(rows):
        start = padded.starts[b]
        prompt_end = start + len(ids)
        generated = sequence[b, width:].tolist()
        for i, token in enumerate(generated):  # a row that finished early was padded by generate after its eos
            if token in stops:
                generated = generated[:i + 1]
                break
        end = prompt_end + len(generated)
        if facts.kind == "causal":
            logits = [step[b] for step in step_logits[:max(1, len(generated))]]
        elif facts.kind == "classifier":  # one step: the classes
            logits = [step_logits[0][b]]
        else:
            logits = [step[b] for step in step_logits[start:prompt_end]]
        row_record = make_record(lm, listed[b], generation, edits, generated)
        if is_batch:  # each record its own lists: a user editing one changes no other
            row_record["batch"] = {"prompt_ids": [list(r) for r in listed], "row": b}
        n = end - start
        mine = slice(start, end)
        stack = AttentionStack(
            SELF, n_layers=facts.n_layers, n_heads=facts.n_heads, queries=(0, n), keys=(0, n),
            layers=[layer and layer.row(b, mine, mine) for layer in layers] if layers is not None else None,
            eager=[a[b, :, mine, mine] for a in eager_attentions] if eager_attentions is not None else None,
            edits=edits, attention_layers=with_attention, model_name=lm.name)
        traces.append(Trace(
            model=lm, input_ids=sequence[b, start:end].cpu(), n_prompt=len(ids), stacks={SELF: stack}, edits=edits,
            **predictions(logits, generated), logits=None if prompt_logits is None else prompt_logits[b].float().cpu() if facts.kind == "classifier"
            else prompt_logits[b, start:prompt_end].float().cpu(),
            record=row_record))
    if profile:
        for trace in traces:
            trace.profile  # noqa: B018 - computed now, as asked
    if not is_batch:
        return traces[0]
    return TraceBatch(traces, padding_side="left" if left else "right")


class _Inputs(NamedTuple):
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]: 0 on padding
    position_ids: torch.Tensor | None  # given only when left padding shifts them


def _eos_ids(lm: LanguageModel, generation_kwargs: dict) -> list[int]:
    eos = generation_kwargs.get("eos_token_id")
    if eos is None:
        eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _extended(inputs: _Inputs, length: int) -> dict[str, torch.Tensor]:
    """attention_mask (and position_ids, when padded) for the whole sequence of `length` tokens."""
    mask = inputs.attention_mask
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], dim=1)
    if inputs.position_ids is None:
        return {"attention_mask": mask}
    return {"attention_mask": mask, "position_ids": positions(mask)}


def _forward_or_generate(model: torch.nn.Module, lm: LanguageModel, inputs: _Inputs, max_new_tokens: int, do_sample: bool,
                         generation_kwargs: dict, keep_logits: bool):
    """(sequences [B, T + new], logits per step [B, vocab] (per position for masked models),
    the prompt's logits [B, T, vocab] when kept, the generation's cache)."""
    if max_new_tokens == 0:
        # a causal run needs only the last position's logits: [T, vocab] of them is GBs on a long prompt
        last_only = lm.facts.kind == "causal" and not keep_logits and takes_logits_to_keep(model)
        positions = {} if inputs.position_ids is None else {"position_ids": inputs.position_ids}
        out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False, **positions,
                    **({"logits_to_keep": 1} if last_only else {}))
        logits = out.logits
        kind = lm.facts.kind
        step_logits = [logits[:, -1]] if kind == "causal" else [logits] if kind == "classifier" else list(logits.unbind(1))
        return inputs.input_ids, step_logits, logits.float().cpu() if keep_logits else None, None
    kwargs = {"pad_token_id": lm.pad_token_id, **generation_kwargs}
    out = model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                         max_new_tokens=max_new_tokens, do_sample=do_sample, return_dict_in_generate=True,
                         output_logits=True, **kwargs)
    return out.sequences, list(out.logits), None, output_cache(out)


def _last_token_step(model: torch.nn.Module, sequence: torch.Tensor, inputs: _Inputs, cache) -> None:
    """generate() samples the last token but never runs it through the model: one
    more step (on the cache, or the whole sequence without one) gives its queries
    and keys, so every generated token has attention to show."""
    whole = _extended(inputs, sequence.shape[1])
    if cache is not None:
        last = {k: (v[:, -1:] if k == "position_ids" else v) for k, v in whole.items()}
        model(input_ids=sequence[:, -1:], **last, **cache_kwargs(model, cache))
    else:
        model(input_ids=sequence, use_cache=False, **whole)


def _eager_attentions(model: torch.nn.Module, sequence: torch.Tensor, inputs: _Inputs) -> list[torch.Tensor]:
    """For models outside the attention registry: one eager forward of the whole
    sequence with output_attentions (what other tools do for every model), [B, heads, T, T]
    per layer. Eager, because SDPA returns no weights (only a log line saying so)."""
    with model_mode(model, attn_implementation="eager"):
        out = model(input_ids=sequence, output_attentions=True, use_cache=False,
                    **_extended(inputs, sequence.shape[1]))
    if not out.attentions:
        raise InputError(f"{type(model).__name__} returned no attentions even with output_attentions=True; "
                         f"load it with attn_implementation='eager' to view its attention")
    return [a.detach() for a in out.attentions]


def fidelity(lm: LanguageModel, prompt: Any) -> float:
    """Max |logit difference| between the instrumented and the plain model on `prompt`, no edits:
    0.0 when capturing changes nothing (what the editor's badge shows)."""
    ids = prompt_ids(lm, prompt)
    traced = run_trace(lm, ids, keep_logits=True).logits
    model = lm.model
    with exclusive(model), model_mode(model, training=False), torch.no_grad():
        device = input_device(model)
        if lm.plain:  # (an encoder-decoder's first step: its output's start token)
            start = [torch.tensor([[plain_start(lm)]], device=device)] if lm.kind == "seq2seq" else []
            return float((traced - logits_of(model(ids[None].to(device), *start))[0].float().cpu()).abs().max())
        decoder = {"decoder_input_ids": torch.tensor([[decoder_start(lm)]], device=device)} \
            if lm.kind == "seq2seq" else {}  # an encoder-decoder's first step: the decoder's start token
        plain = model(input_ids=ids[None].to(device), use_cache=False, **decoder).logits[0].float().cpu()
    return float((traced - plain).abs().max())
