"""Logit lens: what the residual stream after each layer would predict.

One forward of the traced sequence (with the trace's edits) keeps each block's
output (forward hooks, the model's own attention kept); each is decoded through the model's own final
norm and unembedding, a layer at a time and in blocks of positions, so no
[layers, positions, vocabulary] tensor is ever held. At the last layer the lens
is the model's own prediction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError
from ..models.anatomy import anatomy, block_output
from ..models.compat import takes_logits_to_keep
from ..models.devices import input_device
from ..trace import Trace
from ..trace.capture import RunState, instrument
from ..trace.runner import held
from ..trace.trace import decode_each
from .cost import Plan, Work, first_itemsize, model_of, plans
from .targets import first_token_id

POSITION_BLOCK = 256  # positions decoded at once: at most POSITION_BLOCK x vocabulary logits


@dataclass
class LogitLens:
    """Per layer x position: the top-k tokens (ids and probabilities) of the residual stream
    decoded through the final norm and unembedding; with a target, its probability and rank."""

    tokens: list[str]  # the tokens at `positions` (the input the predictions follow)
    positions: list[int]
    top_ids: torch.Tensor  # [layers, positions, k]
    top_probs: torch.Tensor  # [layers, positions, k]
    top_tokens: list[list[list[str]]]  # [layers][positions][k], as text
    target: str | None = None
    target_id: int | None = None
    target_probs: torch.Tensor | None = None  # [layers, positions]
    target_ranks: torch.Tensor | None = None  # [layers, positions], 0 = the top token
    notes: list[str] = field(default_factory=list)
    trace: Trace | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    def first_layer(self, position: int = -1, threshold: float = 0.5) -> int | None:
        """The first layer at which the target (else the final top token) is the top token with
        probability >= threshold at `position` (an index into `positions`); None if never."""
        column = self.positions.index(self.positions[position])
        final = int(self.top_ids[-1, column, 0]) if self.target_id is None else self.target_id
        for layer in range(self.n_layers):
            if int(self.top_ids[layer, column, 0]) == final and float(self.top_probs[layer, column, 0]) >= threshold:
                return layer
        return None

    def __repr__(self) -> str:
        what = f", target {self.target!r}" if self.target is not None else ""
        return f"LogitLens({self.n_layers} layers x {len(self.positions)} positions, k={self.top_ids.shape[-1]}{what})"


def residual_streams(trace: Trace, positions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each block's output for the trace's whole sequence, [positions, d] per layer (float32, CPU)."""
    lm = trace.model
    parts = anatomy(lm.model, lm.facts.n_layers)
    model = lm.model
    kept: list[torch.Tensor | None] = [None] * len(parts.blocks)

    def keeper(layer: int):
        def hook(_module, _args, output):
            hidden = block_output(output)[0]
            kept[layer] = (hidden if positions is None else hidden[positions.to(hidden.device)]).detach()

        return hook

    device = input_device(model)
    ids = trace.input_ids[None].to(device)
    shape = (lm.facts.n_layers, lm.facts.n_heads)
    # the trace's own edits apply, so the lens reads the run that was traced
    edited = (
        instrument(model, RunState(*shape, len(trace), trace.edits, capture=False, n_prompt=trace.n_prompt))
        if trace.edits
        else contextlib.nullcontext()
    )
    # hooks only once the model is ours (another run's forward must not meet them), and after the
    # edits' own: a block's output is read as a SteerResidual left it
    with held(model), edited:
        handles = [block.register_forward_hook(keeper(i)) for i, block in enumerate(parts.blocks)]
        try:
            # (the logits read are the lens's own: the model's head runs on one position)
            keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **keep)
        finally:
            for handle in handles:
                handle.remove()
    return kept  # type: ignore[return-value]


