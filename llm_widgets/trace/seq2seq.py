"""Tracing an encoder-decoder (T5, BART, Marian, mBART, Pegasus, ...): what `model.trace(source)` does for them.

The trace's sequence is the source tokens, then the decoder's (its start token,
then what it generated): one position space for the three kinds of attention,
so edits and views name tokens the same way as for a decoder-only model.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput

from ..errors import InputError
from ..models import LanguageModel
from ..models.compat import cache_kwargs, output_cache
from ..models.devices import input_device
from ..models.modes import model_mode
from .attention import STACKS, AttentionStack, assembled, stack_offsets, stack_spans
from .capture import RunState, instrument, stack_modules
from .edits import validate_edits
from .locking import exclusive
from .masks import warn_spared_rows
from .record import make_record
from .trace import Trace, predictions


def stack_shapes(lm: LanguageModel) -> dict[str, tuple[int, int]]:
    """(layers, heads) of each stack, from its modules (BART's encoder and decoder may differ)."""
    shapes = {}
    for name, modules in stack_modules(lm.model).items():
        first = modules[0] if modules else None
        heads = getattr(first, "num_heads", None) or getattr(first, "n_heads", None) or lm.facts.n_heads
        shapes[name] = (len(modules), int(heads))
    if set(shapes) != set(STACKS) or not all(layers for layers, _ in shapes.values()):
        raise InputError(f"{lm.name} ({type(lm.model).__name__}) is an encoder-decoder whose encoder, decoder and "
                         f"cross-attention modules could not all be found (found {shapes}); llm-widgets traces those "
                         f"whose attention goes through transformers' AttentionInterface (BART, Marian, mBART, "
                         f"Pegasus, and T5 in recent transformers releases)")
    return shapes


def decoder_start(lm: LanguageModel) -> int:
    model = lm.model
    for source in (getattr(model, "generation_config", None), model.config):
        start = getattr(source, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    raise InputError(f"{lm.name} has no decoder_start_token_id (in its generation config or config): the decoder "
                     f"cannot start; set model.generation_config.decoder_start_token_id")


def trace_seq2seq(lm: LanguageModel, ids: torch.Tensor, generation: dict, edits, *, keep_logits: bool = False,
                  capture: bool = True, capture_device=None, capture_dtype=None) -> Trace:
    """One instrumented run of an encoder-decoder on one source: the encoder's pass, then the
    decoder's start token and `max_new_tokens` generated tokens."""
    model = lm.model
    if lm.labels:
        raise InputError(f"{lm.name} is an encoder-decoder classifier ({type(model).__name__}); llm-widgets traces "
                         f"encoder-decoders that generate (…ForConditionalGeneration) and decoder-only or encoder "
                         f"classifiers")
    shapes = stack_shapes(lm)
    n_source, max_new_tokens = len(ids), generation["max_new_tokens"]
    total = n_source + 1 + max_new_tokens
    n_layers, n_heads = shapes["encoder"]
    edits = validate_edits(edits, n_layers=n_layers, n_heads=n_heads, sequence_length=total, stacks=shapes)
    for edit in edits:
        if edit.stack == "encoder" and any(stop > n_source for start, stop in getattr(edit, "keys", ())):
            raise InputError(f"{edit!r}: the encoder attends over the source, positions 0 to {n_source - 1}")
    run = RunState(n_layers, n_heads, total, edits, capture=capture, capture_device=capture_device,
                   capture_dtype=capture_dtype, offsets=stack_offsets(n_source))
    device = input_device(model)
    source = ids[None].to(device)
    mask = torch.ones_like(source)
    start = torch.tensor([[decoder_start(lm)]], device=device)
    settings = {k: v for k, v in generation.items() if k not in ("max_new_tokens", "do_sample", "seed")}
    kept: list = []  # the encoder's output, for the last token's step
    devices = [device] if device.type == "cuda" else []
    with exclusive(model), model_mode(model, training=False), torch.no_grad(), \
            torch.random.fork_rng(devices=devices):
        if generation["seed"] is not None:
            torch.manual_seed(generation["seed"])
        hook = model.get_encoder().register_forward_hook(lambda module, args, out: kept.append(out))
        try:
            with instrument(model, run):
                if max_new_tokens == 0:
                    out = model(input_ids=source, attention_mask=mask, decoder_input_ids=start, use_cache=False)
                    decoded, step_logits = start, [out.logits[:, -1]]
                else:
                    out = model.generate(input_ids=source, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=generation["do_sample"], return_dict_in_generate=True,
                                         output_logits=True, pad_token_id=lm.pad_token_id, **settings)
                    decoded, step_logits = out.sequences, list(out.logits)
                    if run.capture:  # generate never runs its last token through the model: one more step
                        _last_token_step(model, decoded, kept[0], mask, output_cache(out))
        finally:
            hook.remove()
    if run.fully_masked_rows:
        warn_spared_rows(stacklevel=4)
    spans = stack_spans(n_source, n_source + decoded.shape[1])
    stacks = {}
    for name in STACKS:
        (q0, q1), (k0, k1) = spans[name]
        n_layers, n_heads = shapes[name]
        layers = assembled(run, name, n_layers, n_heads, q1 - q0, k1 - k0, type(model).__name__) \
            if run.capture else None
        stacks[name] = AttentionStack(name, n_layers=n_layers, n_heads=n_heads, queries=(q0, q1), keys=(k0, k1),
                                      layers=[layer and layer.row(0, slice(None), slice(None)) for layer in layers]
                                      if layers is not None else None, edits=edits, model_name=lm.name)
    generated = decoded[0, 1:].tolist()
    logits = [step[0] for step in step_logits[:max(1, len(generated))]]
    return Trace(model=lm, input_ids=torch.cat([ids, decoded[0].cpu()]), n_prompt=n_source + 1, n_source=n_source,
                 stacks=stacks, edits=edits, **predictions(logits, generated),
                 logits=logits[0].float().cpu()[None] if keep_logits else None,
                 record=make_record(lm, ids.tolist(), generation, edits, generated))


def _last_token_step(model: torch.nn.Module, decoded: torch.Tensor, encoded, mask: torch.Tensor, cache) -> None:
    """The decoder's step on the last generated token (on the cache, or the whole output without one)."""
    encoder_outputs = encoded if isinstance(encoded, BaseModelOutput) else BaseModelOutput(last_hidden_state=encoded[0])
    if cache is not None:
        model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=decoded[:, -1:],
              **cache_kwargs(model, cache))
    else:
        model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=decoded, use_cache=False)
