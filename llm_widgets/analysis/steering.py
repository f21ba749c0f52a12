"""Directions to steer with: made from prompts (a concept as the mean difference of two sets'
residual streams), from a token (its unembedding row), and read back from a run (each token's
projection onto a direction, to watch a long answer drift).

lw.steering_vector(model, ["Je suis", ...], ["I am", ...], layer=6)   # contrastive activation addition
lw.token_direction(model, " Paris")
model.trace(prompt, edits=[lw.SteerResidual(direction, layers=[6], strength=4)])
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import anatomy, block_output
from ..models.devices import input_device
from ..trace import Trace
from ..trace.capture import RunState, instrument
from ..trace.direction import Direction
from ..trace.run import prompt_ids
from ..trace.runner import held
from .targets import first_token_id

READS = ("last", "mean")  # where steering_vector reads each prompt's residual stream


class _Read(Exception):
    """Raised by the hook once the block's output is kept: the rest of the forward is not needed."""


def _model(model: Any, what: str) -> LanguageModel:
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"{what} takes an lw.LanguageModel; got {type(model).__name__}")
    model.check_analysable(what)
    return model


def residual_after(
    lm: LanguageModel, ids: torch.Tensor, layer: int, *, edits: tuple = (), n_prompt: int | None = None
) -> torch.Tensor:
    """The residual stream after block `layer` at every position of `ids` ([positions, width],
    float32 on the CPU), with a run's edits applied; the forward stops there."""
    model, n_layers, n_heads = lm.model, lm.facts.n_layers, lm.facts.n_heads
    block = anatomy(model, n_layers).blocks[layer]
    kept: list[torch.Tensor] = []

    def keep(_module, _args, output):
        kept.append(block_output(output)[0].detach().float().cpu())
        raise _Read

    edited = (
        instrument(model, RunState(n_layers, n_heads, len(ids), edits, capture=False, n_prompt=n_prompt))
        if edits
        else nullcontext()
    )
    device = input_device(model)
    # the hook only once the model is ours (another run's forward must not meet it), and after the
    # edits' own hooks: it reads the block's output as the run steered it
    with held(model), edited:
        handle = block.register_forward_hook(keep)
        try:
            model(input_ids=ids[None].to(device), attention_mask=torch.ones(1, len(ids), device=device))
        except _Read:
            pass
        finally:
            handle.remove()
    return kept[0]


def _prompts(value: Any, what: str) -> list[Any]:
    if isinstance(value, (str, torch.Tensor)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise WrongTypeError(f"{what} is a list of prompts (strings or token ids); got {type(value).__name__}")
    if not value:
        raise InputError(f"{what} is empty: give at least one prompt (a few dozen make a steadier direction)")
    if all(checks.is_int(v) for v in value):  # one prompt as token ids
        return [list(value)]
    return list(value)


def steering_vector(
    model: LanguageModel, positive: Any, negative: Any, layer: int, *, at: str = "last", name: str = ""
) -> Direction:
    """The mean residual stream after block `layer` over the `positive` prompts minus that over the
    `negative` ones (contrastive activation addition), read at each prompt's last token (`at="last"`)
    or averaged over its tokens (`at="mean"`). Added with lw.SteerResidual(direction, layers=[layer],
    strength=1) it moves a run by the difference the two sets show; strength -1 the other way."""
    lm = _model(model, "steering_vector")
    checks.integer(layer, "layer", low=0, high=lm.facts.n_layers - 1)
    checks.choice(at, "at", READS)
    sides = []
    for prompts, what in ((positive, "positive"), (negative, "negative")):
        reads = []
        for prompt in _prompts(prompts, what):
            hidden = residual_after(lm, prompt_ids(lm, prompt), layer)
            reads.append(hidden[-1] if at == "last" else hidden.mean(0))
        sides.append(torch.stack(reads).mean(0))
    label = name or f"{_gist(positive)} - {_gist(negative)}"
    return Direction(sides[0] - sides[1], model=lm.name, layer=layer, name=label)


def _gist(prompts: Any) -> str:
    first = prompts if isinstance(prompts, str) else prompts[0] if isinstance(prompts, (list, tuple)) else "ids"
    text = first if isinstance(first, str) else "ids"
    return repr(text[:24] + ("…" if len(text) > 24 else "")) + ("" if isinstance(prompts, str) else " ...")


def token_direction(model: LanguageModel, token: Any) -> Direction:
    """The unembedding row of `token` (text of one token, mind the space, or an id): the direction
    the model's last layer reads as that token. Added late, it makes the token likelier."""
    lm = _model(model, "token_direction")
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise InputError(f"{lm.name} has no unembedding (get_output_embeddings() is None): it predicts no tokens")
    if isinstance(token, str) and token:  # a direction is one token's: text of several is refused
        ids = lm.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) > 1:
            pieces = lm.tokenizer.batch_decode([[i] for i in ids])
            raise InputError(f"token {token!r} is {len(ids)} tokens {pieces}: give one token (or its id)")
    token_id = first_token_id(lm.tokenizer, token, "token", [], lm.facts.vocab_size)
    text = lm.tokenizer.decode([token_id])
    return Direction(head.weight[token_id].detach(), model=lm.name, name=f"token {text!r}")


def projections(trace: Trace, direction: Direction, layer: int) -> torch.Tensor:
    """Each position's residual stream after block `layer`, projected onto `direction` (its unit
    vector): one number per token of the trace, with the trace's edits, to watch a long answer drift."""
    if not isinstance(trace, Trace):
        raise WrongTypeError(f"projections takes an lw.Trace; got {type(trace).__name__}")
    if not isinstance(direction, Direction):
        raise WrongTypeError(f"projections takes an lw.Direction; got {type(direction).__name__}")
    lm = _model(trace.model, "projections")
    checks.integer(layer, "layer", low=0, high=lm.facts.n_layers - 1)
    direction.check_for(lm.name, lm.facts.hidden_size)
    hidden = residual_after(lm, trace.input_ids, layer, edits=trace.edits, n_prompt=trace.n_prompt)
    return hidden @ direction.unit().vector


def residual_norm(model: LanguageModel, prompts: Sequence[Any] | str, layer: int) -> float:
    """The residual stream's typical length after block `layer` (median over the prompts' tokens,
    the first token left out: it is often a sink of outsized norm): a scale for steering strengths."""
    lm = _model(model, "residual_norm")
    checks.integer(layer, "layer", low=0, high=lm.facts.n_layers - 1)
    hidden = [residual_after(lm, prompt_ids(lm, prompt), layer) for prompt in _prompts(prompts, "prompts")]
    return float(torch.cat([_lengths(h) for h in hidden]).median())


def typical_length(hidden: torch.Tensor) -> float:
    """The median length of a residual stream's positions [positions, width], the first left out
    (often a sink of outsized norm) when there are others."""
    return float(_lengths(hidden).median())


def _lengths(hidden: torch.Tensor) -> torch.Tensor:
    return (hidden[1:] if len(hidden) > 1 else hidden).float().norm(dim=-1)
