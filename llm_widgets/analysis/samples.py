"""`lw.sample_tree(model, prompt, n=32)`: all the answers sampling gives, as the prefix tree they
make, and the token where they split.

The prompt runs once; its KV cache serves the n samples (held once), which then decode together,
one forward per step, each row drawing its token with its own seeded generator exactly as
`generate` draws it alone (the same warpers in the same order, one `torch.multinomial` per step),
so each sample's record replays it alone (`tree.samples[i]` is that replay's Trace). `scorer=`
groups the answers into outcomes; a branch point's decisiveness is how much knowing the child
taken tells about the outcome (mutual information, bits). `tree.force(node, token)` continues
from a node's prefix with another token, from the kept cache (the prefix is not run again).
"""

from __future__ import annotations

import copy
import math
import secrets
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import (
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import BaseModelOutput

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.compat import cache_kwargs, output_cache
from ..models.devices import input_device
from ..text import printable
from ..trace import Trace
from ..trace.record import make_record, replay
from ..trace.run import SEED_MAX, prompt_ids
from ..trace.runner import held
from ..trace.seq2seq import decoder_start
from ..trace.shared_cache import unshared, widen
from ..trace.trace import decode_each
from .cost import Plan, Work, kv_bytes, plans
from .targets import first_token_id

ALTERNATIVES = 5  # the top next tokens kept per node
# generation_config settings that add logits processors sample_tree does not apply: (name, neutral values)
UNSUPPORTED = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "min_p": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "top_h": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "renormalize_logits": (None, False),
    "watermarking_config": (None,),
}


@dataclass
class Node:
    """A prefix of generated tokens. prob: p(token | prefix) under the model (temperature 1);
    sample_prob: under the sampling settings. count: sampled answers through it (forced: forced
    branches). entropy (bits) and alternatives: the model's next-token distribution after it.
    outcomes: the scorer's outcomes of the answers through it; decisiveness (bits): how much the
    child taken tells about the outcome (a branch point's; None elsewhere)."""

    id: int
    parent: int | None
    depth: int
    token_id: int | None
    token: str
    prob: float = 1.0
    sample_prob: float = 1.0
    count: int = 0
    forced: int = 0
    children: list[int] = field(default_factory=list)
    entropy: float | None = None
    alternatives: list[tuple[int, str, float]] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    outcomes: dict[Any, int] = field(default_factory=dict)
    decisiveness: float | None = None


@dataclass
class _Step:
    """What one row's distribution said at one step."""

    prob: float
    sample_prob: float
    entropy: float
    alternatives: list[tuple[int, float]]


class Samples(Sequence):
    """`tree.samples`: a Trace per answer, each its record replayed alone (run on first access, kept)."""

    def __init__(self, tree: SampleTree):
        self._tree = tree
        self._traces: dict[int, Trace] = {}

    def __len__(self) -> int:
        return len(self._tree.records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.trace(j) for j in range(*i.indices(len(self)))]
        return self.trace(i)

    def trace(self, i: int) -> Trace:
        """Answer i's Trace (its record replayed alone; raises if the tokens came out otherwise)."""
        checks.integer(i, "sample", low=-len(self), high=len(self) - 1)
        i = i % len(self)
        if i not in self._traces:
            trace = replay(self._tree.records[i], self._tree.model)
            assert isinstance(trace, Trace)
            self._traces[i] = trace
        return self._traces[i]


