"""Which input tokens drove an output: gradient attribution of a traced run.

The score is log p(target) at one step, or, with a contrast, logit(target) -
logit(contrast) ("why X, not Y"; the normaliser cancels, so it is also the
difference of the two log-probabilities). Captum computes grad x input,
integrated gradients and occlusion over the input embeddings; attention x
gradient (attention weights times the score's gradient with respect to them)
is ours, as Captum has no such method, and also gives each head's importance.

The model's parameters are frozen for the computation (no parameter gradients
are built or kept) and everything is restored afterwards: requires_grad flags,
training mode, the attention implementation.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from .. import checks
from .._provide import provides
from ..errors import InputError
from ..models import LanguageModel
from ..models.anatomy import anatomy
from ..models.compat import takes_logits_to_keep
from ..models.devices import input_device
from ..models.modes import checkpointed, model_mode
from ..models.plain import input_embedding, logits_of
from ..trace import Trace
from ..trace.runner import held
from .cost import Plan, Work, checked_budget, over_budget, plans, priced
from .targets import first_token_id

METHODS = ("grad_x_input", "integrated_gradients", "attention_x_grad", "occlusion")
BASELINES = ("zeros", "eos", "pad")  # what integrated gradients and occlusion replace the input with


N_STEPS_MAX = 4096  # integrated gradients' steps: each is a forward and a backward of the prompt
IG_ROWS = 16  # integrated gradients' steps per batch, at most


@dataclass(frozen=True)
class Fit:
    """How an attribution runs within its memory budget."""

    n_steps: int  # integrated gradients' steps (1 otherwise)
    rows: int  # inputs per forward (integrated gradients' steps per batch)
    checkpointed: bool  # the blocks' activations recomputed in the backward, only their inputs kept


@dataclass
class Attribution:
    """Per input token scores for one output token (and optionally a contrast)."""

    tokens: list[str]  # the input the scores are over: the prompt and the tokens generated before `step`
    scores: torch.Tensor  # [len(tokens)], float32; positive pushed towards the target (or away from the contrast)
    target: str
    target_id: int
    contrast: str | None
    contrast_id: int | None
    method: str
    step: int
    p_target: float
    p_contrast: float | None
    score: float  # the attributed quantity at the input
    n_prompt: int
    head_importance: torch.Tensor | None = None  # [layers, heads] for attention_x_grad
    delta: float | None = None  # integrated gradients: completeness gap, sum(scores) - (f(x) - f(baseline))
    notes: list[str] = field(default_factory=list)
    trace: Trace | None = field(default=None, repr=False)

    @property
    def quantity(self) -> str:
        if self.contrast is None:
            return f"log p({self.target!r})"
        return f"logit({self.target!r}) - logit({self.contrast!r})"

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The k tokens with the largest |score|: (position, token, score)."""
        order = torch.argsort(self.scores.abs(), descending=True)[:k].tolist()
        return [(i, self.tokens[i], float(self.scores[i])) for i in order]

    def __repr__(self) -> str:
        top = ", ".join(f"{t!r} {s:+.3g}" for _, t, s in self.top(3))
        return f"Attribution({self.method}, step {self.step}, {self.quantity} = {self.score:.3f}; strongest: {top})"


def _checked(trace: Trace, method: str, n_steps: Any, baseline: str) -> None:
    if trace.edits:  # (stacklevel 4: the user's call, past Trace.attribute's binding)
        warnings.warn(
            "this trace was run with attention edits; attribution explains the model without them", stacklevel=4
        )
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if method != "integrated_gradients" and n_steps != 64:
        raise InputError(f"n_steps is integrated gradients' setting (its number of steps); {method} takes none")
    if method == "integrated_gradients":
        checks.integer(n_steps, "n_steps", low=2, high=N_STEPS_MAX, note=" for integrated gradients")
    if method in ("grad_x_input", "attention_x_grad") and baseline != "zeros":
        raise InputError(f"baseline is the reference of integrated gradients and occlusion; {method} takes none")


