"""Two runs side by side: two prompts, one prompt before and after edits, or two models
that share a tokenizer (before and after fine-tuning, say)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError, WrongTypeError
from ..trace import Trace


@dataclass
class Comparison:
    """What changed from run a to run b.

    steps: per generated step while both runs agree on the tokens before it, the token each run
    chose and the probability each run gave to a's token. attention_max / attention_mean:
    [layers, heads] max and mean |attention_b - attention_a| over the positions both runs share
    (their common token prefix, or the first min(len) positions when compare_positions="aligned").
    """

    a: Trace = field(repr=False)
    b: Trace = field(repr=False)
    positions: int  # the positions the attention difference is over
    steps: list[dict]
    attention_max: torch.Tensor | None
    attention_mean: torch.Tensor | None
    first_diverging_step: int | None  # the first generated step whose tokens differ, None if none
    notes: list[str] = field(default_factory=list)

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k heads whose attention changed most (max |delta|): (layer, head, max |delta|)."""
        if self.attention_max is None:
            return []
        flat = self.attention_max.flatten()
        order = torch.argsort(flat, descending=True)[:k].tolist()
        heads = self.attention_max.shape[1]
        return [(o // heads, o % heads, float(flat[o])) for o in order]

    def __repr__(self) -> str:
        top = self.top_heads(1)
        head = f"; most changed head {top[0][:2]} (max |Δ| {top[0][2]:.3f})" if top else ""
        return (
            f"Comparison({self.a.output_text!r} vs {self.b.output_text!r}; first diverging step "
            f"{self.first_diverging_step}{head})"
        )


def compare(a: Trace, b: Trace, *, positions: str = "common") -> Comparison:
    """Compare two traces. positions: "common" (attention over the shared token prefix: exact for
    the same prompt) or "aligned" (the first min(len) positions, for two prompts of one length)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Trace):
            raise WrongTypeError(f"compare takes two Traces (from model.trace(...)); {name} is {type(t).__name__}")
    if positions not in ("common", "aligned"):
        raise InputError(f"positions must be 'common' or 'aligned'; got {positions!r}")
    notes: list[str] = []
    tok_a, tok_b = a.model.tokenizer, b.model.tokenizer
    if tok_a is not tok_b and (
        len(tok_a) != len(tok_b) or getattr(tok_a, "get_vocab", dict)() != getattr(tok_b, "get_vocab", dict)()
    ):
        raise InputError(
            f"the two runs use different tokenizers ({a.model.name!r}, {b.model.name!r}): token by token "
            f"comparison needs one vocabulary"
        )
    ids_a, ids_b = a.input_ids.tolist(), b.input_ids.tolist()
    common = 0
    while common < min(len(ids_a), len(ids_b)) and ids_a[common] == ids_b[common]:
        common += 1
    n = common if positions == "common" else min(len(ids_a), len(ids_b))
    steps, diverged = _steps(a, b, common)
    attention_max = attention_mean = None
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        notes.append(
            f"the models differ in shape ({a.n_layers}x{a.n_heads} vs {b.n_layers}x{b.n_heads}): "
            f"no attention difference"
        )
    elif n == 0:
        notes.append("the runs share no position: no attention difference (try positions='aligned')")
    else:
        attention_max, attention_mean = _attention_difference(a, b, n)
    return Comparison(
        a=a,
        b=b,
        positions=n,
        steps=steps,
        attention_max=attention_max,
        attention_mean=attention_mean,
        first_diverging_step=diverged,
        notes=notes,
    )


def _steps(a: Trace, b: Trace, common: int) -> tuple[list[dict], int | None]:
    """Per generated step while the two follow one prefix: each run's token, a's probability and
    b's of a's token; and the step where they chose differently (None if they never did)."""
    steps = []
    for step, token in enumerate(a.generated_ids):
        if step >= len(b.generated_ids) or a.n_prompt != b.n_prompt or common < a.n_prompt + step:
            break  # b's prediction at this step follows another prefix: not comparable
        try:
            p_b = b.probability(token, step)
        except ValueError:  # a's token is not among the tokens b kept for this step
            p_b = None
        steps.append(
            {
                "step": step,
                "token_a": a.tokens[a.n_prompt + step],
                "token_b": b.tokens[b.n_prompt + step],
                "p_a": a.chosen_probability(step),
                "p_b_of_a": p_b,
                "delta": None if p_b is None else p_b - a.chosen_probability(step),
            }
        )
        if b.generated_ids[step] != token:
            return steps, step
    return steps, None


def _attention_difference(a: Trace, b: Trace, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and mean |b - a| of every head's attention over the first n positions: [layers, heads]."""
    attention_max = torch.zeros(a.n_layers, a.n_heads)
    attention_mean = torch.zeros(a.n_layers, a.n_heads)
    for layer in range(a.n_layers):
        for head in range(a.n_heads):
            delta = (
                b.attention(layer, head, queries=(0, n), keys=(0, n))
                - a.attention(layer, head, queries=(0, n), keys=(0, n))
            ).abs()
            attention_max[layer, head] = delta.max()
            attention_mean[layer, head] = delta.mean()
    return attention_max, attention_mean
