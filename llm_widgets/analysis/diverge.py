"""`lw.diverge(a, b, prompt)`: where two models (a model and its quantized, pruned, half-precision
or fine-tuned copy; one model under two settings) part: the first generated token where their
greedy choices differ, KL(a||b) per generated token with b teacher-forced on a's tokens, each
layer's relative error of the residual stream and of its attention and MLP outputs, the heads
whose attention moved most, and the blame: a's activation patched into b at each layer and site
(batched, as `lw.patch` is), ranked by how much of the divergence it takes away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import anatomy, block_output
from ..models.devices import input_device
from ..text import printable
from ..trace import Trace
from ..trace.run import prompt_ids
from ..trace.runner import held
from ..trace.trace import decode_each
from .cost import Plan, Work, deferred, first_itemsize, over, plans
from .patching import (
    _forward_last,
    _layer_chunks,
    _rows_per_chunk,
    _site_modules,
    capture_site,
    capture_sites,
    chunk_budget,
    patched_work,
    planned_budget,
    run_patched,
)

SITES = ("residual", "attention", "mlp")


@dataclass(repr=False)
class Divergence:
    """Where b parts from a on one prompt.

    kl [generated]: KL(a||b) of the next-token distributions at each of a's generated tokens, b
    fed a's tokens (teacher-forced). first_split: the first generated token where the greedy
    choices differ (None: never, within the tokens generated). errors: per site, [layers,
    positions] of ||b - a|| / ||a||. attention [layers, heads]: the largest |attention_b -
    attention_a|. blame: (layer, site, share) largest first, share the part of the mean KL that
    a's activation patched into b takes away (the residual stream's: what appears at that layer,
    its share less the layer before's; and (layers, "output", share): what remains with a's last
    residual stream in b, the part of b's final norm and unembedding). alone: (layer, site, share)
    largest first, share the mean KL that b's module causes by itself (run on a's inputs, its
    output put into a) over b's: which layer to keep in full precision, where blame also counts
    what a layer passes on from below."""

    a_name: str
    b_name: str
    tokens: list[str]  # the prompt and a's generated tokens
    n_prompt: int
    a_generated: list[int]
    b_generated: list[int]
    b_tokens: list[str]  # b's own greedy continuation, decoded
    a_text: str
    b_text: str
    kl: torch.Tensor
    first_split: int | None
    errors: dict[str, torch.Tensor] = field(default_factory=dict)
    attention: torch.Tensor | None = None
    blame: list[tuple[int, str, float]] = field(default_factory=list)
    # each of b's modules by itself: run on a's inputs, its output put into a (layer, site, share)
    alone: list[tuple[int, str, float]] = field(default_factory=list)
    # models of different shapes (a distilled student): each layer's lens distribution against the
    # other model's final one, mean KL over the generated tokens: {"a": [a's layers], "b": [b's]}
    lens_kl: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dataframe(self):
        """A row per generated token: a's and b's greedy tokens, KL(a||b), whether they split there."""
        import pandas as pd

        rows = []
        for i, kl in enumerate(self.kl.tolist()):
            rows.append(
                {
                    "step": i,
                    "a_token": self.tokens[self.n_prompt + i] if self.n_prompt + i < len(self.tokens) else "",
                    "b_token_alone": self.b_tokens[i] if i < len(self.b_tokens) else "",
                    "kl": kl,
                    "split": self.first_split == i,
                }
            )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        where = "never split" if self.first_split is None else f"first split at generated token {self.first_split}"
        top = f"; blame: layer {self.blame[0][0]} {self.blame[0][1]} ({self.blame[0][2]:.0%})" if self.blame else ""
        return (
            f"Divergence({printable(self.a_name)} vs {printable(self.b_name)}: {where}, mean KL "
            f"{float(self.kl.mean()) if self.kl.numel() else 0.0:.3g}{top})"
        )


def _check_pair(a: Any, b: Any) -> None:
    for name, lm in (("a", a), ("b", b)):
        if not isinstance(lm, LanguageModel):
            raise WrongTypeError(f"diverge compares two lw.LanguageModels; {name} is {type(lm).__name__}")
        if lm.plain or lm.kind != "causal":
            raise InputError(f"diverge compares causal Hugging Face language models; {name} ({lm.name}) is {lm.kind}")
    vocab = [getattr(lm.tokenizer, "get_vocab", lambda: None)() for lm in (a, b)]
    if len(a.tokenizer) != len(b.tokenizer) or (None not in vocab and vocab[0] != vocab[1]):
        raise InputError(
            f"a ({a.name}) and b ({b.name}) have different tokenizers ({len(a.tokenizer)} vs {len(b.tokenizer)} "
            f"tokens): the same text would be different ids; compare models that share a tokenizer"
        )
    if a.facts.vocab_size != b.facts.vocab_size:
        raise InputError(
            f"a ({a.name}) predicts {a.facts.vocab_size} tokens and b ({b.name}) {b.facts.vocab_size}: their "
            f"distributions cannot be compared token by token"
        )
    if input_device(a.model) != input_device(b.model):
        raise InputError(
            f"a ({a.name}) is on {input_device(a.model)} and b ({b.name}) on {input_device(b.model)}: put both on "
            f"one device (b.model.to({str(input_device(a.model))!r}))"
        )


def _prompt_within_context(a: LanguageModel, b: LanguageModel, prompt: Any, max_new_tokens: int) -> torch.Tensor:
    ids = prompt_ids(a, prompt)
    for lm in (a, b):
        checks.fits_context(len(ids), max_new_tokens, lm.facts.context_length, lm.name)
    return ids


def _tail_logits(lm: LanguageModel, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Float32 logits [keep, vocab] at the last `keep` positions of one forward of `ids`."""
    with held(lm.model):
        return _forward_last(lm.model, ids[None], keep).reshape(keep, -1).float().cpu()


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p||q) over the last dimension (0 exactly where the logits are equal)."""
    logp, logq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def diverge(
    a: LanguageModel,
    b: LanguageModel,
    prompt: Any,
    max_new_tokens: int = 8,
    *,
    sites: Any = SITES,
    blame: bool = True,
    alone: bool = True,
    budget_bytes: int | None = None,
) -> Divergence:
    """Where b parts from a on `prompt`: a generates `max_new_tokens` greedily, b is fed a's tokens
    and compared at every generated token and every layer; with `blame`, each layer's `sites`
    (residual, attention, mlp) are patched from a into b to rank where the divergence comes from,
    and with `alone` (and `blame`) each of b's modules is run on a's inputs and put into a: the
    divergence it causes by itself."""
    _check_pair(a, b)
    checks.integer(max_new_tokens, "max_new_tokens", low=1)
    checks.flag(blame, "blame")
    checks.flag(alone, "alone")
    sites = (sites,) if isinstance(sites, str) else tuple(sites) if isinstance(sites, (list, tuple)) else None
    if not sites or any(s not in SITES for s in sites):
        raise InputError(f"sites must be some of {', '.join(SITES)}; got {sites!r}")
    ids = _prompt_within_context(a, b, prompt, max_new_tokens)
    ta, tb = (lm.trace(ids, max_new_tokens=max_new_tokens, capture=False) for lm in (a, b))
    assert isinstance(ta, Trace) and isinstance(tb, Trace)
    generated = ta.generated_ids
    if not generated:  # (generate stops at once when a's first choice ends the text)
        raise InputError(f"a ({a.name}) generated no token from this prompt: nothing to compare; give another prompt")
    forced = torch.cat([ids, torch.tensor(generated[:-1], dtype=ids.dtype)]).to(input_device(a.model))
    keep = len(generated)
    la, lb = _tail_logits(a, forced, keep), _tail_logits(b, forced, keep)
    kl = _kl(la, lb)
    differ = (la.argmax(-1) != lb.argmax(-1)).nonzero()
    result = Divergence(
        a_name=a.name,
        b_name=b.name,
        tokens=decode_each(a.tokenizer, [*ids.tolist(), *generated]),
        n_prompt=len(ids),
        a_generated=generated,
        b_generated=tb.generated_ids,
        b_tokens=decode_each(b.tokenizer, tb.generated_ids),
        a_text=ta.output_text,
        b_text=tb.output_text,
        kl=kl,
        first_split=int(differ[0, 0]) if len(differ) else None,
    )
    if a.facts.n_layers != b.facts.n_layers or a.facts.hidden_size != b.facts.hidden_size:
        result.notes.append(
            "the models differ in shape: each layer's lens distribution is compared with the other model's final "
            "one (lens_kl), not layer with layer"
        )
        result.lens_kl = {"a": _lens_kl(a, forced, keep, lb), "b": _lens_kl(b, forced, keep, la, against_final=True)}
        return result
    kept = _kept(a, sites, len(forced))
    budget = chunk_budget(b, budget_bytes, len(forced), keep, kept, deferred(diverge, locals()))
    _layers(result, a, b, forced, sites, la, keep, (blame, alone), budget)
    return result


def _layers(result: Divergence, a, b, forced, sites, la, keep, wanted, budget) -> None:
    """Each site's relative error per layer and position, the heads' attention difference, the blame
    and the modules alone (`wanted`: whether to find each)."""
    blame, alone = wanted
    parts_a, parts_b = anatomy(a.model, a.facts.n_layers), anatomy(b.model, b.facts.n_layers)
    base = float(result.kl.mean())
    shares: dict[str, list[float]] = {}
    with held(a.model):  # every site in one forward of each model
        sources, _ = capture_sites(a, forced[None], sites, parts_a)
    with held(b.model):
        mines, _ = capture_sites(b, forced[None], sites, parts_b)
    for site in sites:
        source, mine = sources[site], mines[site]
        result.errors[site] = torch.stack(
            [
                (m.float() - s.float()).norm(dim=-1) / s.float().norm(dim=-1).clamp_min(1e-12)
                for s, m in zip(source, mine)
            ]
        ).cpu()
        if blame and base > 0:
            shares[site] = _shares(b, forced, site, source, la, keep, base, budget)
            if alone:
                own = _alone(a, b, forced, site, parts_a, parts_b)
                result.alone += [
                    (i, site, 1.0 - v) for i, v in enumerate(_shares(a, forced, site, own, la, keep, base, budget))
                ]
    result.attention = _attention_difference(a, b, forced)
    if blame and base == 0:
        result.notes.append("b gives a's distributions exactly: there is no divergence to blame")
    ranked = []
    for site, values in shares.items():
        if site == "residual":  # what appears at each layer: its share less the layer before's
            # what a's last residual stream leaves: the final norm and unembedding (a quantized lm_head)
            ranked.append((len(values), "output", 1.0 - values[-1]))
            values = [v - (values[i - 1] if i else 0.0) for i, v in enumerate(values)]
        ranked += [(layer, site, share) for layer, share in enumerate(values)]
    result.blame = sorted(ranked, key=lambda item: -item[2])
    result.alone.sort(key=lambda item: -item[2])


def _shares(b, forced, site, source, la, keep, base, budget) -> list[float]:
    """For each layer: the part of the mean KL(a||b) gone when b takes `source`'s output of `site`
    there (a's outputs: the blame; b's modules alone, patched into a, 1 - share: what they cause)."""
    patches = [(layer, slice(None), None) for layer in range(len(source))]
    size = _rows_per_chunk(b, len(forced), budget, keep)
    out: list[float] = []
    with held(b.model):
        for chunk in _layer_chunks(patches, size, len(forced)):
            rows = run_patched(b, forced[None], site, [patches[i] for i in chunk], source, keep=keep)
            rows = rows.reshape(len(chunk), keep, -1).float().cpu()
            out += [1.0 - float(_kl(la, row).mean()) / base for row in rows]
    return out


def _hidden_input(args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Where a block's, attention's or MLP's hidden states come in: a keyword or the first argument."""
    return ("kwargs", "hidden_states") if "hidden_states" in kwargs else ("args", 0)