@provides(Trace.attribute)
def attribute(trace: Trace, target, contrast, method, step, n_steps, baseline, budget_bytes, progress) -> Attribution:
    """See Trace.attribute."""
    _checked(trace, method, n_steps, baseline)
    checks.flag(progress, "progress")
    lm = trace.model
    step, ids, decoder_ids, position = _inputs(trace, step)
    notes: list[str] = []
    target_id, contrast_id = _target_ids(trace, target, contrast, step, notes)
    fit = _fitting(lm, method, len(ids), n_steps, budget_bytes, notes)
    classifier = lm.kind == "classifier"  # logits [batch, classes]: the text's, no position
    at = -1 if lm.kind == "causal" else position  # (a causal model's logits: the last position's alone)

    def score_of(logits: torch.Tensor) -> torch.Tensor:  # logits [batch, T, vocab] (or [batch, classes]) -> [batch]
        last = logits.float() if classifier else logits[:, at].float()
        if contrast_id is None:
            return torch.log_softmax(last, dim=-1)[:, target_id]
        return last[:, target_id] - last[:, contrast_id]

    model = lm.model
    blocks = anatomy(model, lm.facts.n_layers).blocks if fit.checkpointed else ()
    # parameters left as they are (requires_grad, .grad): gradients are taken of the inputs alone
    with held(model, grad=True), checkpointed(blocks), _bar(method, fit, len(ids), progress) as count:
        embed = input_embedding(model, len(lm.tokenizer)) if lm.plain else model.get_input_embeddings()
        embeds = embed(ids[None].to(input_device(model))).detach()
        reference = _baseline(lm, embed, ids, embeds, baseline)
        head_importance = delta = None
        if decoder_ids is not None:
            decoder_ids = decoder_ids[None].to(embeds.device)
        if method == "attention_x_grad":
            scores, head_importance, logits = _attention_x_grad(lm, ids, embeds, score_of, decoder_ids)
        else:
            scores, delta, logits = _captum(lm, ids, embeds, score_of, method, fit, reference, decoder_ids, count)
    probs = torch.softmax((logits if classifier else logits[at]).float(), dim=-1)
    name = (lambda i: lm.labels[i]) if lm.labels else (lambda i: lm.tokenizer.decode([i]))
    return Attribution(
        tokens=list(trace.tokens[: len(ids)]),
        scores=scores.float().cpu(),
        target=name(target_id),
        target_id=target_id,
        contrast=None if contrast_id is None else name(contrast_id),
        contrast_id=contrast_id,
        method=method,
        step=step,
        p_target=float(probs[target_id]),
        p_contrast=None if contrast_id is None else float(probs[contrast_id]),
        score=score_of(logits[None]).item(),
        n_prompt=trace.n_source or trace.n_prompt,
        head_importance=head_importance,
        delta=delta,
        notes=notes,
        trace=trace,
    )


def _inputs(trace: Trace, step: Any) -> tuple[int, torch.Tensor, torch.Tensor | None, int]:
    """(step, the ids scored, an encoder-decoder's decoder ids, the position whose output is read).
    Step s is the token generated after the prompt and s earlier ones (a tagger's: token s)."""
    lm, kind = trace.model, trace.model.kind  # (lm.facts would count the parameters)
    per_token = kind == "token_classifier"
    available = len(trace) if per_token else max(1, len(trace.generated_ids))
    step = 0 if step is None else step
    if not isinstance(step, int) or not 0 <= step < available:
        raise InputError(
            f"step {step!r} is out of range: this trace has steps 0 to {available - 1} "
            f"(step s attributes the token generated after the prompt and s earlier ones)"
        )
    ids = trace.input_ids[: trace.n_prompt if per_token else trace.n_prompt + step]
    if kind == "seq2seq":  # the source tokens are scored; the decoder is fed what it had produced before `step`
        return step, ids[: trace.n_source], ids[trace.n_source :], len(ids) - trace.n_source - 1
    if per_token:
        return step, ids, None, step
    if kind in ("causal", "classifier"):
        return step, ids, None, len(ids) - 1
    mask = getattr(lm.tokenizer, "mask_token_id", None)
    hits = (ids == mask).nonzero() if mask is not None else None
    if hits is None or len(hits) == 0:
        raise InputError(
            f"{lm.name} is a masked model: put its mask token {getattr(lm.tokenizer, 'mask_token', None)!r} "
            f"in the prompt, and the attribution is for what it predicts there"
        )
    return step, ids, None, int(hits[0, 0])


