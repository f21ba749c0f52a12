"""A search for the edit that makes a model answer what you want, without breaking its fluency.

lw.search_steering(model, prompt, want=" blue", avoid=" red", span=(12, 20)) tries:

- attention edits on the key span, PASTA-style: every head emphasising the span alone (per-head
  profiling), then the best heads together at a few factors;
- directions added to the residual stream (by default the unembedding difference of `want` and
  `avoid`), after a few blocks, at strengths scaled to the residual stream's length there.

Each candidate is scored by p(want) - p(avoid) after the prompt (or a metric of the log
probabilities) and by a fluency cost: the mean KL divergence, over the model's own continuation
of the prompt, from the unedited next-token distributions to the edited ones. Many candidates go
through one forward (each batch row its own edits). The result keeps every candidate and the
Pareto front of success against cost; a candidate's edits replay through `model.trace`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import anatomy
from ..models.compat import takes_logits_to_keep
from ..models.devices import input_device
from ..trace import Trace
from ..trace.batch import one_trace
from ..trace.capture import RunState, instrument
from ..trace.direction import Direction
from ..trace.edits import ScaleAttention, SteerResidual, as_spans, validate_edits
from ..trace.run import prompt_ids
from ..trace.runner import held
from .cost import Plan, Work, plans
from .steering import typical_length
from .targets import first_token_id

DEPTHS = (0.25, 0.5, 0.75, 1.0)  # where directions are tried: fractions of the way through the blocks
SHARES = (0.05, 0.1, 0.25, 0.5)  # a direction's strengths: this share of the residual stream's median length
SET_SIZES = (1, 2, 4, 8, 16)  # the best heads tried together


@dataclass(frozen=True)
class Candidate:
    """One edit tried: what it is, its edits (model.trace takes them), its success and its cost."""

    label: str
    kind: str  # "none", "attention" or "direction"
    edits: tuple
    success: float  # p(want) - p(avoid) after the prompt (or the metric)
    fluency_cost: float  # mean KL(unedited || edited) in nats over the model's own continuation

    def __repr__(self) -> str:
        return f"Candidate({self.label!r}, success {self.success:+.4f}, fluency cost {self.fluency_cost:.4f})"


@dataclass
class SteeringSearch:
    """What `lw.search_steering` found: `.candidates` (every edit tried), `.plain` (no edit),
    `.front` (the Pareto front: no other candidate is as successful for less cost), `.best(...)`."""

    model: LanguageModel = field(repr=False)
    prompt_ids: list[int]
    want: str
    avoid: str | None
    span: tuple | None
    plain: Candidate
    candidates: list[Candidate]
    continuation: list[int] = field(repr=False)
    seconds: float = 0.0
    forwards: int = 0
    batch_size: int = 1

    @property
    def front(self) -> list[Candidate]:
        """The candidates no other beats on both counts, by fluency cost (cheapest first)."""
        front: list[Candidate] = []
        for c in sorted(self.candidates, key=lambda c: (c.fluency_cost, -c.success)):
            if not front or c.success > front[-1].success:
                front.append(c)
        return front

    def best(self, max_fluency_cost: float | None = None) -> Candidate | None:
        """The most successful candidate whose fluency cost is at most `max_fluency_cost` (any
        cost when None); None when none is cheap enough."""
        if max_fluency_cost is not None:
            checks.number(max_fluency_cost, "max_fluency_cost", low=0)
        allowed = [c for c in self.front if max_fluency_cost is None or c.fluency_cost <= max_fluency_cost]
        return allowed[-1] if allowed else None

    def trace(self, candidate: Candidate, max_new_tokens: int | None = None, **kwargs: Any) -> Trace:
        """The prompt run with the candidate's edits (its record replays it)."""
        if not isinstance(candidate, Candidate):
            raise WrongTypeError(f"trace takes a Candidate of this search; got {type(candidate).__name__}")
        n = len(self.continuation) if max_new_tokens is None else max_new_tokens
        return one_trace(
            self.model.trace(self.prompt_ids, max_new_tokens=n, edits=list(candidate.edits), **kwargs), "trace"
        )

    def to_dataframe(self):
        import pandas as pd

        front = {id(c) for c in self.front}
        return pd.DataFrame(
            [
                {
                    "label": c.label,
                    "kind": c.kind,
                    "success": c.success,
                    "fluency_cost": c.fluency_cost,
                    "front": id(c) in front,
                }
                for c in [self.plain, *self.candidates]
            ]
        )

    def __repr__(self) -> str:
        best = self.best()
        return (
            f"SteeringSearch({len(self.candidates)} candidates in {self.forwards} forwards, {self.seconds:.1f} s; "
            f"plain {self.plain.success:+.4f}, best {best!r})"
        )


