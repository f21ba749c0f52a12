"""`Trace`: one instrumented run: its tokens, predictions and attention on demand.

The attention itself is recomputed from the captured queries and keys by the
trace's `AttentionStack`s (attention.py): one for a decoder-only model, three
for an encoder-decoder (encoder, decoder, cross).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from .. import checks
from .._provide import provided
from ..errors import InputError
from ..models import LanguageModel
from .attention import GRID_CELL, OVERVIEW, AttentionStack

if TYPE_CHECKING:  # the result types, for type checkers: analyses (the layer above) make them
    from ..analysis.attribution import Attribution
    from ..analysis.explain import AttentionExplanation
    from ..analysis.lens import LogitLens
    from ..analysis.profile import Profile


class Trace:
    """One run of a model: tokens, output, top-k predictions, and attention on demand."""

    def __init__(
        self,
        *,
        model: LanguageModel,
        input_ids: torch.Tensor,
        n_prompt: int,
        stacks: dict[str, AttentionStack],
        edits: tuple,
        top_k: list[tuple[torch.Tensor, torch.Tensor]],
        chosen: list[float],
        logits: torch.Tensor | None,
        record: dict,
        first_logprobs: torch.Tensor | None = None,
        n_source: int = 0,
    ):
        self.model = model
        self.input_ids = (
            input_ids  # [T]: prompt then generated (an encoder-decoder's: source, decoder start, generated)
        )
        self.n_prompt = n_prompt
        self.n_source = n_source  # an encoder-decoder's source tokens, at positions 0 .. n_source - 1 (else 0)
        self.edits = edits
        self.logits = logits  # [T_prompt, vocab] when keep_logits=True
        self.record = record
        self._stacks = stacks
        self._top_k = top_k
        self._chosen = chosen
        self._first_logprobs = first_logprobs  # [vocab] log-probabilities right after the prompt
        self._profile = None  # the run's Profile, once asked for
        shown = self.stack()
        self.n_layers, self.n_heads = shown.n_layers, shown.n_heads
        # every layer, but in a hybrid model only those that attend (the others have nothing to show)
        self.attention_layers = shown.attention_layers

    @cached_property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (asked of the model when needed: its facts count every parameter)."""
        return self.model.facts.n_kv_heads

    # Text is decoded when first asked for: a long prompt's tokens take longer to
    # decode than a GPU takes to run it, and many traces (patching, benchmarks) never show them.
    @cached_property
    def tokens(self) -> list[str]:
        """Each token as text, one string per position."""
        return decode_each(self.model.tokenizer, self.input_ids.tolist())

    @cached_property
    def prompt_text(self) -> str:
        """The prompt as text (an encoder-decoder's source text)."""
        end = self.n_source or self.n_prompt
        return self.model.tokenizer.decode(self.input_ids[:end].tolist(), skip_special_tokens=bool(self.n_source))

    @cached_property
    def output_text(self) -> str:
        """The generated text; a classifier's predicted class (a token classifier's, one per token)."""
        if self.model.kind == "token_classifier":
            return " ".join(label for _, label, _ in self.token_labels)
        if self.model.labels:
            return self.model.labels[self.next_token_id]
        return self.model.tokenizer.decode(self.input_ids[self.n_prompt :].tolist(), skip_special_tokens=True)

    @property
    def label_probabilities(self) -> dict[str, float]:
        """A sequence classifier's probability of each class, by name ({} for other models)."""
        labels = self.model.labels
        if self.model.kind != "classifier" or self._first_logprobs is None:
            return {}
        return {name: float(p) for name, p in zip(labels, self._first_logprobs.exp().tolist())}

    @property
    def token_labels(self) -> list[tuple[str, str, float]]:
        """A token classifier's (token, predicted class, its probability) for each token ([] for other models)."""
        if self.model.kind != "token_classifier":
            return []
        labels = self.model.labels
        return [(token, labels[int(ids[0])], float(probs[0])) for token, (ids, probs) in zip(self.tokens, self._top_k)]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def generated_ids(self) -> list[int]:
        return self.input_ids[self.n_prompt :].tolist()

    @property
    def next_token_id(self) -> int:
        """The token that followed the prompt: the first generated one, or else the most likely."""
        return self.generated_ids[0] if self.generated_ids else int(self._top_k[0][0][0])

    def __repr__(self) -> str:
        edits = f", {len(self.edits)} edits" if self.edits else ""
        prompt = f"{self.n_source} source" if self.n_source else f"{self.n_prompt} prompt"
        return (
            f"Trace({self.model.name!r}: {prompt} + {len(self) - self.n_prompt} generated tokens"
            f"{edits}; output {self.output_text!r})"
        )

    # --- predictions ---

    def top_k(self, step: int = 0, k: int = 10) -> list[tuple[str, float]]:
        """The k most likely next tokens at generation step `step` (0: right after the prompt),
        from the model's own distribution (before sampling settings), with probabilities."""
        checks.of_int_type(step, "step")
        checks.of_int_type(k, "k")
        if not 0 <= step < len(self._top_k):
            raise InputError(f"step {step} is out of range: this trace has steps 0 to {len(self._top_k) - 1}")
        ids, probs = self._top_k[step]
        if not 1 <= k <= len(ids):
            raise InputError(f"k must be between 1 and {len(ids)}; got {k}")
        tok, labels = self.model.tokenizer, self.model.labels
        name = (lambda i: labels[i]) if labels else (lambda i: tok.decode([i]))  # a classifier's top k are classes
        return [(name(i), float(p)) for i, p in zip(ids[:k].tolist(), probs[:k].tolist())]

    def chosen_probability(self, step: int) -> float:
        """Probability the model gave the token that was actually generated at `step`."""
        checks.of_int_type(step, "step")
        if not 0 <= step < len(self._chosen):
            raise InputError(f"step {step} is out of range: this trace generated steps 0 to {len(self._chosen) - 1}")
        return self._chosen[step]

    def token_id(self, token: str | int) -> int:
        """The id of a token given as an id or as text; text that is several tokens is refused.
        A classifier's "tokens" are its classes, by name or id."""
        if self.model.labels:
            return self.model.label_id(token)
        tok = self.model.tokenizer
        if checks.is_int(token):
            if not 0 <= token < len(tok):
                raise InputError(f"token id {token} is outside the vocabulary (0 to {len(tok) - 1})")
            return token
        if not isinstance(token, str) or not token:
            raise InputError(f"give a token as text (e.g. ' Paris') or as an id; got {token!r}")
        ids = tok.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tok.batch_decode([[i] for i in ids])
            raise InputError(
                f"{token!r} is {len(ids)} tokens for this tokenizer ({pieces}); give one token, e.g. "
                f"{pieces[0]!r} (mind the leading space)"
            )
        return ids[0]

    def probability(self, token: str | int, step: int = 0) -> float:
        """p(token) at generation step `step`: exact at step 0 (right after the prompt); at later
        steps known for the generated token and the top tokens kept per step."""
        token_id = self.token_id(token)
        checks.of_int_type(step, "step")
        if step == 0 and self._first_logprobs is not None:
            return float(self._first_logprobs[token_id].exp())
        if not 0 <= step < len(self._top_k):
            raise InputError(f"step {step} is out of range: this trace has steps 0 to {len(self._top_k) - 1}")
        if step < len(self.generated_ids) and self.generated_ids[step] == token_id:
            return self._chosen[step]
        ids, probs = self._top_k[step]
        hits = (ids == token_id).nonzero()
        if len(hits) == 0:
            raise InputError(
                f"{token!r} is not among the {len(ids)} most likely tokens kept for step {step}; "
                f"only step 0 keeps every token's probability"
            )
        return float(probs[hits[0, 0]])

    # --- gradients ---

    @provided
    def attribute(
        self,
        target: str | int | None = None,
        contrast: str | int | None = None,
        method: str = "grad_x_input",
        step: int | None = None,
        n_steps: int = 64,
        baseline: str = "zeros",
        budget_bytes: int | None = None,
        progress: bool = True,
    ) -> Attribution:
        """Which input tokens drove the token at `step` (0: right after the prompt).

        Scores log p(target), or with `contrast` logit(target) - logit(contrast)
        ("why X, not Y"). target defaults to the token the run produced. method:
        "grad_x_input", "integrated_gradients" (n_steps steps from `baseline`: "zeros", or
        every position holding the "eos" or "pad" token's embedding),
        "attention_x_grad" (also head importance [layers, heads]) or "occlusion".
        budget_bytes: the memory the computation may take (default: half of what the device
        has free); on a long prompt its backward then keeps only each block's input and
        recomputes the rest, integrated gradients batch fewer steps, and a computation
        that cannot fit is refused with its estimate (`lw.estimate(trace.attribute, ...)`).
        progress: a progress bar over integrated gradients' steps and occlusion's tokens.
        Returns an `Attribution`; the model's parameters are untouched.
        Implemented by llm_widgets.analysis (the layer above).
        """
        ...

    def profile(self) -> Profile:
        """Where this run's time and memory went: an `lw.Profile` of the same prompt, generation
        length and edits (a run of its own, timed module by module), computed on the first call
        (or at once with model.trace(..., profile=True)) and kept."""
        if self._profile is None:
            self._profile = self._profiled()
        return self._profile

    @provided
    def _profiled(self) -> Profile:
        """A new profile of this run (llm_widgets.analysis, the layer above)."""
        ...

    @provided
    def logit_lens(self, k: int = 5, target: str | int | None = None, positions: Any = None) -> LogitLens:
        """What the residual stream after each layer predicts at each position: the top-k tokens and
        probabilities, decoded through the model's own final norm and unembedding (at the last layer,
        the model's prediction). With `target` (text or id), its probability and rank too.
        positions: all (default), an int or a list. Returns a `LogitLens`.
        Implemented by llm_widgets.analysis (the layer above)."""
        ...

    @provided
    def explain_attention(
        self, layer: int, head: int, query: int, key: int | None = None, depth: int = 1, *, stack: str | None = None
    ) -> AttentionExplanation:
        """Why head `layer`.`head` at position `query` attends where it does: the pre-softmax score
        of (query, key) (every key the query sees when `key` is None) split exactly into terms, one
        per pair of residual-stream components (embeddings, each earlier head and MLP, biases) on
        the query and the key side, with each normalisation's scale held at its run value.
        An encoder-decoder's `stack`: "encoder", "decoder" or "cross" (the default: its queries
        read the decoder's stream, its keys the encoder's output); positions are the trace's.
        Returns an `AttentionExplanation` (.top(n), .terms(), .scores, .total, .residual_error).
        Implemented by llm_widgets.analysis (the layer above)."""
        ...

    # --- attention ---

    @property
    def stacks(self) -> tuple[str, ...]:
        """The kinds of attention this trace holds: ("self",), or an encoder-decoder's
        ("encoder", "decoder", "cross")."""
        return tuple(self._stacks)

    def stack(self, name: str | None = None) -> AttentionStack:
        """One kind of attention (None: the model's only one; an encoder-decoder's cross-attention)."""
        if name is None:
            return self._stacks[self.default_stack]
        if name not in self._stacks:
            raise InputError(
                f"stack {name!r} is not in this trace: it has {list(self._stacks)}"
                + ("" if len(self._stacks) > 1 else " (an encoder-decoder has 'encoder', 'decoder' and 'cross')")
            )
        return self._stacks[name]

    @property
    def default_stack(self) -> str:
        return "cross" if "cross" in self._stacks else next(iter(self._stacks))

    @property
    def sink_layers(self) -> tuple[int, ...]:
        """Layers whose heads have attention sinks (GPT-OSS, ...): each row's weights over the keys sum
        to less than 1; the rest went to the sink."""
        return self.stack().sink_layers

    def attention(
        self, layer: int, head: int, queries: Any = None, keys: Any = None, *, stack: str | None = None
    ) -> torch.Tensor:
        """Attention probabilities [len(queries), len(keys)] of one head, float32 on the CPU.

        queries / keys: None (all), a position, a (start, stop) span, a slice or a list of
        positions of the trace. Rows are normalised over all keys, whatever tile you ask.
        An encoder-decoder's stack: "encoder" (source to source), "decoder" (output to
        output) or "cross" (output to source, the default); positions are the trace's
        (the source tokens first, then the decoder's).
        """
        return self.stack(stack).attention(layer, head, queries, keys)

    def attention_overview(
        self,
        layer: int,
        head: int,
        size: int = OVERVIEW,
        queries: tuple[int, int] | None = None,
        keys: tuple[int, int] | None = None,
        *,
        stack: str | None = None,
    ) -> torch.Tensor:
        """Max-pooled probabilities of a region, at most size x size: the first paint of a long
        sequence (the whole matrix) and the detail tiles of a zoom (queries / keys as (start, stop)).

        Computed blockwise on the captured tensors' device: only the pooled
        result comes back to the CPU, and no block holds more than a few MiB of scores.
        """
        return self.stack(stack).overview(layer, head, size, queries, keys)

    def attention_grid(self, size: int = GRID_CELL, *, stack: str | None = None) -> torch.Tensor:
        """Every head's thumbnail, stacked layer by layer, head by head: [layers * heads * bins, bins].

        Up to EXACT_GRID tokens each thumbnail is the exact max-pooled map. Beyond,
        it shows one real query row per bin (the bin's last), keys max-pooled:
        exact rows, sampled queries, so all heads of a long trace paint in about a
        second instead of costing T x T per head. The heads of a layer are computed together.
        """
        return self.stack(stack).grid(size)


def decode_each(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each id decoded on its own, as `batch_decode([[i] for i in ids])` does; in one call
    into the Rust tokenizer when there is one (a Python loop costs ~2.5 us a token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False)
    if backend is not None and hasattr(backend, "decode_batch") and not cleanup:
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tokenizer.batch_decode([[i] for i in ids])


TOP_K_KEPT = 20  # the most likely tokens a trace keeps per step


def predictions(logits: list[torch.Tensor], generated: list[int]) -> dict:
    """What a Trace keeps of a run's logits (one [vocab] per step): the top tokens of each step, the
    generated tokens' probabilities, and every token's log-probability at step 0."""
    return {
        "top_k": [top_k_of(step, TOP_K_KEPT) for step in logits],
        "chosen": [probability_of(step, token) for step, token in zip(logits, generated)],
        "first_logprobs": torch.log_softmax(logits[0].float(), dim=-1).cpu(),
    }


def top_k_of(logits: torch.Tensor, k: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = torch.topk(probs, min(k, probs.shape[-1]))
    return ids.cpu(), values.cpu()


def probability_of(logits: torch.Tensor, token: int) -> float:
    return float(torch.softmax(logits.float(), dim=-1)[token])
