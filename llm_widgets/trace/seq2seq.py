"""Tracing an encoder-decoder (T5, BART, Marian, mBART, Pegasus, ...): what `model.trace(source)` does for them.

The trace's sequence is the source tokens, then the decoder's (its start token,
then what it generated): one position space for the three kinds of attention,
so edits and views name tokens the same way as for a decoder-only model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.modeling_outputs import BaseModelOutput

from ..errors import InputError
from ..models import LanguageModel
from ..models.compat import cache_kwargs, output_cache
from ..models.devices import input_device
from .attention import STACKS, AttentionStack, assembled, stack_offsets, stack_spans
from .capture import RunState, instrument, stack_modules
from .edits import validate_edits
from .record import make_record
from .runner import Request, Runner
from .trace import Trace, predictions


def stack_shapes(lm: LanguageModel) -> dict[str, tuple[int, int]]:
    """(layers, heads) of each stack, from its modules (BART's encoder and decoder may differ)."""
    shapes = {}
    for name, modules in stack_modules(lm.model).items():
        first = modules[0] if modules else None
        heads = getattr(first, "num_heads", None) or getattr(first, "n_heads", None) or lm.facts.n_heads
        shapes[name] = (len(modules), int(heads))
    if set(shapes) != set(STACKS) or not all(layers for layers, _ in shapes.values()):
        raise InputError(
            f"{lm.name} ({type(lm.model).__name__}) is an encoder-decoder whose encoder, decoder and "
            f"cross-attention modules could not all be found (found {shapes}); llm-widgets traces those "
            f"whose attention goes through transformers' AttentionInterface (BART, Marian, mBART, "
            f"Pegasus, and T5 in recent transformers releases)"
        )
    return shapes


def decoder_start(lm: LanguageModel) -> int:
    model = lm.model
    for source in (getattr(model, "generation_config", None), model.config):
        start = getattr(source, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    raise InputError(
        f"{lm.name} has no decoder_start_token_id (in its generation config or config): the decoder "
        f"cannot start; set model.generation_config.decoder_start_token_id"
    )


class Seq2SeqRunner(Runner):
    """One encoder-decoder run on one source: the encoder's pass, then the decoder's start token,
    its prompt if given (`decoder_prompt_ids`, a forced beginning) and `max_new_tokens` generated."""

    def __init__(self, request: Request):
        super().__init__(request)
        lm = self.lm
        if request.is_batch:
            raise InputError(
                f"{lm.name} is an encoder-decoder: trace one source text at a time (batches are for "
                f"decoder-only models)"
            )
        if lm.labels:
            raise InputError(
                f"{lm.name} is an encoder-decoder classifier ({type(self.model).__name__}); "
                f"llm-widgets traces encoder-decoders that generate (…ForConditionalGeneration) and "
                f"decoder-only or encoder classifiers"
            )
        self.shapes = stack_shapes(lm)
        self.ids = request.rows[0]
        self.n_source = len(self.ids)
        self.prefix = list(request.generation.get("decoder_prompt_ids", []))  # the decoder's, after its start
        if any(i >= lm.facts.vocab_size for i in self.prefix):
            raise InputError(f"decoder_prompt_ids must be between 0 and {lm.facts.vocab_size - 1} for {lm.name}")
        total = self.n_source + 1 + len(self.prefix) + request.max_new_tokens
        n_layers, n_heads = self.shapes["encoder"]
        self.edits = validate_edits(
            request.edits,
            n_layers=n_layers,
            n_heads=n_heads,
            sequence_length=total,
            stacks=self.shapes,
            model_name=lm.name,
            width=lm.facts.hidden_size,
        )
        for edit in self.edits:
            if getattr(edit, "stack", None) == "encoder" and any(
                stop > self.n_source for start, stop in getattr(edit, "keys", ())
            ):
                raise InputError(f"{edit!r}: the encoder attends over the source, positions 0 to {self.n_source - 1}")
        self.run = RunState(
            n_layers,
            n_heads,
            total,
            self.edits,
            capture=request.capture,
            capture_device=request.capture_device,
            capture_dtype=request.capture_dtype,
            offsets=stack_offsets(self.n_source),
            n_prompt=self.n_source + 1 + len(self.prefix),
        )
        self.start = decoder_start(lm)
        self.encoded: list = []  # the encoder's output, for the last token's step

    @contextmanager
    def instrumented(self) -> Iterator[None]:
        hook = self.model.get_encoder().register_forward_hook(lambda module, args, out: self.encoded.append(out))
        try:
            with instrument(self.model, self.run):
                yield
        finally:
            hook.remove()

    def execute(self) -> None:
        model, request = self.model, self.request
        device = input_device(model)
        source = self.ids[None].to(device)
        self.mask = torch.ones_like(source)
        start = torch.tensor([[self.start, *self.prefix]], device=device)
        if request.max_new_tokens == 0:
            out = model(input_ids=source, attention_mask=self.mask, decoder_input_ids=start, use_cache=False)
            self.decoded, self.step_logits = start, [out.logits[:, -1]]
            return
        out = model.generate(
            input_ids=source,
            attention_mask=self.mask,
            decoder_input_ids=start,
            max_new_tokens=request.max_new_tokens,
            do_sample=request.generation["do_sample"],
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=self.lm.pad_token_id,
            **request.settings,
        )
        self.decoded, self.step_logits = out.sequences, list(out.logits)
        if self.run.capture:  # generate never runs its last token through the model: one more step
            _last_token_step(model, self.decoded, self.encoded[0], self.mask, output_cache(out))

    def traces(self) -> list[Trace]:
        n_source, decoded = self.n_source, self.decoded
        spans = stack_spans(n_source, n_source + decoded.shape[1])
        stacks = {}
        for name in STACKS:
            (q0, q1), (k0, k1) = spans[name]
            n_layers, n_heads = self.shapes[name]
            layers = (
                assembled(self.run, name, n_layers, n_heads, q1 - q0, k1 - k0, type(self.model).__name__)
                if self.run.capture
                else None
            )
            stacks[name] = AttentionStack(
                name,
                n_layers=n_layers,
                n_heads=n_heads,
                queries=(q0, q1),
                keys=(k0, k1),
                layers=[layer and layer.row(0, slice(None), slice(None)) for layer in layers]
                if layers is not None
                else None,
                edits=self.edits,
                model_name=self.lm.name,
            )
        lead = 1 + len(self.prefix)  # the start token and the decoder's prompt
        generated = decoded[0, lead:].tolist()
        logits = [step[0] for step in self.step_logits[: max(1, len(generated))]]
        return [
            Trace(
                model=self.lm,
                input_ids=torch.cat([self.ids, decoded[0].cpu()]),
                n_prompt=n_source + lead,
                n_source=n_source,
                stacks=stacks,
                edits=self.edits,
                **predictions(logits, generated),
                logits=logits[0].float().cpu()[None] if self.request.keep_logits else None,
                record=make_record(self.lm, self.ids.tolist(), self.request.generation, self.edits, generated),
            )
        ]


def _last_token_step(model: torch.nn.Module, decoded: torch.Tensor, encoded, mask: torch.Tensor, cache) -> None:
    """The decoder's step on the last generated token (on the cache, or the whole output without one)."""
    encoder_outputs = encoded if isinstance(encoded, BaseModelOutput) else BaseModelOutput(last_hidden_state=encoded[0])
    if cache is not None:
        model(
            encoder_outputs=encoder_outputs,
            attention_mask=mask,
            decoder_input_ids=decoded[:, -1:],
            **cache_kwargs(model, cache),
        )
    else:
        model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=decoded, use_cache=False)