class _Scorer:
    """Scores batches of candidates: one forward of the prompt and its continuation per batch,
    each row with its own edits, against the unedited run's distributions."""

    def __init__(self, lm: LanguageModel, ids: list[int], n_prompt: int, success: Callable, batch_size: int):
        self.lm, self.n_prompt, self.success, self.batch_size = lm, n_prompt, success, batch_size
        self.ids = torch.tensor(ids)
        self.forwards = 0
        self.blocks = list(anatomy(lm.model, lm.facts.n_layers).blocks)
        plain = self._forward([()])[0]  # from the prompt's last position on
        self.plain_logp = plain[1:]  # the continuation's next-token distributions, unedited
        self.plain_success = float(success(plain[0]))
        self.norms = plain_norms(lm, self.ids)

    def _forward(self, rows: list[tuple]) -> torch.Tensor:
        """Log probabilities [rows, positions, vocabulary] with each row's edits. The rows are the
        same up to the first block any of them edits: the forward runs one row until there, then
        as many as there are candidates."""
        lm, model = self.lm, self.lm.model
        facts = lm.facts
        device = input_device(model)
        ids = self.ids[None].to(device)
        run = RunState(
            facts.n_layers, facts.n_heads, len(self.ids), capture=False, n_prompt=self.n_prompt, row_edits=rows
        )
        keep = len(self.ids) - self.n_prompt + 1  # the prompt's last position and the continuation's
        kwargs = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
        first = min((_first_block(row, facts.n_layers) for row in rows), default=facts.n_layers)

        def grow(_module, args, kw):  # one row becomes one per candidate, as it enters the first edited block
            if args:
                return (args[0].expand(len(rows), -1, -1).contiguous(), *args[1:]), kw
            return args, {**kw, "hidden_states": kw["hidden_states"].expand(len(rows), -1, -1).contiguous()}

        with held(model), instrument(model, run):
            handle = self.blocks[first].register_forward_pre_hook(grow, with_kwargs=True) if len(rows) > 1 else None
            try:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs).logits
            finally:
                if handle is not None:
                    handle.remove()
        self.forwards += 1
        return logits[:, -keep:].float().log_softmax(-1).cpu()

    def score(self, proposals: Sequence[tuple[str, str, tuple]]) -> list[Candidate]:
        """Each proposal (label, kind, edits) scored; batches of candidates that edit from similar
        blocks on, so that the rows share the most of the forward."""
        order = sorted(range(len(proposals)), key=lambda i: _first_block(proposals[i][2], 0))
        scored: dict[int, Candidate] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logp = self._forward([proposals[i][2] for i in chunk])
            continuation = logp[:, 1:]  # [rows, positions, vocabulary]
            kl = (self.plain_logp.exp() * (self.plain_logp - continuation)).sum(-1).mean(-1)
            for i, row, cost in zip(chunk, logp, kl.tolist()):
                label, kind, edits = proposals[i]
                scored[i] = Candidate(label, kind, edits, float(self.success(row[0])), max(0.0, cost))
        return [scored[i] for i in range(len(proposals))]