def _target_ids(trace: Trace, target: Any, contrast: Any, step: int, notes: list[str]) -> tuple[int, int | None]:
    """The target's id (default: what the run produced at `step`) and the contrast's: tokens, or a
    classifier's classes by name or id."""
    lm = trace.model
    by_class = lm.kind in ("classifier", "token_classifier")
    if target is None and lm.kind == "token_classifier":
        target_id = lm.label_id(trace.token_labels[step][1])
    elif target is None:
        target_id = trace.generated_ids[step] if trace.generated_ids else trace.next_token_id
    elif by_class:
        target_id = lm.label_id(target)
    else:
        target_id = first_token_id(lm.tokenizer, target, "target", notes, len(lm.tokenizer))
    if contrast is None:
        return target_id, None
    contrast_id = (
        lm.label_id(contrast)
        if by_class
        else first_token_id(lm.tokenizer, contrast, "contrast", notes, len(lm.tokenizer))
    )
    if contrast_id == target_id:
        raise InputError(f"target and contrast are the same token ({target!r}): give two different tokens")
    return target_id, contrast_id


def _forward(
    lm: LanguageModel, embeds: torch.Tensor, ids: torch.Tensor, decoder_ids: torch.Tensor | None = None, **kwargs
):
    """The model on input embeddings (an encoder-decoder's source, its decoder fed `decoder_ids`). A
    plain PyTorch model takes ids only: its embedding's output is replaced by `embeds` for the call."""
    model = lm.model
    if lm.plain:
        calls = []

        def source(module, args, out):  # the first call embeds the source (an encoder-decoder's target comes after)
            calls.append(1)
            return embeds if len(calls) == 1 else None

        swap = input_embedding(model, len(lm.tokenizer)).register_forward_hook(source)
        batch = [ids[None].to(embeds.device).expand(len(embeds), -1)]
        if decoder_ids is not None:
            batch.append(decoder_ids.expand(len(embeds), -1))
        try:
            return SimpleNamespace(logits=logits_of(model(*batch)))
        finally:
            swap.remove()
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    if lm.kind == "causal" and takes_logits_to_keep(model):  # the scored position is the last: its logits alone
        kwargs["logits_to_keep"] = 1
    if decoder_ids is not None:
        kwargs["decoder_input_ids"] = decoder_ids.expand(len(embeds), -1)  # captum batches the inputs
    return model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **kwargs)


def _baseline(lm: LanguageModel, embed, ids, embeds, name: str) -> torch.Tensor:
    """The reference input: zero vectors, or every position holding the eos / pad token's embedding
    (closer to what the model has seen: on Llama-style models integrated gradients converge far
    better from it than from zeros)."""
    if name == "zeros":
        return torch.zeros_like(embeds)
    token = getattr(lm.tokenizer, f"{name}_token_id", None)
    if token is None:
        raise InputError(f"{lm.name}'s tokenizer has no {name} token: use baseline='zeros' or the other one")
    return embed(torch.full_like(ids[None], token).to(embeds.device)).detach().to(embeds.dtype)