class SampleTree:
    """The answers of `lw.sample_tree`, merged into a prefix tree (`nodes[0]` is the prompt)."""

    def __init__(self, lm: LanguageModel, ids: list[int], settings: dict[str, Any], scorer: Callable | None):
        self.model, self.prompt_ids, self.settings, self.scorer = lm, ids, settings, scorer
        # what comes before the answers in the stream the model continues: the prompt, or an
        # encoder-decoder's decoder start token (its prompt is the encoder's source)
        self.lead = [decoder_start(lm)] if lm.kind == "seq2seq" else list(ids)
        self.nodes: list[Node] = [Node(id=0, parent=None, depth=0, token_id=None, token=lm.tokenizer.decode(ids))]
        self.generated: list[list[int]] = []  # each answer's tokens
        self.records: list[dict] = []
        self.outcome: list[Any] = []  # each answer's outcome (None without a scorer)
        self.is_forced: list[bool] = []
        self.samples = Samples(self)
        self.notes: list[str] = []
        self._watchers: list[weakref.WeakMethod] = []  # views to redraw when a branch joins (not kept alive)
        self._cache: Any = None  # the batched run's cache: row r is answer r's prefix
        self._cache_length = 0
        self._stepper: _Stepper | None = None  # one row's forward step (an encoder-decoder's source encoded once)

    @property
    def texts(self) -> list[str]:
        """Each answer's generated text."""
        return [self.model.tokenizer.decode(ids) for ids in self.generated]

    @property
    def outcomes(self) -> dict[Any, int]:
        """How many sampled answers gave each outcome (forced branches left out)."""
        return dict(Counter(o for o, forced in zip(self.outcome, self.is_forced) if not forced))

    def path(self, sample: int) -> list[Node]:
        """The nodes of one answer, from the prompt's to its leaf."""
        node = self.nodes[0]
        out = [node]
        for token in self.generated[sample]:
            node = next(self.nodes[c] for c in node.children if self.nodes[c].token_id == token)
            out.append(node)
        return out

    def branch_points(self) -> list[Node]:
        """Nodes where sampled answers split, the one that decides most of the outcome first: by
        decisiveness times the answers through it (by count alone without a scorer)."""
        split = [n for n in self.nodes if sum(self.nodes[c].count > 0 for c in n.children) > 1]
        return sorted(split, key=lambda n: (-(n.decisiveness or 0.0) * n.count, -n.count, n.id))

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children]

    def force(self, node: Node | int, token: Any, *, max_new_tokens: int | None = None, do_sample=False, seed=None):
        """Continue from `node`'s prefix with `token` (text of one token, or an id) instead of what
        was sampled, from the kept cache: greedy, or sampled with the tree's settings and `seed`.
        The branch joins the tree (forced: not counted among the samples); returns its index."""
        return _force(self, node, token, max_new_tokens, do_sample, seed)

    def watch(self, method: Callable[[], Any]) -> None:
        """Call the bound `method` when a forced branch joins (a view redrawing; held weakly)."""
        self._watchers.append(weakref.WeakMethod(method))  # type: ignore[arg-type]

    def _changed(self) -> None:
        alive = [(ref, ref()) for ref in self._watchers]
        self._watchers = [ref for ref, method in alive if method is not None]
        for _, method in alive:
            if method is not None:
                method()

    def commitment(self, sample: int) -> list[tuple[str, int | None]]:
        """Per generated token of one answer: the first layer from which the logit lens keeps that
        token top-1 up to the output (None: the model's own top-1 was another token, a sampled
        less likely one). Runs the answer's trace (tree.samples[sample]) and its lens."""
        trace = self.samples.trace(sample)
        ids = trace.input_ids.tolist()  # ends with the answer (a forced one's prefix in its prompt)
        start = len(ids) - len(self.generated[sample])
        positions = list(range(start - 1, len(ids) - 1))
        lens = trace.logit_lens(k=1, positions=positions)
        top = lens.top_ids[:, :, 0]  # [layers, positions]
        out = []
        for j, position_token in enumerate(ids[start:]):
            keeps = (top[:, j] == position_token).tolist()
            layer = None
            if keeps[-1]:
                layer = len(keeps) - 1
                while layer > 0 and keeps[layer - 1]:
                    layer -= 1
            out.append((self.model.tokenizer.decode([position_token]), layer))
        return out

    def to_dataframe(self):
        """A row per node: id, parent, depth, token, prob, sample_prob, count, forced, entropy, decisiveness."""
        import pandas as pd

        keys = ("id", "parent", "depth", "token", "prob", "sample_prob", "count", "forced", "entropy", "decisiveness")
        return pd.DataFrame([{k: getattr(n, k) for k in keys} for n in self.nodes])

    def __repr__(self) -> str:
        sampled = self.is_forced.count(False)
        split = self.branch_points()
        where = f"; first split after {split[0].depth} tokens" if split else ""
        outcomes = f"; outcomes {self.outcomes}" if self.scorer is not None else ""
        return (
            f"SampleTree({printable(self.model.name)}: {sampled} samples, {len(self.leaves())} distinct answers, "
            f"{len(self.nodes)} nodes{where}{outcomes})"
        )


