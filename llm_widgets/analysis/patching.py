"""Activation patching and ablation sweeps: which layer, position or head makes an answer.

`patch(model, clean, corrupted, target, contrast)` runs the corrupted prompt
with one activation at a time taken from the clean run, and reads how much of
the clean answer comes back: effect = (patched - corrupted) / (clean -
corrupted) on logit(target) - logit(contrast) (or log p(target) without a
contrast), 0 = the corrupted answer, 1 = the clean one. `ablation_sweep` removes
one head (or one layer's attention or MLP) at a time and reads the change.

Many patched runs go through the model as one batch (one row each), chunked to
a memory budget, with the model's own attention kept: residual, attention and
MLP sites by forward hooks on the blocks, heads at each head's output inside
the engine's attention wrapper (before the output projection).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.anatomy import Anatomy, anatomy, block_output, with_block_output
from ..models.compat import takes_logits_to_keep, uses_attention_registry
from ..models.devices import input_device
from ..trace import Trace, prompt_ids
from ..trace.capture import RunState, instrument
from ..trace.runner import held
from ..trace.trace import decode_each
from .cost import (
    Estimate,
    Plan,
    Work,
    default_budget,
    deferred,
    describe_bytes,
    first_itemsize,
    model_of,
    over_budget,
    plans,
)
from .targets import first_token_id

SITES = ("residual", "attention", "mlp", "heads")
DEFAULT_BUDGET = 1 << 30  # bytes of activations a chunk of patched runs may take
# A chunk gathers about this many tokens of rows (across layers) before it stops at a layer
# boundary: enough work per forward to amortise its fixed cost (on 2 CPU cores ~80 ms for
# SmolLM2), few enough layers per chunk that little is run below a row's own layer.
MIN_TOKENS = 640


@dataclass
class Patching:
    """Normalised effects of patching (or ablating) one site at a time."""

    site: str  # "residual", "attention", "mlp", "heads" (patching) or "ablation" (a sweep)
    effect: torch.Tensor  # [layers, positions] or [layers, heads] (or [layers, heads, positions])
    tokens: list[str]  # the prompt's tokens (of the corrupted prompt for patching)
    clean_tokens: list[str]
    target: str  # (a score over positions: "")
    target_id: int | None  # (a score over positions: None)
    contrast: str | None
    contrast_id: int | None
    clean_score: float
    corrupted_score: float
    quantity: str  # what the score is: "logit(' Mary') - logit(' John')", "log p(' Mary')" or over positions
    positions: list[int] | None = None  # a score over positions: where the next token's log p is averaged
    raw: torch.Tensor | None = None  # the patched runs' scores, same shape as effect
    notes: list[str] = field(default_factory=list)
    axes: tuple[str, str] = ("layer", "position")
    model_name: str = ""

    def top(self, k: int = 10) -> list[tuple[tuple[int, ...], float]]:
        """The k cells with the largest |effect|: ((layer, position-or-head), effect); cells not
        patched (NaN: layers or positions left out with `layers` / `at`) never."""
        flat = self.effect.flatten()
        order = torch.argsort(flat.abs().nan_to_num(-1.0), descending=True)[
            : min(k, int((~flat.isnan()).sum()))
        ].tolist()
        return [
            (tuple(int(i) for i in torch.unravel_index(torch.tensor(o), self.effect.shape)), float(flat[o]))
            for o in order
        ]

    def __repr__(self) -> str:
        ((cell, value),) = self.top(1) or [((), 0.0)]
        return (
            f"Patching({self.site}, {self.quantity}: clean {self.clean_score:.3f}, corrupted "
            f"{self.corrupted_score:.3f}; effect {list(self.effect.shape)}, strongest {self.axes} {cell}: "
            f"{value:+.3f})"
        )


# --- the score, and running many patched rows as batches ---


def _scorer(target_id: int, contrast_id: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(last_logits: torch.Tensor) -> torch.Tensor:  # [rows, vocab] -> [rows]
        last_logits = last_logits.float()
        if contrast_id is None:
            # (a copy: the column alone, not a view that keeps each batch's [rows, vocab] alive to the end)
            return torch.log_softmax(last_logits, dim=-1)[:, target_id].clone()
        return last_logits[:, target_id] - last_logits[:, contrast_id]

    return score


def _position_scorer(tokens: torch.Tensor, positions: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mean log-probability of each next prompt token (`tokens[t + 1]`) at `positions`, from the
    logits of the last `score.keep` positions ([rows, keep, vocab])."""
    length = len(tokens)
    keep = length - min(positions)
    index = torch.tensor(positions) - (length - keep)
    following = tokens[torch.tensor(positions) + 1].cpu()

    def score(logits: torch.Tensor) -> torch.Tensor:  # [rows, keep, vocab] ([rows, vocab] when keep is 1) -> [rows]
        logits = logits.float() if logits.dim() == 3 else logits.float()[:, None]
        logp = torch.log_softmax(logits[:, index.to(logits.device)], dim=-1)
        picked = following.to(logp.device)[None, :, None].expand(len(logp), -1, 1)
        return logp.gather(-1, picked)[..., 0].mean(-1)

    score.keep = keep  # type: ignore[attr-defined]  # (the positions whose logits the score reads)
    return score


