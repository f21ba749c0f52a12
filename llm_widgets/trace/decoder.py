"""The runner of a transformers decoder-only model, a masked model or a classifier: one prompt
or a padded batch, a forward or `generate`, through our attention function in transformers'
registry (or, for models outside the registry, an eager forward with output_attentions)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch

from .. import checks
from ..errors import InputError
from ..models.compat import (
    cache_kwargs,
    output_cache,
    takes_logits_to_keep,
    takes_position_ids,
    unsupported_attention,
    uses_attention_registry,
)
from ..models.devices import input_device
from ..models.modes import model_mode
from .attention import SELF, AttentionStack, assembled
from .batch import pad, positions
from .capture import RunState, attention_layers, instrument, unshowable
from .edits import AblateMLP, SteerResidual, validate_edits
from .record import make_record
from .runner import Request, Runner
from .trace import Trace, predictions


class DecoderRunner(Runner):
    def __init__(self, request: Request):
        super().__init__(request)
        if "decoder_prompt_ids" in request.generation:
            raise InputError(
                f"decoder_prompt_ids begins an encoder-decoder's decoder; {self.lm.name} is {request.facts.kind}: "
                f"put those tokens at the end of the prompt"
            )
        facts, total = request.facts, max(len(ids) for ids in request.rows) + request.max_new_tokens
        checks.fits_context(total - request.max_new_tokens, request.max_new_tokens, facts.context_length, self.lm.name)
        self.edits = validate_edits(
            request.edits,
            n_layers=facts.n_layers,
            n_heads=facts.n_heads,
            sequence_length=total,
            model_name=self.lm.name,
            width=facts.hidden_size,
        )
        self.supported = uses_attention_registry(self.model)
        self._refuse_edits_it_cannot_apply()
        self.left = facts.kind == "causal"  # batched generation appends on the right: padding goes left
        self.padding_side = "left" if self.left else "right"
        self.padded = pad(request.rows, self.lm.pad_token_id, left=self.left)
        # right padding leaves positions as they are; left padding shifts them
        shifted = self.left and self.padded.has_padding and takes_position_ids(self.model)
        device = input_device(self.model)
        self.inputs = _Inputs(
            self.padded.input_ids.to(device),
            self.padded.attention_mask.to(device),
            positions(self.padded.attention_mask).to(device) if shifted else None,
        )
        self.run = RunState(
            facts.n_layers,
            facts.n_heads,
            self.padded.input_ids.shape[1] + request.max_new_tokens,
            self.edits,
            capture=request.capture and self.supported,
            capture_device=request.capture_device,
            capture_dtype=request.capture_dtype,
            n_prompt=self.padded.input_ids.shape[1],
        )

    def _refuse_edits_it_cannot_apply(self) -> None:
        facts, edits = self.request.facts, self.edits
        if edits and self.request.is_batch:
            raise InputError(
                "attention edits steer one prompt at a time (their positions are a prompt's own): "
                "trace the row you want to steer on its own, e.g. "
                "model.trace(batch[i].record['prompt_ids'], edits=...)"
            )
        unsupported = unsupported_attention(facts.model_type)
        if unsupported:
            raise InputError(
                f"llm-widgets cannot trace {facts.architecture} (model_type {facts.model_type!r}) yet: {unsupported}"
            )
        if edits and not self.supported:
            raise InputError(
                f"attention edits need a model whose attention goes through transformers' AttentionInterface; "
                f"{facts.architecture} (model_type {facts.model_type!r}) computes attention its own way. Viewing "
                f"works (through eager output_attentions); edits work on Llama, Mistral, Qwen2/3, Gemma 1-3, "
                f"Phi-3, GPT-2, BERT and the other models that use the registry."
            )
        reason = unshowable(self.model, f"{facts.architecture} as configured") if self.supported else None
        if reason:
            raise InputError(f"llm-widgets cannot trace this model: {reason}")
        self.with_attention = attention_layers(self.model) if self.supported else tuple(range(facts.n_layers))
        for edit in (e for e in edits if not isinstance(e, (SteerResidual, AblateMLP))):  # (those name blocks)
            named = [
                layer
                for layer in (getattr(edit, "layers", None) or [getattr(edit, "layer", None)])
                if layer is not None and layer not in self.with_attention
            ]
            if named:
                raise InputError(
                    f"{edit!r} names layer {named[0]}, which has no attention in {facts.architecture} "
                    f"(a hybrid model: its other layers are linear attention or state space); its "
                    f"attention layers are {list(self.with_attention)}"
                )

    def instrumented(self) -> AbstractContextManager[Any]:
        return instrument(self.model, self.run) if self.supported else nullcontext()

    def execute(self) -> None:
        self.sequence, self.step_logits, self.prompt_logits, cache = self._forward_or_generate()
        self.eager = None
        if self.supported and self.run.capture and self.request.max_new_tokens:
            self._last_token_step(cache)
        elif not self.supported and self.request.capture:
            self.eager = self._eager_attentions()

    def traces(self) -> list[Trace]:
        facts, n = self.request.facts, self.sequence.shape[1]
        self.layers = (
            assembled(self.run, SELF, facts.n_layers, facts.n_heads, n, n, facts.architecture)
            if self.run.capture
            else None
        )
        # a batch's rows end at their end-of-text (generate pads a row that finished early)
        self.stops = set(_eos_ids(self.model, self.request.settings)) if self.request.is_batch else set()
        return [self._row_trace(b, ids) for b, ids in enumerate(self.request.rows)]

    def _row_trace(self, b: int, ids: torch.Tensor) -> Trace:
        request, facts, kind = self.request, self.request.facts, self.request.facts.kind
        start = self.padded.starts[b]
        prompt_end = start + len(ids)
        generated = self._generated(b)
        end = prompt_end + len(generated)
        if kind == "causal":
            logits = [step[b] for step in self.step_logits[: max(1, len(generated))]]
        elif kind == "classifier":  # one step: the classes
            logits = [self.step_logits[0][b]]
        else:
            logits = [step[b] for step in self.step_logits[start:prompt_end]]
        record = make_record(self.lm, ids.tolist(), request.generation, self.edits, generated)
        if request.is_batch:  # each record its own lists: a user editing one changes no other
            record["batch"] = {"prompt_ids": [r.tolist() for r in request.rows], "row": b}
        mine = slice(start, end)
        stack = AttentionStack(
            SELF,
            n_layers=facts.n_layers,
            n_heads=facts.n_heads,
            queries=(0, end - start),
            keys=(0, end - start),
            layers=[layer and layer.row(b, mine, mine) for layer in self.layers] if self.layers is not None else None,
            eager=[a[b, :, mine, mine] for a in self.eager] if self.eager is not None else None,
            edits=self.edits,
            attention_layers=self.with_attention,
            model_name=self.lm.name,
        )
        kept = (
            None
            if self.prompt_logits is None
            else self.prompt_logits[b].float().cpu()
            if kind == "classifier"
            else self.prompt_logits[b, start:prompt_end].float().cpu()
        )
        return Trace(
            model=self.lm,
            input_ids=self.sequence[b, start:end].cpu(),
            n_prompt=len(ids),
            stacks={SELF: stack},
            edits=self.edits,
            **predictions(logits, generated),
            logits=kept,
            record=record,
        )

    def _generated(self, b: int) -> list[int]:
        """Row b's generated tokens, up to its end-of-text: a row that finished early was padded by
        generate after its eos."""
        generated = self.sequence[b, self.padded.input_ids.shape[1] :].tolist()
        for i, token in enumerate(generated):
            if token in self.stops:
                return generated[: i + 1]
        return generated

    def _forward_or_generate(self):
        """(sequences [B, T + new], logits per step [B, vocab] (per position for masked models),
        the prompt's logits [B, T, vocab] when kept, the generation's cache)."""
        model, inputs, request, kind = self.model, self.inputs, self.request, self.request.facts.kind
        if request.max_new_tokens == 0:
            # a causal run needs only the last position's logits: [T, vocab] of them is GBs on a long prompt
            last_only = kind == "causal" and not request.keep_logits and takes_logits_to_keep(model)
            given = {} if inputs.position_ids is None else {"position_ids": inputs.position_ids}
            out = model(
                input_ids=inputs.input_ids,
                attention_mask=inputs.attention_mask,
                use_cache=False,
                **given,
                **({"logits_to_keep": 1} if last_only else {}),
            )
            logits = out.logits
            steps = (
                [logits[:, -1]] if kind == "causal" else [logits] if kind == "classifier" else list(logits.unbind(1))
            )
            return inputs.input_ids, steps, logits.float().cpu() if request.keep_logits else None, None
        kwargs = {"pad_token_id": self.lm.pad_token_id, **request.settings}
        out = model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            max_new_tokens=request.max_new_tokens,
            do_sample=request.generation["do_sample"],
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )
        return out.sequences, list(out.logits), None, output_cache(out)

    def _last_token_step(self, cache) -> None:
        """generate() samples the last token but never runs it through the model: one
        more step (on the cache, or the whole sequence without one) gives its queries
        and keys, so every generated token has attention to show."""
        whole = _extended(self.inputs, self.sequence.shape[1])
        if cache is not None:
            last = {k: (v[:, -1:] if k == "position_ids" else v) for k, v in whole.items()}
            self.model(input_ids=self.sequence[:, -1:], **last, **cache_kwargs(self.model, cache))
        else:
            self.model(input_ids=self.sequence, use_cache=False, **whole)

    def _eager_attentions(self) -> list[torch.Tensor]:
        """For models outside the attention registry: one eager forward of the whole
        sequence with output_attentions (what other tools do for every model), [B, heads, T, T]
        per layer. Eager, because SDPA returns no weights (only a log line saying so)."""
        with model_mode(self.model, attn_implementation="eager"):
            out = self.model(
                input_ids=self.sequence,
                output_attentions=True,
                use_cache=False,
                **_extended(self.inputs, self.sequence.shape[1]),
            )
        if not out.attentions:
            raise InputError(
                f"{type(self.model).__name__} returned no attentions even with output_attentions=True; "
                f"load it with attn_implementation='eager' to view its attention"
            )
        return [a.detach() for a in out.attentions]


class _Inputs(NamedTuple):
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]: 0 on padding
    position_ids: torch.Tensor | None  # given only when left padding shifts them


def _eos_ids(model: torch.nn.Module, settings: dict) -> list[int]:
    eos = settings.get("eos_token_id")
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _extended(inputs: _Inputs, length: int) -> dict[str, torch.Tensor]:
    """attention_mask (and position_ids, when padded) for the whole sequence of `length` tokens."""
    mask = inputs.attention_mask
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], dim=1)
    if inputs.position_ids is None:
        return {"attention_mask": mask}
    return {"attention_mask": mask, "position_ids": positions(mask)}