@provides(Trace.logit_lens)
def logit_lens(trace: Trace, k: int, target: Any, positions: Any) -> LogitLens:
    """See Trace.logit_lens."""
    lm = trace.model
    lm.check_analysable("the logit lens")
    if lm.facts.kind != "causal":
        raise InputError(f"{lm.name} is a masked model: the logit lens reads next-token predictions of causal LMs")
    checks.integer(k, "k", low=1, high=100)
    n = len(trace)
    if positions is None:
        pos = torch.arange(n)
    else:
        listed = checks.integers(positions, "positions", low=-n, high=n - 1) if positions != "all" else range(n)
        pos = torch.as_tensor(list(listed), dtype=torch.long)
        if pos.numel() == 0 or int(pos.min()) < -n or int(pos.max()) >= n:
            raise InputError(
                f"positions {positions!r} are outside the sequence: 0 to {n - 1} (or negative from the end)"
            )
        pos = pos % n
    notes: list[str] = []
    target_id = None if target is None else first_token_id(lm.tokenizer, target, "target", notes, len(lm.tokenizer))
    parts = anatomy(lm.model, lm.facts.n_layers)
    streams = residual_streams(trace, pos)
    top_ids, top_probs, target_probs, target_ranks = [], [], [], []
    with torch.no_grad():
        for hidden in streams:
            ids_l, probs_l, tp_l, tr_l = [], [], [], []
            for start in range(0, len(pos), POSITION_BLOCK):
                i, p, t, r = _read(parts, hidden[start : start + POSITION_BLOCK], k, target_id)
                ids_l.append(i)
                probs_l.append(p)
                tp_l.append(t)
                tr_l.append(r)
            top_ids.append(torch.cat(ids_l))
            top_probs.append(torch.cat(probs_l))
            if target_id is not None:
                target_probs.append(torch.cat(tp_l))
                target_ranks.append(torch.cat(tr_l))
    ids = torch.stack(top_ids)
    tok = lm.tokenizer
    flat = decode_each(tok, ids.reshape(-1).tolist())
    L, P = ids.shape[:2]
    top_tokens = [[flat[(l * P + p) * k : (l * P + p + 1) * k] for p in range(P)] for l in range(L)]
    return LogitLens(
        tokens=[trace.tokens[i] for i in pos.tolist()],
        positions=pos.tolist(),
        top_ids=ids,
        top_probs=torch.stack(top_probs),
        top_tokens=top_tokens,
        target=None if target_id is None else tok.decode([target_id]),
        target_id=target_id,
        target_probs=torch.stack(target_probs) if target_id is not None else None,
        target_ranks=torch.stack(target_ranks) if target_id is not None else None,
        notes=notes,
        trace=trace,
    )


READ_S_PER_ENTRY = 2e-9  # the softmax, top-k and rank over each position's logits (2-core CPU)


def _read(parts, hidden: torch.Tensor, k: int, target_id: int | None) -> tuple[torch.Tensor, ...]:
    """One block of positions through the final norm and unembedding: (top ids, top probabilities,
    the target's probability, its rank), on the CPU. A function of its own so that its
    [positions, vocabulary] logits and probabilities are freed before the next block's are made."""
    probs = torch.softmax(parts.logits(hidden).float(), dim=-1)
    p, i = probs.topk(k, dim=-1)
    if target_id is None:
        return i.cpu(), p.cpu(), torch.empty(0), torch.empty(0)
    t = probs[:, target_id]
    return i.cpu(), p.cpu(), t.cpu(), (probs > t[:, None]).sum(-1).cpu()


@plans(Trace.logit_lens, logit_lens)
def plan_lens(trace, k=5, target=None, positions=None) -> Plan:
    """The lens's work: the run with every block's output kept at the positions read, then each layer's
    positions through the final norm and the unembedding, a block of positions at a time."""
    lm = model_of(trace, "trace")
    n = len(trace)
    read = (
        n
        if positions is None or positions == "all"
        else len(checks.integers(positions, "positions", low=-n, high=n - 1))
    )
    facts = lm.facts
    full, rest = divmod(read, POSITION_BLOCK)
    work = [Work("the run, each block's output kept", 1, 1, n)]
    for count, rows in ((full, POSITION_BLOCK), (1 if rest else 0, rest)):
        if count:
            extra = rows * facts.vocab_size * READ_S_PER_ENTRY
            what = f"each layer's positions unembedded, {rows} at a time"
            # alive at once: a block's logits and their softmax (_read frees both before the next block)
            work.append(Work(what, facts.n_layers * count, rows, 0, kind="unembed", logit_copies=2, extra_s=extra))
    return Plan(lm, work, kept_bytes=facts.n_layers * read * facts.hidden_size * first_itemsize(lm.model))