def _alone(a: LanguageModel, b: LanguageModel, forced, site: str, parts_a, parts_b) -> list[torch.Tensor]:
    """b's `site` modules each run on a's input to it (one forward of a to read them, one of b with
    every such input replaced by a's): per layer [T, d], what that module alone makes of a's input."""
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def read(layer):
        def hook(_m, args, kwargs):
            where, key = _hidden_input(args, kwargs)
            inputs[layer] = (kwargs[key] if where == "kwargs" else args[key]).detach().clone()

        return hook

    def replace(layer):
        def hook(_m, args, kwargs):
            where, key = _hidden_input(args, kwargs)
            if where == "kwargs":
                return args, {**kwargs, key: inputs[layer].to(kwargs[key].dtype)}
            return (inputs[layer].to(args[0].dtype), *args[1:]), kwargs

        return hook

    def keep(layer):
        def hook(_m, _args, output):
            outputs[layer] = block_output(output)[0].detach().clone()

        return hook

    for lm, parts, hooks in ((a, parts_a, (read,)), (b, parts_b, (replace, keep))):
        modules = _site_modules(parts, site, lm.name)
        handles = [m.register_forward_pre_hook(hooks[0](i), with_kwargs=True) for i, m in enumerate(modules)]
        handles += [m.register_forward_hook(hooks[1](i)) for i, m in enumerate(modules) if len(hooks) > 1]
        try:
            with held(lm.model):
                _forward_last(lm.model, forced[None], 1)
        finally:
            for handle in handles:
                handle.remove()
    return [outputs[layer] for layer in range(len(outputs))]