def _settings(lm: LanguageModel, n, max_new_tokens, temperature, top_p, top_k, seed, extra) -> dict[str, Any]:
    """The checked settings (a refused one named, with why)."""
    for name in extra:
        if name in ("num_beams", "num_beam_groups", "diversity_penalty"):
            raise InputError(
                f"sample_tree samples answers; beam search ({name}) keeps a few best ones instead: drop {name}"
            )
        raise InputError(f"sample_tree takes n, max_new_tokens, temperature, top_p, top_k, seed, scorer; not {name!r}")
    checks.integer(n, "n", low=1)
    checks.integer(max_new_tokens, "max_new_tokens", low=1)
    # at least what a trace (and so a replay of an answer's record) takes: trace/settings.py
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 1e-3:
        raise InputError(
            f"temperature must be a number above 0 for sampling, at least 0.001 (a smaller one overflows the "
            f"logits it divides; 1.0: the model's own); got {temperature!r}"
        )
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1] (1.0: no nucleus cut); got {top_p!r}")
    checks.integer(top_k, "top_k", low=0, note=" (0: no top-k cut)")
    if seed is not None:
        checks.integer(seed, "seed", low=0, high=SEED_MAX - n, note=" (or None)")
    config = lm.model.generation_config
    for name, neutral in UNSUPPORTED.items():
        value = getattr(config, name, None)
        if value not in neutral:
            raise InputError(
                f"{lm.name}'s generation_config sets {name}={value!r}, which sample_tree does not apply: set it to "
                f"{neutral[-1]!r} (model.model.generation_config.{name} = {neutral[-1]!r}) to sample without it"
            )
    return {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}


def _processors(lm: LanguageModel, settings: dict[str, Any], sampled: bool, max_length: int) -> LogitsProcessorList:
    """generate's processors for these settings, in generate's order: the end-of-text token forced
    at max_length where the model asks for it (Marian), then (when sampling) the warpers."""
    out = LogitsProcessorList()
    forced_eos = lm.model.generation_config.forced_eos_token_id
    if forced_eos is not None:
        out.append(ForcedEOSTokenLogitsProcessor(max_length, forced_eos))
    if not sampled:
        return out
    if settings["temperature"] != 1.0:
        out.append(TemperatureLogitsWarper(settings["temperature"]))
    if settings["top_k"]:
        out.append(TopKLogitsWarper(top_k=settings["top_k"]))
    if settings["top_p"] < 1.0:
        out.append(TopPLogitsWarper(top_p=settings["top_p"]))
    return out