def _captum(lm: LanguageModel, ids, embeds, score_of, method: str, fit: Fit, reference, decoder_ids=None, count=None):
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion

    seen: dict[str, torch.Tensor] = {}

    model_dtype = embeds.dtype

    def forward(x):  # (captum's arithmetic in float32 on the CPU; the model gets its own dtype)
        if count is not None:
            count(len(x))
        logits = _forward(lm, x.to(model_dtype), ids, decoder_ids).logits
        if len(x) == 1 and "logits" not in seen and torch.equal(x.detach(), embeds):  # the input itself: keep
            seen["logits"] = logits[0].detach()
        return score_of(logits)

    embeds = (
        embeds.float() if embeds.dtype in (torch.float16, torch.bfloat16) and embeds.device.type == "cpu" else embeds
    )
    delta = None
    if method == "grad_x_input":
        attr = InputXGradient(forward).attribute(embeds.clone().requires_grad_(True))
    elif method == "integrated_gradients":
        attr, gap = IntegratedGradients(forward).attribute(
            embeds.clone().requires_grad_(True),
            baselines=reference.to(embeds.dtype),
            n_steps=fit.n_steps,
            internal_batch_size=fit.rows,
            return_convergence_delta=True,
        )
        delta = float(gap.abs().max())
    else:  # occlusion: each token's embedding replaced by the baseline's, one at a time
        with torch.no_grad():
            attr = Occlusion(forward).attribute(
                embeds,
                sliding_window_shapes=(1, embeds.shape[-1]),
                strides=(1, embeds.shape[-1]),
                baselines=reference.to(embeds.dtype),
            )
        attr = attr / embeds.shape[-1]  # Occlusion spreads each token's effect over its features
    if "logits" not in seen:
        with torch.no_grad():
            seen["logits"] = _forward(lm, embeds, ids, decoder_ids).logits[0]
    return attr[0].sum(dim=-1).detach(), delta, seen["logits"]


def _attention_x_grad(lm: LanguageModel, ids, embeds, score_of, decoder_ids=None):
    """Attention weights x d score / d weights, from one eager forward with output_attentions
    (an encoder-decoder's cross-attention: each output token's weights over the source)."""
    model = lm.model
    if lm.plain:
        raise InputError(
            "attention_x_grad needs attention weights, which a plain PyTorch model's fused attention "
            "does not return; use grad_x_input, integrated_gradients or occlusion"
        )
    with model_mode(model, attn_implementation="eager"):  # SDPA gives no weights
        x = embeds.clone().requires_grad_(True)  # so the graph (and the weights' gradients) exists
        out = _forward(lm, x, ids, decoder_ids, output_attentions=True)
        weights = out.cross_attentions if decoder_ids is not None else out.attentions
        attentions = [a for a in weights if a is not None]
        if not attentions:
            raise InputError(f"{lm.name} returned no attention weights; use another method")
        # autograd.grad, not backward(): no parameter's .grad is written (another thread may train it)
        grads = torch.autograd.grad(score_of(out.logits).sum(), attentions)
        contributions = [(a * g)[0].detach().float() for a, g in zip(attentions, grads)]  # [heads, T, T] each
    heads = torch.stack([c.sum(dim=(1, 2)) for c in contributions]).cpu()  # [layers, heads]
    tokens = torch.stack([c.sum(dim=(0, 1)) for c in contributions]).sum(0)  # per key position
    return tokens, heads, out.logits[0].detach()


# --- within a memory budget, and what it will cost (lw.estimate) ---