def _lens_kl(lm: LanguageModel, forced: torch.Tensor, keep: int, final: torch.Tensor, against_final=False):
    """Per layer of `lm`: the mean over the generated tokens of KL(lens || final) (a's layers against
    b's output), or KL(final || lens) with `against_final` (a's output against b's layers)."""
    parts = anatomy(lm.model, lm.facts.n_layers)
    with held(lm.model):
        residual, _ = capture_site(lm, forced[None], "residual", parts)
        out = []
        for hidden in residual:
            lens = parts.logits(hidden[-keep:].to(next(lm.model.parameters()).dtype)).float().cpu()
            out.append(float((_kl(final, lens) if against_final else _kl(lens, final)).mean()))
    return out


def _attention_difference(a: LanguageModel, b: LanguageModel, forced: torch.Tensor) -> torch.Tensor | None:
    """[layers, heads] max |attention_b - attention_a| over the teacher-forced sequence."""
    ta, tb = a.trace(forced.cpu()), b.trace(forced.cpu())
    assert isinstance(ta, Trace) and isinstance(tb, Trace)
    if ta.n_heads != tb.n_heads:
        return None
    out = torch.zeros(ta.n_layers, ta.n_heads)
    for layer in ta.attention_layers:
        for head in range(ta.n_heads):
            out[layer, head] = (ta.attention(layer, head) - tb.attention(layer, head)).abs().max()
    return out