def _prompt_positions(positions: Any, length: int) -> list[int]:
    """`positions` of a prompt of `length` tokens whose next token is in the prompt: a (start, stop)
    span or a list."""
    last = length - 2
    if isinstance(positions, tuple) and len(positions) == 2 and all(checks.is_int(p) for p in positions):
        start, stop = positions
        if not 0 <= start < stop <= last + 1:
            raise InputError(
                f"positions span {positions} must lie within 0 to {last + 1} (stop exclusive): each "
                f"position's next token must be in the prompt"
            )
        return list(range(start, stop))
    if isinstance(positions, (list, tuple)) and positions and all(checks.is_int(p) for p in positions):
        bad = [p for p in positions if not 0 <= p <= last]
        if bad:
            raise InputError(
                f"positions {bad} are outside 0 to {last}: each position's next token must be in the prompt"
            )
        return sorted(set(int(p) for p in positions))
    raise InputError(f"positions must be a (start, stop) span or a list of positions; got {positions!r}")


def _quantity(target: str, contrast: str | None) -> str:
    return f"log p({target!r})" if contrast is None else f"logit({target!r}) - logit({contrast!r})"


def _layer_chunks(patches: list[tuple[int, Any, Any]], size: int, length: int) -> Iterator[range]:
    """Consecutive rows, at most `size`, never crossing from one patched layer to the next once
    the chunk holds MIN_TOKENS tokens: a chunk fans out at its first layer, so rows of later
    layers in it run the layers between for nothing."""
    min_rows = max(1, MIN_TOKENS // max(1, length))
    start = 0
    while start < len(patches):
        stop = start + 1
        while (
            stop < len(patches)
            and stop - start < size
            and (patches[stop][0] == patches[stop - 1][0] or stop - start < min_rows)
        ):
            stop += 1
        yield range(start, stop)
        start = stop


def row_bytes(lm: LanguageModel, length: int, keep: int = 1) -> int:
    """One patched row's activations: about length x hidden x 24 numbers (residual, attention, MLP
    intermediates) plus the logits of the last `keep` positions."""
    facts = lm.facts
    return length * max(facts.hidden_size, 1) * 24 * first_itemsize(lm.model) + keep * facts.vocab_size * 4


def _rows_per_chunk(lm: LanguageModel, length: int, budget: int, keep: int = 1) -> int:
    """Patched rows per forward within `budget` bytes."""
    return max(1, min(512, budget // row_bytes(lm, length, keep)))


def _budget_of(lm: LanguageModel, budget_bytes: Any) -> int:
    """`budget_bytes` checked, or by default DEFAULT_BUDGET (half of the free memory if that is less)."""
    if budget_bytes is None:
        return min(DEFAULT_BUDGET, default_budget(lm.model))
    return checks.integer(budget_bytes, "budget_bytes", low=1)


def chunk_budget(
    lm: LanguageModel, budget_bytes: Any, length: int, keep: int, kept: int, estimated: Callable[[], Estimate]
) -> int:
    """The bytes a batch of patched rows may take: `budget_bytes` (default: DEFAULT_BUDGET, or half of
    the free memory if less) less what the call keeps (`kept`). When that leaves no room for one row,
    refused with the call's estimate (`estimated()`)."""
    budget = _budget_of(lm, budget_bytes)
    if kept + row_bytes(lm, length, keep) > budget:
        cost = estimated()
        raise over_budget(
            cost.call,
            cost,
            budget,
            f"It keeps {describe_bytes(kept)} and runs batches of rows of {length} tokens: give a shorter prompt",
        )
    return budget - kept


def _forward_last(model: torch.nn.Module, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """Logits at the last position for a batch of identical-length rows ([rows, vocab]); with `keep`
    > 1, at the last `keep` positions ([rows, keep, vocab])."""
    # only the positions read: rows x keep x vocab, not rows x T x vocab
    kwargs: dict[str, Any] = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs)
    return out.logits[:, -1] if keep == 1 else out.logits[:, -keep:]


def _progress(total: int, enabled: bool, what: str):
    if not enabled or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="run")


# --- what is patched where ---


def _site_modules(parts: Anatomy, site: str, name: str) -> list[torch.nn.Module]:
    modules = {"residual": list(parts.blocks), "attention": list(parts.attentions), "mlp": list(parts.mlps)}[site]
    missing = [i for i, m in enumerate(modules) if m is None]
    if missing:
        raise InputError(
            f"{name} has no {site} module in layer(s) {missing[:5]}: its blocks' children are "
            f"{[n for n, _ in parts.blocks[missing[0]].named_children()]}; choose another site of "
            f"{', '.join(SITES)}"
        )
    return modules  # type: ignore[return-value]


def capture_sites(
    lm: LanguageModel, ids: torch.Tensor, sites: tuple[str, ...], parts: Anatomy, keep: int = 1
) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """One run of `ids`: each site's output per layer ([T, d], or [T, heads, head_dim] for heads)
    and the last position's logits (the last `keep` positions', see _forward_last)."""
    model = lm.model
    kept: dict[str, dict[int, torch.Tensor]] = {site: {} for site in sites}
    handles = []
    context: Any = contextlib.nullcontext()
    if "heads" in sites:

        def head_hook(layer: int, out: torch.Tensor) -> torch.Tensor:
            kept["heads"][layer] = out[0].detach().clone()
            return out

        run = RunState(lm.facts.n_layers, lm.facts.n_heads, ids.shape[1], capture=False, head_hook=head_hook)
        context = instrument(model, run)
    for site in (s for s in sites if s != "heads"):
        for layer, module in enumerate(_site_modules(parts, site, lm.name)):

            def hook(_m, _a, output, layer=layer, into=kept[site]):
                into[layer] = block_output(output)[0].detach().clone()

            handles.append(module.register_forward_hook(hook))
    try:
        with context:
            logits = _forward_last(model, ids, keep)
    finally:
        for handle in handles:
            handle.remove()
    return {site: [kept[site][layer] for layer in range(lm.facts.n_layers)] for site in sites}, logits


def capture_site(
    lm: LanguageModel, ids: torch.Tensor, site: str, parts: Anatomy, keep: int = 1
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """capture_sites for one site: its output per layer, and the logits."""
    outputs, logits = capture_sites(lm, ids, (site,), parts, keep)
    return outputs[site], logits


def run_patched(
    lm: LanguageModel,
    ids: torch.Tensor,
    site: str,
    patches: list[tuple[int, Any, Any]],
    source: list[torch.Tensor] | None,
    *,
    mode: str = "patch",
    keep: int = 1,
) -> torch.Tensor:
    """Last-position logits of one batch (the last `keep` positions', see _forward_last): row r runs
    `ids` with patches[r] = (layer, where, what) applied. site "residual"/"attention"/"mlp": `where`
    is a position (or slice), the row's output of that module takes source[layer][where]. site
    "heads": `where` is a head, (head, position) or (head, slice); the head's output takes the
    source's (mode "patch"), zero ("zero") or its own mean over positions ("mean"). `what` is unused
    (None) except for layer-level ablations, where site is "attention"/"mlp" and mode "zero": the
    whole output is zeroed. A patch of None is a row left unpatched: the reference that the other
    rows are read against."""
    model = lm.model
    parts = anatomy(model, lm.facts.n_layers)
    source = source or []  # (mode "patch" always gives one: the corrupted run's outputs)
    rows = len(patches)
    by_layer: dict[int, list[tuple[int, Any]]] = {}
    for row, patch in enumerate(patches):
        if patch is not None:
            by_layer.setdefault(patch[0], []).append((row, patch[1]))
    # Every row is the same run until its patched layer: run one row up to the first patched
    # block and fan out to all rows there (masks and position embeddings broadcast over the batch),
    # so the layers below cost one row, not `rows`.
    handles = [parts.blocks[min(by_layer)].register_forward_pre_hook(_fan_out(rows), with_kwargs=True)]
    if site == "heads":
        hook = _head_patcher(by_layer, mode, source)
        context = instrument(
            model, RunState(lm.facts.n_layers, lm.facts.n_heads, ids.shape[1], capture=False, head_hook=hook)
        )
    else:
        modules = _site_modules(parts, site, lm.name)
        handles += [
            modules[layer].register_forward_hook(_output_patcher(todo, layer, mode, source))
            for layer, todo in by_layer.items()
        ]
        context = contextlib.nullcontext()
    try:
        with context:
            return _forward_last(model, ids, keep)
    finally:
        for handle in handles:
            handle.remove()


def _head_patcher(by_layer: dict[int, list[tuple[int, Any]]], mode: str, source: list[torch.Tensor]):
    """The engine's head hook: each row's head outputs [rows, T, heads, head_dim] patched, zeroed or
    mean-replaced where its patch says."""

    def head_hook(layer: int, out: torch.Tensor) -> torch.Tensor:
        todo = by_layer.get(layer)
        if not todo:
            return out
        out = out.clone()
        for row, where in todo:
            head, position = where if isinstance(where, tuple) else (where, slice(None))
            if mode == "zero":
                out[row, position, head] = 0
            elif mode == "mean":
                out[row, :, head] = out[row, :, head].mean(dim=0, keepdim=True)
            else:
                out[row, position, head] = source[layer][position, head]
        return out

    return head_hook


def _output_patcher(todo: list[tuple[int, Any]], layer: int, mode: str, source: list[torch.Tensor]):
    """A forward hook on one layer's module: each row's output at its positions patched or zeroed."""

    def hook(_module, _args, output):
        hidden = block_output(output).clone()
        for row, where in todo:
            hidden[row, where] = 0 if mode == "zero" else source[layer][where]
        return with_block_output(output, hidden)

    return hook


def _paired_ids(lm: LanguageModel, clean: Any, corrupted: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The two prompts' ids, which must line up token for token."""
    clean_ids, corrupted_ids = _ids(lm, clean), _ids(lm, corrupted)
    if len(clean_ids) != len(corrupted_ids):
        tok = lm.tokenizer
        raise InputError(
            f"clean and corrupted prompts must have the same number of tokens to patch position by "
            f"position; got {len(clean_ids)} ({decode_each(tok, clean_ids.tolist())}) "
            f"and {len(corrupted_ids)} ({decode_each(tok, corrupted_ids.tolist())}). "
            f"Reword one so their tokens line up (e.g. swap names of one token each)"
        )
    return clean_ids, corrupted_ids


@dataclass
class _Cells:
    """The patches of a map (layer, where, None), where each lands in the map (flat indices), and the
    cells known without a run: before the prompts' first difference nothing differs to patch (0)."""

    patches: list
    run: list[int]
    unchanged: list[int]
    shape: tuple[int, ...]


def _cells(site, n_layers, n_heads, n, per_position, layers=None, at=None, first=0) -> _Cells:
    """The cells of a map, layer x position, or for heads layer x head (x position), at `layers`
    and positions `at` (default all). n_heads: from the captured tensor, never the config."""
    layers = range(n_layers) if layers is None else layers
    at = range(n) if at is None else at
    if site == "heads" and not per_position:
        where = slice(None) if len(at) == n else list(at)
        cells = [
            ((l, h if len(at) == n else (h, where), None), l * n_heads + h) for l in layers for h in range(n_heads)
        ]
        return _Cells([c for c, _ in cells], [i for _, i in cells], [], (n_layers, n_heads))
    heads = range(n_heads) if site == "heads" else [None]
    shape = (n_layers, n_heads, n) if site == "heads" else (n_layers, n)
    run, unchanged, patches = [], [], []
    for l in layers:
        for h in heads:
            for p in at:
                index = (l * n_heads + h) * n + p if h is not None else l * n + p
                if p < first:
                    unchanged.append(index)
                else:
                    run.append(index)
                    patches.append((l, (h, p) if h is not None else p, None))
    return _Cells(patches, run, unchanged, shape)


def _patched_positions(at: Any, length: int) -> list[int] | None:
    """`at`: a (start, stop) span or a list of positions of the prompt (None: all)."""
    if at is None:
        return None
    if isinstance(at, tuple) and len(at) == 2 and all(checks.is_int(p) for p in at):
        if not 0 <= at[0] < at[1] <= length:
            raise InputError(f"at {at} must be a span within the prompt's 0 to {length} (stop exclusive)")
        return list(range(*at))
    return sorted(set(checks.integers(at, "at", low=0, high=length - 1)))


def _first_difference(clean: torch.Tensor, corrupted: torch.Tensor) -> int:
    """The first position where the prompts differ (before it a causal model's runs are the same)."""
    differ = (clean != corrupted).nonzero()
    return int(differ[0, 0]) if len(differ) else len(clean)


def _filled(values: torch.Tensor, cells: _Cells, known: float) -> torch.Tensor:
    """The map: the run cells' values, `known` where nothing could change, NaN where not asked."""
    out = torch.full((math.prod(cells.shape),), math.nan)
    out[cells.run] = values.float()
    out[cells.unchanged] = known
    return out.reshape(cells.shape)


def _layer_sweep(lm: LanguageModel, ids, score, budget: int, notes: list[str]):
    """Each layer's whole attention output, then MLP output, zeroed in turn: the score's change."""
    n_layers = lm.facts.n_layers
    whole = [(l, slice(None), None) for l in range(n_layers)]
    attention = _run_all(lm, ids, "attention", whole, None, score, budget, False, "", mode="zero")[1]
    if all(m is not None for m in anatomy(lm.model, n_layers).mlps):
        return attention, _run_all(lm, ids, "mlp", whole, None, score, budget, False, "", mode="zero")[1]
    notes.append("this model's blocks have no MLP module found: only heads and attention were swept")
    return attention, None


def _fan_out(rows: int):
    def hook(_module, args, kwargs):
        if args:
            return (args[0].repeat(rows, *[1] * (args[0].dim() - 1)), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hidden.repeat(rows, *[1] * (hidden.dim() - 1))}

    return hook


# --- the public entry points ---


def _ids(lm: LanguageModel, prompt: Any) -> torch.Tensor:
    if isinstance(prompt, Trace):
        return prompt.input_ids[: prompt.n_prompt]
    return prompt_ids(lm, prompt)


def _targets(lm: LanguageModel, target: Any, contrast: Any, notes: list[str]) -> tuple[int, int | None]:
    vocab = len(lm.tokenizer)
    target_id = first_token_id(lm.tokenizer, target, "target", notes, vocab)
    contrast_id = None if contrast is None else first_token_id(lm.tokenizer, contrast, "contrast", notes, vocab)
    if contrast_id == target_id:
        raise InputError(f"target and contrast are the same token ({target!r}): give two different tokens")
    return target_id, contrast_id


@dataclass
class _Scoring:
    """The score a patch or sweep reads, and what it is."""

    score: Callable[[torch.Tensor], torch.Tensor]
    target_id: int | None
    contrast_id: int | None
    quantity: str  # in words
    positions: list[int] | None = None  # a score over positions: which

    def fields(self, tok: Any) -> dict[str, Any]:
        """Patching's fields that say what was scored."""
        return {
            "target": "" if self.target_id is None else tok.decode([self.target_id]),
            "target_id": self.target_id,
            "contrast": None if self.contrast_id is None else tok.decode([self.contrast_id]),
            "contrast_id": self.contrast_id,
            "quantity": self.quantity,
            "positions": self.positions,
        }


def _score(lm: LanguageModel, target: Any, contrast: Any, positions: Any, tokens: torch.Tensor, notes: list[str]):
    """The score of `target` (against `contrast`) at the last position, or over `positions`."""
    if positions is None:
        if target is None:
            raise InputError("give the target token (the clean run's answer), or positions to score the prompt's own")
        target_id, contrast_id = _targets(lm, target, contrast, notes)
        tok = lm.tokenizer
        contrast_text = None if contrast_id is None else tok.decode([contrast_id])
        quantity = _quantity(tok.decode([target_id]), contrast_text)
        return _Scoring(_scorer(target_id, contrast_id), target_id, contrast_id, quantity)
    if target is not None or contrast is not None:
        raise InputError(
            "positions scores the prompt's own next tokens at those positions: leave target and contrast None (or "
            "drop positions to score a target at the last position)"
        )
    chosen = _prompt_positions(positions, len(tokens))
    where = f"{chosen[0]}-{chosen[-1]}" if chosen == list(range(chosen[0], chosen[-1] + 1)) else str(chosen)
    return _Scoring(
        _position_scorer(tokens, chosen), None, None, f"mean log p(next token) at positions {where}", chosen
    )


def _check_model(lm: Any, site: str) -> None:
    if not isinstance(lm, LanguageModel):
        raise WrongTypeError(f"patching takes an lw.LanguageModel (from lw.load_model); got {type(lm).__name__}")
    lm.check_analysable("activation patching")
    if lm.facts.kind != "causal":
        raise InputError(f"{lm.name} is a masked model: patching reads the next-token prediction of causal LMs")
    if site not in SITES:
        raise InputError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if site == "heads" and not uses_attention_registry(lm.model):
        raise InputError(
            f"site='heads' needs a model whose attention goes through transformers' "
            f"AttentionInterface; {lm.facts.architecture} computes attention its own way. "
            f"Use site='attention' (each layer's whole attention output)"
        )


def patch(
    model: LanguageModel,
    clean: Any,
    corrupted: Any,
    target: Any = None,
    contrast: Any = None,
    *,
    site: str = "residual",
    per_position: bool = False,
    positions: Any = None,
    layers: Any = None,
    at: Any = None,
    budget_bytes: int | None = None,
    progress: bool = True,
) -> Patching:
    """Activation patching from the `clean` prompt into the `corrupted` one (strings, token ids or
    traces; the same number of tokens). site: "residual" (each block's output, layer x position),
    "attention" / "mlp" (each block's attention or MLP output, layer x position), "heads" (each
    head's output at every position, layer x head; per_position=True: layer x head x position).
    Effect: (patched - corrupted) / (clean - corrupted) of logit(target) - logit(contrast), or of
    log p(target) without a contrast; with `positions` (a (start, stop) span or a list, and target
    None) of the mean log p of the clean prompt's next token at those positions (a behaviour spread
    over a sequence). `layers` and `at` (positions: a span or a list) patch part of the map (the
    rest NaN); positions before the prompts' first difference are 0 without a run. Batches of
    patched runs stay within `budget_bytes` (default: 1 GiB, or half the free memory if less; a
    prompt too long for it is refused with its estimate, lw.estimate)."""
    _check_patch(model, site, per_position, progress)
    lm = model
    clean_ids, corrupted_ids = _paired_ids(lm, clean, corrupted)
    notes: list[str] = []
    scoring = _score(lm, target, contrast, positions, clean_ids, notes)
    score, keep = scoring.score, getattr(scoring.score, "keep", 1)
    facts, T = lm.facts, len(clean_ids)
    chosen = _chosen(lm, layers, at, T)
    budget = chunk_budget(lm, budget_bytes, T, keep, kept_bytes(lm, T), deferred(patch, locals()))
    parts, device = anatomy(lm.model, facts.n_layers), input_device(lm.model)
    first = _first_difference(clean_ids, corrupted_ids)
    clean_ids, corrupted_ids = clean_ids[None].to(device), corrupted_ids[None].to(device)
    with held(lm.model):
        source, clean_logits = capture_site(lm, clean_ids, site, parts, keep)
        corrupted_logits = _forward_last(lm.model, corrupted_ids, keep)
        clean_score, corrupted_score = float(score(clean_logits)), float(score(corrupted_logits))
        n_heads = source[0].shape[1] if site == "heads" else 0
        cells = _cells(site, facts.n_layers, n_heads, T, per_position, *chosen, first=first)
        raw, change, gap = _run_all(lm, corrupted_ids, site, cells.patches, source, score, budget, progress, "patching")
    effect = _filled(_normalised(change, gap, clean_score, corrupted_score, notes), cells, 0.0)
    tok = lm.tokenizer
    return Patching(
        site=site,
        effect=effect,
        raw=_filled(raw, cells, corrupted_score),
        **scoring.fields(tok),
        clean_score=clean_score,
        corrupted_score=corrupted_score,
        tokens=decode_each(tok, corrupted_ids[0].tolist()),
        clean_tokens=decode_each(tok, clean_ids[0].tolist()),
        notes=notes,
        axes=("layer", "head") if site == "heads" else ("layer", "position"),
        model_name=lm.name,
    )


def _check_patch(model: Any, site: str, per_position: Any, progress: Any) -> None:
    _check_model(model, site)
    checks.flag(per_position, "per_position")
    checks.flag(progress, "progress")
    if per_position and site != "heads":
        raise InputError(f"per_position splits heads by position (site='heads'); site {site!r} is per position already")


def _chosen(lm: LanguageModel, layers: Any, at: Any, length: int) -> tuple[list[int] | None, list[int] | None]:
    """The layers and positions to patch, checked (None: all)."""
    if layers is not None:
        layers = sorted(set(checks.integers(layers, "layers", low=0, high=lm.facts.n_layers - 1)))
    return layers, _patched_positions(at, length)


def _run_all(lm, ids, site, patches, source, score, budget, progress, what, mode="patch"):
    """Every patched row's score; its change from an unpatched row of the same batch; and, patching
    the residual stream, the change in that batch of a patch that gives the clean run back (the last
    layer's residual at every position), else None. The references ride in each batch because a
    batch of n rows and a lone forward round differently (about 1e-7): read against lone forwards, a
    patch that changes nothing would not read exactly 0, nor one that restores the clean run exactly 1."""
    keep = getattr(score, "keep", 1)
    size = _rows_per_chunk(lm, ids.shape[1], budget, keep)
    bar = _progress(len(patches), progress, what)
    restore = (len(source) - 1, slice(None), None) if mode == "patch" and site == "residual" and source else None
    extra = [None] if restore is None else [restore, None]
    scores, changes, gaps = [], [], []
    try:
        for chunk in _layer_chunks(patches, size, ids.shape[1]):
            batch = [patches[i] for i in chunk] + extra
            rows = score(run_patched(lm, ids, site, batch, source, mode=mode, keep=keep)).cpu()
            n = len(chunk)
            scores.append(rows[:n])
            changes.append(rows[:n] - rows[-1])
            gaps.append((rows[n] - rows[-1]).expand(n))
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    if not patches:  # (every cell known without a run)
        return torch.zeros(0), torch.zeros(0), None if restore is None else torch.zeros(0)
    return torch.cat(scores), torch.cat(changes), None if restore is None else torch.cat(gaps)


def _normalised(change: torch.Tensor, gap: torch.Tensor | None, clean: float, corrupted: float, notes: list[str]):
    """change / (clean - corrupted), the gap measured in each row's own batch where one was."""
    if not math.isfinite(clean - corrupted) or abs(clean - corrupted) < 1e-6:
        notes.append(
            f"the clean and corrupted scores are equal ({clean:.4g}): effects are shown unnormalised "
            f"(patched - corrupted)"
        )
        return change + 0.0  # + 0.0: a change of nothing reads 0, not -0.0
    return change / (clean - corrupted if gap is None else gap) + 0.0


@dataclass(repr=False)  # Patching's summary, not every tensor
class Sweep(Patching):
    """An ablation sweep: `effect` [layers, heads] is the change in the score when each head is
    removed (negative: the head helped the target); `attention` and `mlp` [layers] the same for
    each layer's whole attention and MLP output."""

    attention: torch.Tensor | None = None
    mlp: torch.Tensor | None = None
    method: str = "zero"

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k heads whose removal moves the score most: (layer, head, change)."""
        return [(cell[0], cell[1], value) for cell, value in self.top(k)]


def ablation_sweep(
    trace: Trace,
    target: Any = None,
    contrast: Any = None,
    *,
    method: str = "zero",
    layers: bool = True,
    positions: Any = None,
    budget_bytes: int | None = None,
    progress: bool = True,
) -> Sweep:
    """Remove every head in turn (and, with layers=True, every layer's attention and MLP output)
    on the trace's prompt and read the change in the score (logit(target) - logit(contrast), or
    log p(target)); target defaults to the token the trace produced after the prompt. With
    `positions` (a (start, stop) span or a list; target None) the score is the mean log p of the
    prompt's next token at those positions: the heads a behaviour over a sequence needs (induction).
    method: "zero" or "mean" (the head's mean over positions, as lw.AblateHead). Batched like `patch`."""
    if not isinstance(trace, Trace):
        raise WrongTypeError(f"ablation_sweep takes a Trace (from model.trace(...)); got {type(trace).__name__}")
    checks.choice(method, "method", ("zero", "mean"))
    checks.flag(layers, "layers")
    checks.flag(progress, "progress")
    lm = trace.model
    _check_model(lm, "heads")
    notes: list[str] = []
    prompt = trace.input_ids[: trace.n_prompt]
    if positions is None and target is None:
        target = trace.next_token_id
    scoring = _score(lm, target, contrast, positions, prompt, notes)
    score = scoring.score
    facts = lm.facts
    keep = getattr(score, "keep", 1)
    budget = chunk_budget(lm, budget_bytes, len(prompt), keep, 0, deferred(ablation_sweep, locals()))
    device = input_device(lm.model)
    ids = prompt[None].to(device)
    with held(lm.model):
        base = float(score(_forward_last(lm.model, ids, keep)))
        heads = [(l, h, None) for l in range(facts.n_layers) for h in range(facts.n_heads)]
        head_scores, change, _ = _run_all(
            lm, ids, "heads", heads, None, score, budget, progress, "ablating heads", mode=method
        )
        attention, mlp = _layer_sweep(lm, ids, score, budget, notes) if layers else (None, None)
    return Sweep(
        site="ablation",
        effect=change.reshape(facts.n_layers, facts.n_heads),
        raw=head_scores.reshape(facts.n_layers, facts.n_heads),
        tokens=trace.tokens[: trace.n_prompt],
        clean_tokens=trace.tokens[: trace.n_prompt],
        **scoring.fields(lm.tokenizer),
        clean_score=base,
        corrupted_score=base,
        notes=notes,
        axes=("layer", "head"),
        model_name=lm.name,
        attention=attention,
        mlp=mlp,
        method=method,
    )


# --- what a patch or a sweep will cost (lw.estimate) ---


def patched_work(lm: LanguageModel, length: int, patches: list, budget: int, keep: int, extra: int, what: str):
    """The patched forwards `_run_all` makes, as Work: chunks of the same rows and first layer merged."""
    n_layers = max(1, lm.facts.n_layers)
    size = _rows_per_chunk(lm, length, budget, keep)
    counts: dict[tuple[int, int], int] = {}
    for chunk in _layer_chunks(patches, size, length):
        key = (len(chunk) + extra, patches[chunk[0]][0])
        counts[key] = counts.get(key, 0) + 1
    return [
        Work(
            what,
            n,
            rows,
            length,
            share=(n_layers - layer) / n_layers,
            below=layer / n_layers,
            logits=keep,
            logit_copies=2,
        )
        for (rows, layer), n in sorted(counts.items())
    ]


def kept_bytes(lm: LanguageModel, length: int) -> int:
    """What patching keeps from the clean run: one site's output at every layer."""
    return lm.facts.n_layers * length * lm.facts.hidden_size * first_itemsize(lm.model)


def planned_budget(lm: LanguageModel, budget_bytes: Any, kept: int) -> int:
    """The chunks' budget as the call works it out (without refusing: the estimate says why it would)."""
    return max(1, _budget_of(lm, budget_bytes) - kept)


@plans(patch)
def plan_patch(
    model,
    clean,
    corrupted,
    target=None,
    contrast=None,
    *,
    site="residual",
    per_position=False,
    positions=None,
    layers=None,
    at=None,
    budget_bytes=None,
    progress=True,
) -> Plan:
    """lw.patch's work: the clean run kept at every layer, the corrupted run, the patched batches."""
    _check_model(model, site)
    lm = model
    clean_ids, corrupted_ids = _paired_ids(lm, clean, corrupted)
    scoring = _score(lm, target, contrast, positions, clean_ids, [])
    keep, facts, T = getattr(scoring.score, "keep", 1), lm.facts, len(clean_ids)
    first = _first_difference(clean_ids, corrupted_ids)
    patches = _cells(
        site, facts.n_layers, facts.n_heads, T, per_position, *_chosen(lm, layers, at, T), first=first
    ).patches
    extra = 2 if site == "residual" else 1  # the unpatched reference (and the clean-restoring one) in each batch
    work = [Work("clean and corrupted runs", 2, 1, T, logits=keep)]
    budget = planned_budget(lm, budget_bytes, kept_bytes(lm, T))
    work += patched_work(lm, T, patches, budget, keep, extra, f"{len(patches):,} patched runs")
    return Plan(lm, work, kept_bytes=kept_bytes(lm, T))


@plans(ablation_sweep)
def plan_sweep(
    trace,
    target=None,
    contrast=None,
    *,
    method="zero",
    layers=True,
    positions=None,
    budget_bytes=None,
    progress=True,
) -> Plan:
    """lw.ablation_sweep's work: one run, every head ablated, then every layer's attention and MLP."""
    lm = model_of(trace, "trace")
    prompt = trace.input_ids[: trace.n_prompt]
    scoring = _score(
        lm, trace.next_token_id if positions is None and target is None else target, contrast, positions, prompt, []
    )
    keep, facts, T = getattr(scoring.score, "keep", 1), lm.facts, len(prompt)
    heads = [(l, h, None) for l in range(facts.n_layers) for h in range(facts.n_heads)]
    work = [Work("the run", 1, 1, T, logits=keep)]
    budget = planned_budget(lm, budget_bytes, 0)
    work += patched_work(lm, T, heads, budget, keep, 1, f"{len(heads):,} heads ablated")
    if layers:
        whole = [(l, slice(None), None) for l in range(facts.n_layers)]
        work += 2 * patched_work(lm, T, whole, budget, keep, 1, "each layer's attention, then MLP, zeroed")
    return Plan(lm, work)