def _eos(lm: LanguageModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _draw(logits, sequences, warpers, generators, greedy: bool) -> tuple[torch.Tensor, list[_Step]]:
    """Each row's next token (its own generator, one multinomial per row as generate alone draws
    it; when greedy, the argmax after the processors, as generate takes it) and what its
    distribution said."""
    scores = warpers(sequences, logits.clone())
    sampling = torch.softmax(scores, -1)
    if greedy:
        chosen = scores.argmax(-1)
    else:
        draws = [torch.multinomial(sampling[r : r + 1], 1, generator=g)[:, 0] for r, g in enumerate(generators)]
        chosen = torch.cat(draws)
    return chosen, _describe(logits, sampling, chosen)


def _describe(logits: torch.Tensor, sampling: torch.Tensor, chosen: torch.Tensor) -> list[_Step]:
    """Per row: the chosen token's probability (model, sampling), the entropy and the top tokens."""
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    entropy = -(p * logp).nan_to_num().sum(-1) / math.log(2)
    top = p.topk(ALTERNATIVES, -1)
    steps = []
    for r, token in enumerate(chosen.tolist()):
        alternatives = list(zip(top.indices[r].tolist(), top.values[r].tolist()))
        steps.append(_Step(float(p[r, token]), float(sampling[r, token]), float(entropy[r]), alternatives))
    return steps


class _Stepper:
    """The forward of one decoding step: a decoder-only model takes the new ids; an encoder-decoder
    takes them as its decoder's, with the encoder's outputs (run once) and the source's mask."""

    def __init__(self, lm: LanguageModel, source: torch.Tensor):
        self.model, self.device = lm.model, input_device(lm.model)
        self.seq2seq = lm.kind == "seq2seq"
        self.extra: dict[str, Any] = {}
        if self.seq2seq:
            mask = torch.ones_like(source[None]).to(self.device)
            encoded = self.model.get_encoder()(input_ids=source[None].to(self.device), attention_mask=mask)
            self.extra = {
                "encoder_outputs": BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
                "attention_mask": mask,
            }

    def widened(self, rows: int) -> _Stepper:
        """The same for `rows` rows (the encoder's outputs repeated, not recomputed)."""
        wide = copy.copy(self)
        if self.seq2seq:
            hidden = self.extra["encoder_outputs"].last_hidden_state
            wide.extra = {
                "encoder_outputs": BaseModelOutput(last_hidden_state=hidden.expand(rows, -1, -1)),
                "attention_mask": self.extra["attention_mask"].expand(rows, -1),
            }
        return wide

    def __call__(self, ids: torch.Tensor, cache: Any) -> Any:
        name = "decoder_input_ids" if self.seq2seq else "input_ids"
        kwargs = {name: ids.to(self.device), **self.extra}
        return self.model(use_cache=True, **kwargs, **cache_kwargs(self.model, cache))


def _decode(lm: LanguageModel, step_model, cache, logits, sequences, steps_left, warpers, generators, greedy):
    """Token by token from `logits` (the distribution after `sequences`, [rows, vocab]): rows stop
    at an end-of-text token (later ones pad, as generate pads). Returns the new tokens per row,
    each row's steps and the cache (holding every input token but the last one drawn)."""
    eos = _eos(lm)
    rows = len(sequences)
    done = torch.zeros(rows, dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    said: list[list[_Step]] = [[] for _ in range(rows)]
    pad = lm.model.generation_config.pad_token_id
    pad = pad if isinstance(pad, int) else next(iter(eos), 0)
    for step in range(steps_left):
        chosen, steps = _draw(logits, sequences, warpers, generators, greedy)
        for r in range(rows):
            if not done[r]:
                tokens[r].append(int(chosen[r]))
                said[r].append(steps[r])
        chosen = torch.where(done, torch.tensor(pad), chosen)
        done |= torch.tensor([int(t) in eos for t in chosen.tolist()])
        sequences = torch.cat([sequences, chosen[:, None].to(sequences.device)], 1)
        if step == steps_left - 1 or bool(done.all()):
            break
        out = step_model(chosen[:, None], cache)
        cache = output_cache(out)
        logits = out.logits[:, -1].float().cpu()
    return tokens, said, cache


def sample_tree(
    model: LanguageModel,
    prompt: Any,
    n: int = 32,
    max_new_tokens: int = 16,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    scorer: Callable[[str], Any] | None = None,
    **settings: Any,
) -> SampleTree:
    """`n` sampled answers to `prompt` (answer i drawn with seed + i: its record replays it alone),
    decoded together from one run of the prompt, merged into a `SampleTree`. `scorer(text)` gives
    each answer's outcome (any hashable: which answer it gives, right or wrong)."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"sample_tree takes an lw.LanguageModel; got {type(model).__name__}")
    if model.plain or model.kind not in ("causal", "seq2seq"):
        raise InputError(
            f"sample_tree samples Hugging Face language models that generate (decoder-only or encoder-decoder); "
            f"{model.name} is {model.kind}"
        )
    if scorer is not None and not callable(scorer):
        raise WrongTypeError(f"scorer must be a function of an answer's text; got {type(scorer).__name__}")
    checked = _settings(model, n, max_new_tokens, temperature, top_p, top_k, seed, settings)
    if seed is None:
        seed = secrets.randbits(31)  # (recorded; torch's generator, the user's, is left as it was)
    ids = prompt_ids(model, prompt)
    checks.fits_context(len(ids), max_new_tokens, model.facts.context_length, model.name)
    tree = SampleTree(model, ids.tolist(), {"max_new_tokens": max_new_tokens, **checked}, scorer)
    seeds = [seed + i for i in range(n)]
    lead = torch.tensor(tree.lead)
    with held(model.model):
        one = _Stepper(model, ids)
        out = one(lead[None], None)
        cache = output_cache(out)
        widen(cache, n)  # (the prompt's keys and values held once)
        logits = out.logits[:, -1].float().cpu().expand(n, -1)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        sequences = lead[None].expand(n, -1)
        processors = _processors(model, checked, True, len(lead) + max_new_tokens)
        tokens, said, cache = _decode(
            model, one.widened(n), cache, logits, sequences, max_new_tokens, processors, generators, False
        )
    tree._cache, tree._cache_length, tree._stepper = cache, _cache_length(cache), one
    for i in range(n):
        generation = {"max_new_tokens": max_new_tokens, "do_sample": True, "seed": seeds[i], **checked}
        _add(tree, tokens[i], said[i], make_record(model, tree.prompt_ids, generation, (), tokens[i]), False)
    _score(tree)
    return tree


def _cache_length(cache) -> int:
    return int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0


def _add(tree: SampleTree, tokens: list[int], said: list[_Step], record: dict, forced: bool, start=None) -> int:
    """One answer into the tree (`said[j]` the distribution token j was drawn from; a forced one's
    steps begin at node `start`'s depth), the nodes it passes counted."""
    index = len(tree.generated)
    tree.generated.append(tokens)
    tree.records.append(record)
    tree.is_forced.append(forced)
    tree.outcome.append(None)
    texts = decode_each(tree.model.tokenizer, tokens)
    node = tree.nodes[0]
    offset = len(tokens) - len(said)  # a forced answer's prefix, whose steps are already in the tree
    for j, token in enumerate(tokens):
        _touch(node, forced, index)
        step = said[j - offset] if j >= offset else None
        if step is not None and node.entropy is None:
            node.entropy = step.entropy
            node.alternatives = [(t, tree.model.tokenizer.decode([t]), p) for t, p in step.alternatives]
        child = next((tree.nodes[c] for c in node.children if tree.nodes[c].token_id == token), None)
        if child is None:
            child = Node(id=len(tree.nodes), parent=node.id, depth=node.depth + 1, token_id=token, token=texts[j])
            if step is not None:
                child.prob, child.sample_prob = step.prob, step.sample_prob
            tree.nodes.append(child)
            node.children.append(child.id)
        node = child
    _touch(node, forced, index)
    return index


def _touch(node: Node, forced: bool, index: int) -> None:
    if forced:
        node.forced += 1
    else:
        node.count += 1
    node.samples.append(index)


def _score(tree: SampleTree) -> None:
    """Each answer's outcome, each node's outcome counts and each branch point's decisiveness."""
    if tree.scorer is None:
        return
    for i, text in enumerate(tree.texts):
        try:
            outcome = tree.scorer(text)
            hash(outcome)
        except Exception as error:
            raise InputError(
                f"the scorer raised {type(error).__name__}: {error} on answer {i} ({text!r}); it must return a "
                f"hashable outcome for every answer"
            ) from error
        tree.outcome[i] = outcome
    for node in tree.nodes:
        node.outcomes = dict(Counter(tree.outcome[i] for i in node.samples if not tree.is_forced[i]))
    for node in tree.nodes:
        sampled = [tree.nodes[c] for c in node.children if tree.nodes[c].count > 0]
        if len(sampled) > 1:
            left = sum(c.count / node.count * _entropy(c.outcomes) for c in sampled)
            node.decisiveness = max(0.0, _entropy(node.outcomes) - left)  # (never below 0 but by rounding)


def _entropy(counts: dict[Any, int]) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) if total else 0.0


def _force(tree: SampleTree, node, token, max_new_tokens, do_sample, seed) -> int:
    lm = tree.model
    if not isinstance(node, Node):
        checks.integer(node, "node", low=0, high=len(tree.nodes) - 1)
        node = tree.nodes[node]
    token_id = first_token_id(lm.tokenizer, token, "forced token", [], lm.facts.vocab_size)
    left = tree.settings["max_new_tokens"] - node.depth - 1
    if max_new_tokens is not None:
        left = checks.integer(max_new_tokens, "max_new_tokens", low=0)
    checks.flag(do_sample, "do_sample")
    if do_sample and seed is None:
        seed = secrets.randbits(31)
    prefix = [n.token_id for n in _ancestry(tree, node) if n.token_id is not None]  # (only the prompt's is None)
    sequence = torch.tensor([tree.lead + prefix + [token_id]])
    with held(lm.model):
        forced_step, tokens, said = _continue(tree, node, sequence, left, do_sample, seed)
    generation: dict[str, Any] = {"max_new_tokens": left, "do_sample": bool(do_sample), "seed": seed}
    if do_sample:
        generation.update({k: tree.settings[k] for k in ("temperature", "top_k", "top_p")})
    prompt = tree.prompt_ids + prefix + [token_id]  # (an encoder-decoder's prefix is its decoder's prompt)
    if lm.kind == "seq2seq":
        prompt, generation["decoder_prompt_ids"] = tree.prompt_ids, prefix + [token_id]
    record = make_record(lm, prompt, generation, (), tokens)
    index = _add(tree, prefix + [token_id] + tokens, [forced_step, *said], record, True)
    _score(tree)
    tree._changed()
    return index


def _continue(tree: SampleTree, node: Node, sequence: torch.Tensor, left: int, do_sample: bool, seed):
    """From the kept cache up to the node's prefix less its last token (which runs again: its logits
    are the distribution the forced token replaces a draw from): the forced token's step, then
    `left` more tokens, greedy or sampled, and their steps. `sequence`: the tree's lead, the
    node's prefix and the forced token."""
    lm = tree.model
    row = next((i for i in node.samples if not tree.is_forced[i]), None)
    cache, fed = _prefix_cache(tree, row, sequence.shape[1] - 2)
    step_model = tree._stepper  # (an encoder-decoder's source encoded once, by sample_tree)
    assert step_model is not None
    out = step_model(sequence[:, fed:], cache)
    before = out.logits[:, -2].float().cpu()
    sampling = _processors(lm, tree.settings, True, len(tree.lead) + tree.settings["max_new_tokens"])
    scores = sampling(cast(torch.LongTensor, sequence[:, :-1]), before.clone())
    forced_step = _describe(before, torch.softmax(scores, -1), sequence[0, -1:])[0]
    processors = _processors(lm, tree.settings, do_sample, sequence.shape[1] + left)
    generators = [torch.Generator().manual_seed(seed if seed is not None else 0)]
    logits = out.logits[:, -1].float().cpu()
    tokens, said, _ = _decode(
        lm, step_model, output_cache(out), logits, sequence, left, processors, generators, not do_sample
    )
    return forced_step, tokens[0], said[0]


def _ancestry(tree: SampleTree, node: Node) -> list[Node]:
    """The nodes from the prompt's (left out) down to `node`."""
    out = []
    while node.parent is not None:
        out.append(node)
        node = tree.nodes[node.parent]
    return out[::-1]


def _prefix_cache(tree: SampleTree, row: int | None, length: int) -> tuple[Any, int]:
    """A cache of one row holding the first `length` positions (as many as the batched run kept),
    and how many positions it holds; none (0) for a forced branch's own nodes."""
    held_length = min(length, tree._cache_length)
    if row is None or tree._cache is None or held_length < 1:
        return None, 0
    cache = copy.deepcopy(tree._cache)
    cache.batch_select_indices(torch.tensor([row]))
    unshared(cache)
    if held_length < tree._cache_length:
        try:
            cache.crop(held_length - tree._cache_length)  # (a negative count removes that many: every version)
        except RuntimeError:  # a sliding window's layers hold only its last positions: none to go back to
            if "sliding" not in " ".join(tree.notes):
                tree.notes.append("force runs the prefix again: this model's sliding-window cache cannot go back")
            return None, 0
    return cache, held_length


# Python per answer per step besides the forward (drawing, describing the distribution, the tree),
# and per vocabulary entry per answer per step (the softmaxes, top-k and sampling over the logits):
# measured on the 2-core CPU (benchmarks/bench_estimate.py)
DRAW_S = 500e-6
DRAW_S_PER_ENTRY = 6e-9


@plans(sample_tree)
def plan_sample_tree(
    model, prompt, n=32, max_new_tokens=16, *, temperature=1.0, top_p=1.0, top_k=0, seed=None, scorer=None, **settings
) -> Plan:
    """lw.sample_tree's work: the prompt once, then each step's `n` rows against the shared cache."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"sample_tree takes an lw.LanguageModel; got {type(model).__name__}")
    _settings(model, n, max_new_tokens, temperature, top_p, top_k, seed, settings)
    T = len(prompt_ids(model, prompt))
    per_step = n * (DRAW_S + DRAW_S_PER_ENTRY * model.facts.vocab_size)
    work = [
        Work("the prompt", 1, 1, T),
        Work(
            f"{max_new_tokens - 1} more steps of {n} answers",
            max_new_tokens - 1,
            n,
            1,
            past=T + max_new_tokens // 2,
            copied=max_new_tokens // 2,  # (the prompt's keys and values are held once, not copied)
            logit_copies=6,  # the step's logits, processed, their softmaxes and what is drawn from them
            extra_s=per_step,
        ),
    ]
    return Plan(model, work, kept_bytes=kv_bytes(model) * (T + n * max_new_tokens))