def _generation(lm: LanguageModel, prompt: int, new: int, what: str) -> list[Work]:
    """A greedy generation: the prompt's forward, then one token a step against the cache."""
    return [
        Work(f"{what}: prompt", 1, 1, prompt),
        Work(f"{what}: {new - 1} more tokens", new - 1, 1, 1, past=prompt + new // 2),
    ]


@plans(diverge)
def plan_diverge(a, b, prompt, max_new_tokens=8, *, sites=SITES, blame=True, alone=True, budget_bytes=None) -> Plan:
    """lw.diverge's work: both generations, both teacher-forced runs with every site kept, the
    patched layers, each head's attention in both, per site."""
    _check_pair(a, b)
    ids = _prompt_within_context(a, b, prompt, max_new_tokens)
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    T, n = len(ids), max_new_tokens
    forced = T + n - 1
    work = _generation(a, T, n, "a generates") + [over(w, model=b) for w in _generation(b, T, n, "b generates")]
    for lm in (a, b):
        work += [
            Work("teacher-forced logits, then every site kept", 2, 1, forced, logits=n, model=lm),
            Work("traced for attention", 1, 1, forced, model=lm),
            Work("each head's attention", lm.facts.n_layers * lm.facts.n_heads, 1, forced, kind="attention", model=lm),
        ]
    patches = [(layer, slice(None), None) for layer in range(b.facts.n_layers)]
    budget = planned_budget(b, budget_bytes, _kept(a, sites, forced))
    for _ in sites if blame else ():
        work += [over(w, model=b) for w in patched_work(b, forced, patches, budget, n, 0, "layers patched")]
        if alone:
            work += [Work("modules alone", 1, 1, forced, model=m) for m in (a, b)]
            work += [over(w, model=a) for w in patched_work(a, forced, patches, budget, n, 0, "alone, patched")]
    return Plan(a, work, kept_bytes=_kept(a, sites, forced))


def _kept(a: LanguageModel, sites: tuple[str, ...], length: int) -> int:
    """Both models' outputs at every site and layer."""
    return 2 * len(sites) * a.facts.n_layers * length * a.facts.hidden_size * first_itemsize(a.model)