def _first_block(edits: tuple, default: int) -> int:
    """The first block a candidate's edits change (a ScaleAttention on every layer: 0)."""
    return min((min(e.layers or (0,)) for e in edits), default=default)


def plain_norms(lm: LanguageModel, ids: torch.Tensor) -> list[float]:
    """The residual stream's median length after each block on `ids` (the first token left out)."""
    model = lm.model
    with held(model):
        out = model(input_ids=ids[None].to(input_device(model)), output_hidden_states=True, use_cache=False)
    states = out.hidden_states[1:]  # after each block
    return [typical_length(h[0]) for h in states]


def search_steering(
    model: LanguageModel,
    prompt: Any,
    want: Any,
    avoid: Any = None,
    span: Any = None,
    *,
    directions: Sequence[Direction] | None = None,
    factors: Sequence[float] = (2.0, 5.0, 10.0),
    budget: int = 256,
    batch_size: int = 16,
    continuation: int = 16,
    metric: Callable[[torch.Tensor], Any] | None = None,
) -> SteeringSearch:
    """Search for edits that make `model` answer `want` (not `avoid`) after `prompt`, keeping its
    fluency: attention on the key `span` (PASTA-style, when a span is given) and `directions` in
    the residual stream (default: the unembedding difference of want and avoid). At most `budget`
    candidates, `batch_size` per forward; fluency is measured over `continuation` tokens of the
    model's own answer. `metric(log_probs)` (the next-token log probabilities after the prompt)
    replaces p(want) - p(avoid) as the success."""
    lm, ids, want_id, avoid_id = _checked(model, prompt, want, avoid)
    spans = _settings(budget, batch_size, continuation, metric, span, factors)
    started = time.perf_counter()
    answer = one_trace(lm.trace(ids, max_new_tokens=continuation), "search_steering").generated_ids
    sequence = [*ids, *answer]
    if spans is not None:
        validate_edits(
            [ScaleAttention(2.0, keys=spans)],
            n_layers=lm.facts.n_layers,
            n_heads=lm.facts.n_heads,
            sequence_length=len(ids),
        )

    def success(logp: torch.Tensor) -> float:
        if metric is not None:
            return float(metric(logp))
        return float(logp[want_id].exp() - (logp[avoid_id].exp() if avoid_id is not None else 0.0))

    scorer = _Scorer(lm, sequence, len(ids), success, batch_size)
    plain = Candidate("no edit", "none", (), scorer.plain_success, 0.0)
    if directions is None:
        directions = [_default_direction(lm, want_id, avoid_id)]
    proposals = _direction_proposals(lm, directions, scorer.norms)
    candidates = scorer.score(proposals[: max(0, budget // 2 if spans else budget)])
    if spans is not None and budget > len(candidates):
        candidates += _attention_search(lm, scorer, spans, factors, budget - len(candidates))
    return SteeringSearch(
        model=lm,
        prompt_ids=list(ids),
        want=lm.tokenizer.decode([want_id]),
        avoid=lm.tokenizer.decode([avoid_id]) if avoid_id is not None else None,
        span=spans,
        plain=plain,
        candidates=candidates,
        continuation=list(answer),
        seconds=time.perf_counter() - started,
        forwards=scorer.forwards,
        batch_size=batch_size,
    )


def _settings(budget, batch_size, continuation, metric, span, factors) -> tuple | None:
    """The search's settings checked; the span as spans."""
    checks.integer(budget, "budget", low=1)
    checks.integer(batch_size, "batch_size", low=1)
    checks.integer(continuation, "continuation", low=1)
    if metric is not None and not callable(metric):
        raise WrongTypeError(f"metric is a function of the next-token log probabilities; got {type(metric).__name__}")
    for value in factors:
        checks.number(value, "a factor", low=0, low_open=True)
    return as_spans(span, "span")


def _checked(model: Any, prompt: Any, want: Any, avoid: Any) -> tuple[LanguageModel, list[int], int, int | None]:
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"search_steering takes an lw.LanguageModel; got {type(model).__name__}")
    model.check_analysable("search_steering")
    if model.kind != "causal":
        raise InputError(f"search_steering steers a causal language model's next token; {model.name} is {model.kind}")
    ids = prompt_ids(model, prompt).tolist()
    notes: list[str] = []
    want_id = first_token_id(model.tokenizer, want, "want", notes, model.facts.vocab_size)
    avoid_id = None if avoid is None else first_token_id(model.tokenizer, avoid, "avoid", notes, model.facts.vocab_size)
    if avoid_id == want_id:
        raise InputError(f"want and avoid are the same token ({want!r}): give two different answers")
    return model, ids, want_id, avoid_id


def _default_direction(lm: LanguageModel, want_id: int, avoid_id: int | None) -> Direction:
    """The unembedding row of `want` (minus that of `avoid`): what the last layer reads as the answer."""
    weight = lm.model.get_output_embeddings().weight.detach().float()
    vector = weight[want_id] - (weight[avoid_id] if avoid_id is not None else 0.0)
    name = f"{lm.tokenizer.decode([want_id])!r}" + (
        f" - {lm.tokenizer.decode([avoid_id])!r}" if avoid_id is not None else ""
    )
    return Direction(vector, model=lm.name, name=name)


def spread(n_layers: int) -> list[int]:
    """The blocks a direction without a layer of its own is tried after: DEPTHS of the way through."""
    return sorted({min(n_layers - 1, max(0, round(f * n_layers) - 1)) for f in DEPTHS})


def _direction_proposals(lm: LanguageModel, directions: Sequence[Direction], norms: list[float]) -> list[tuple]:
    """Each direction after a few blocks (its own layer, or spread through the model), at strengths
    that make it a share of the residual stream's length there."""
    n = lm.facts.n_layers
    out = []
    for d in directions:
        if not isinstance(d, Direction):
            raise WrongTypeError(f"directions are lw.Direction objects; got {type(d).__name__}")
        d.check_for(lm.name, lm.facts.hidden_size)
        if d.norm == 0:
            raise InputError(f"direction {d.name!r} is the zero vector: it steers nothing")
        layers = [d.layer] if d.layer is not None else spread(n)
        for layer in layers:
            for share in SHARES:
                strength = float(f"{share * norms[layer] / d.norm:.3g}")
                edit = SteerResidual(d, [layer], strength)
                out.append((f"{strength:+g} x {d.name or 'direction'} after block {layer}", "direction", (edit,)))
    return out


def _attention_search(lm, scorer: _Scorer, spans, factors, budget: int) -> list[Candidate]:
    """PASTA-style: every head emphasising the span alone, then the best heads together; with too
    small a budget for every head, whole layers first and then the heads of the best layers."""
    n_layers, n_heads = lm.facts.n_layers, lm.facts.n_heads
    profile_factor = sorted(factors)[len(factors) // 2]
    sets = len([k for k in SET_SIZES if k <= n_layers * n_heads]) * len(factors)
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    profiled: list[Candidate] = []
    if len(heads) + sets > budget:
        if n_layers + sets > budget:  # room for little: every head at each factor, then layers while it lasts
            every = [_heads_edit(spans, heads, factor) for factor in factors]
            layers = [
                _heads_edit(spans, [(layer, h) for h in range(n_heads)], profile_factor) for layer in range(n_layers)
            ]
            return scorer.score((every + layers)[: max(0, budget)])
        profiled = scorer.score(
            [_heads_edit(spans, [(layer, h) for h in range(n_heads)], profile_factor) for layer in range(n_layers)]
        )
        ranked = sorted(range(n_layers), key=lambda i: -profiled[i].success)
        room = (budget - n_layers - sets) // n_heads
        heads = [(layer, h) for layer in ranked[:room] for h in range(n_heads)] if room else []
    singles = scorer.score([_heads_edit(spans, [pair], profile_factor) for pair in heads])
    order = [heads[i] for i in sorted(range(len(heads)), key=lambda i: -singles[i].success)]
    if not order:  # no room for single heads: the best layers' heads, in the layers' order
        order = [
            (layer, h) for layer in sorted(range(n_layers), key=lambda i: -profiled[i].success) for h in range(n_heads)
        ]
    together = [_heads_edit(spans, order[:k], factor) for k in SET_SIZES if k <= len(order) for factor in factors]
    return profiled + singles + scorer.score(together[: max(0, budget - len(profiled) - len(singles))])


def _heads_edit(spans, pairs: list[tuple[int, int]], factor: float) -> tuple[str, str, tuple]:
    """One candidate: these (layer, head) pairs attend `factor` times more to the span."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)
    edits = tuple(
        ScaleAttention(factor, keys=spans, layers=[layer], heads=sorted(hs)) for layer, hs in sorted(by_layer.items())
    )
    names = [f"{layer}.{head}" for layer, head in pairs]  # (in the order given: the best first)
    heads = f"head {names[0]}" if len(names) == 1 else f"heads {', '.join(names[:3])}"
    if len(names) > 3:
        heads += f" and {len(names) - 3} more"
    return (f"x{factor:g} attention to the span, {heads}", "attention", edits)


def _attention_calls(n_layers: int, n_heads: int, factors: int, budget: int) -> list[int]:
    """The candidates each of _attention_search's scoring calls gets (its branches, counted)."""
    sets = len([k for k in SET_SIZES if k <= n_layers * n_heads]) * factors
    heads = n_layers * n_heads
    if heads + sets <= budget:
        together = len([k for k in SET_SIZES if k <= heads]) * factors
        return [heads, min(together, budget - heads)]
    if n_layers + sets > budget:
        return [min(factors + n_layers, budget)]
    room = (budget - n_layers - sets) // n_heads
    singles = room * n_heads
    order = singles or heads
    together = len([k for k in SET_SIZES if k <= order]) * factors
    return [n_layers, singles, min(together, budget - n_layers - singles)]


@plans(search_steering)
def plan_search(
    model,
    prompt,
    want,
    avoid=None,
    span=None,
    *,
    directions=None,
    factors=(2.0, 5.0, 10.0),
    budget=256,
    batch_size=16,
    continuation=16,
    metric=None,
) -> Plan:
    """lw.search_steering's work: the model's own continuation (traced), the plain run, then the
    candidates in batches, each batch one row up to the first block its candidates edit (on
    average half-way: attention candidates reach from the first block to the last)."""
    lm, ids, _, _ = _checked(model, prompt, want, avoid)
    spans = _settings(budget, batch_size, continuation, metric, span, factors)
    T, n_layers = len(ids), lm.facts.n_layers
    length = T + continuation
    given = list(directions) if directions is not None else [None]
    layers = sum(1 if getattr(d, "layer", None) is not None else len(spread(n_layers)) for d in given)
    n_directions = min(layers * len(SHARES), budget // 2 if spans else budget)
    calls = [n_directions]
    if spans is not None and budget > n_directions:
        calls += _attention_calls(n_layers, lm.facts.n_heads, len(factors), budget - n_directions)
    batches = [min(batch_size, n - i) for n in calls for i in range(0, n, batch_size)]
    keep = continuation + 1
    work = [
        Work("the continuation, traced", 1, 1, T),
        # (a trace's last step runs the last token too, for its attention)
        Work("the continuation, traced", continuation, 1, 1, past=T + continuation // 2),
        Work("the plain run, twice", 2, 1, length, logits=keep),
    ]
    sizes = {rows: batches.count(rows) for rows in set(batches)}
    work += [
        Work(f"candidates, {rows} a batch", count, rows, length, share=0.5, below=0.5, logits=keep, logit_copies=3)
        for rows, count in sorted(sizes.items())
    ]
    return Plan(lm, work)