def _work(lm: LanguageModel, method: str, length: int, fit: Fit) -> list[Work]:
    """The forwards (and backwards) an attribution makes: Captum's, and ours for the logits."""
    if method == "occlusion":  # the input, then each token replaced
        return [Work("the input, then each token occluded", length + 1, 1, length)]
    if method == "attention_x_grad":
        return [Work("eager forward and backward", 1, 1, length, grad=True, eager=True)]
    if method == "grad_x_input":
        return [Work("forward and backward", 1, 1, length, grad=True, checkpointed=fit.checkpointed)]
    batches, last = divmod(fit.n_steps, fit.rows)
    work = [
        Work(
            f"{fit.n_steps} steps, {fit.rows} a batch",
            batches,
            fit.rows,
            length,
            grad=True,
            checkpointed=fit.checkpointed,
        )
    ]
    if last:
        work.append(Work("the last steps", 1, last, length, grad=True, checkpointed=fit.checkpointed))
    return work + [Work("the input and the baseline (completeness)", 1, 2, length), Work("the logits", 1, 1, length)]


def _surely_fits(lm: LanguageModel, rows: int, length: int, budget: int) -> bool:
    """A generous bound (every block keeping 64 numbers per token and width) within the budget: no
    need to measure the model's pace."""
    facts = lm.facts
    per_token = facts.n_layers * facts.hidden_size * 4 * 64 + facts.vocab_size * 8
    return rows * length * per_token <= budget


def _fitting(lm: LanguageModel, method: str, length: int, n_steps: int, budget_bytes: Any, notes: list[str]) -> Fit:
    """The most steps per batch, without checkpointing if it fits, that keep the estimate's peak
    within the budget; refused, with the estimate, if nothing fits."""
    budget = checked_budget(budget_bytes, lm.model)
    steps = n_steps if method == "integrated_gradients" else 1
    first = Fit(steps, min(steps, IG_ROWS), False)
    if method == "occlusion" or _surely_fits(lm, first.rows, length, budget):
        return first
    can_checkpoint = method != "attention_x_grad" and not lm.plain and lm.kind != "seq2seq"
    tries = [Fit(steps, r, c) for c in ((False, True) if can_checkpoint else (False,)) for r in _halvings(first.rows)]
    for fit in tries:
        if priced("attribute", Plan(lm, _work(lm, method, length, fit))).peak_bytes <= budget:
            if fit != first:
                how = "each block's activations recomputed in the backward" if fit.checkpointed else ""
                rows = f"{fit.rows} integrated-gradients steps a batch" if method == "integrated_gradients" else ""
                notes.append(f"within budget_bytes: {', '.join(x for x in (rows, how) if x)}")
            return fit
    raise over_budget(
        "trace.attribute",
        priced("trace.attribute", Plan(lm, _work(lm, method, length, tries[-1]))),
        budget,
        "Attribute a shorter prompt (an earlier step reads fewer tokens) or use method='grad_x_input'",
    )


@contextlib.contextmanager
def _bar(method: str, fit: Fit, length: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over the inputs the model is run on (integrated gradients' steps, occlusion's
    tokens): the context gives the function that counts them, called by the forward Captum runs (a
    hook on the model would meet other threads' forwards waiting at its gate)."""
    total = fit.n_steps if method == "integrated_gradients" else length if method == "occlusion" else 0
    if not enabled or total < 2:
        yield lambda _rows: None
        return
    from tqdm.auto import tqdm

    what = "integrated gradients" if method == "integrated_gradients" else "occluding tokens"
    with tqdm(total=total, desc=what, unit="input") as bar:

        def count(rows: int) -> None:
            # (Captum's last forwards, for completeness and the logits, run past the total)
            bar.update(min(rows, total - bar.n))

        yield count


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


@plans(Trace.attribute, attribute)
def plan_attribute(
    trace,
    target=None,
    contrast=None,
    method="grad_x_input",
    step=None,
    n_steps=64,
    baseline="zeros",
    budget_bytes=None,
    progress=True,
) -> Plan:
    """trace.attribute's work, as it would run within its budget."""
    _checked(trace, method, n_steps, baseline)
    lm = trace.model
    ids = _inputs(trace, step)[1]
    notes: list[str] = []
    fit = _fitting(lm, method, len(ids), n_steps, budget_bytes, notes)
    return Plan(lm, _work(lm, method, len(ids), fit), notes=notes)
