"""`LanguageModel`: a Hugging Face model, its tokenizer, and the facts about it
that every other layer needs (layers, heads, context length, attention)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .. import checks
from .._provide import provided
from ..errors import InputError, WrongTypeError
from ..text import printable
from .devices import placement
from .gate import gate
from .plain import VocabTokenizer, attention_modules, is_encoder_decoder
from .structure import remembered

if TYPE_CHECKING:  # the result types, for type checkers: the engine (a layer above) makes them
    from ..trace.batch import TraceBatch
    from ..trace.trace import Trace


@dataclass(frozen=True)
class ModelFacts:
    """What the trace engine and the widgets need to know about a model."""

    name: str
    architecture: str  # the model class, e.g. "LlamaForCausalLM"
    model_type: str  # the config's model_type, e.g. "llama"
    kind: str  # "causal" (generates left to right), "seq2seq" (an encoder-decoder: generates from a source),
    # "masked" (bidirectional encoder), "classifier" (labels a text) or "token_classifier" (labels each token)
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int | None
    n_parameters: int
    dtype: str
    device: str
    attn_implementation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(model: Any, labels: bool, can_generate: bool) -> str:
    if labels:
        return "token_classifier" if type(model).__name__.endswith("ForTokenClassification") else "classifier"
    if getattr(model.config, "is_encoder_decoder", False) and can_generate:
        return "seq2seq"
    return "causal" if can_generate else "masked"


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = _config_value(config, name)
        if isinstance(value, int):
            return value
    return None


def _text_config(config: Any) -> tuple[Any, bool]:
    """The config that gives a model's sizes (a multimodal one's text config), and whether it is the
    decoder of an encoder-decoder's config alone (WhisperForCausalLM, BartForCausalLM, which set
    is_encoder_decoder False): its sizes are the decoder_* ones; the plain names may be the encoder's."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text, not getattr(text, "is_encoder_decoder", False) and hasattr(text, "decoder_attention_heads")


def config_layers(model: Any) -> int:
    """The number of blocks a transformers model's config gives (0 without a config: a plain module)."""
    config = getattr(model, "config", None)
    if config is None:
        return 0
    text, alone = _text_config(config)
    return _config_int(text, *(("decoder_layers",) if alone else ()), "num_hidden_layers", "n_layer") or 0


def _config_value(config: Any, name: str) -> Any:
    """config.name; where it varies by layer (a per-layer config, Gemma 4's head_dim) transformers
    refuses the global read, and the first layer's value is the one given."""
    try:
        return getattr(config, name, None)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        layers = getattr(config, "per_layer_config", None)
        return getattr(layers[0], name, None) if layers else None


class LanguageModel:
    """A Hugging Face language model with its tokenizer.

    Build one with `lw.load_model(...)`, or wrap a model you already hold:
    `lw.LanguageModel(hf_model, tokenizer)`. A plain PyTorch transformer (built from
    nn.MultiheadAttention or nn.TransformerEncoderLayer, no transformers in it, its
    forward taking ids [batch, T] to logits [batch, T, vocab]) wraps the same way, or
    with `vocab=[...]` (token strings by id) when it has no tokenizer:
    `lw.LanguageModel(module, tokenizer=None, vocab=words)`. One built from
    nn.TransformerDecoderLayer is an encoder-decoder: forward(source ids, target ids), its
    output started with the tokenizer's bos token (`lw.VocabTokenizer(words, bos_token="<s>")`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        vocab: list[str] | None = None,
        name: str | None = None,
        source: dict | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise WrongTypeError(
                f"LanguageModel needs a Hugging Face transformers model or a PyTorch transformer (a torch.nn.Module), "
                f"got {type(model).__name__}. Load one with lw.load_model(name_or_path) or "
                f"transformers.AutoModelForCausalLM.from_pretrained(...)."
            )
        # a plain PyTorch model: no transformers config, its attention in nn.MultiheadAttention modules
        self.plain = not hasattr(model, "config")
        if self.plain and not attention_modules(model):
            raise WrongTypeError(
                f"{type(model).__name__} is neither a Hugging Face transformers model (it has no .config) nor built "
                f"from torch.nn.MultiheadAttention / nn.TransformerEncoderLayer, so it has no attention to trace"
            )
        if tokenizer is not None and not hasattr(tokenizer, "decode"):  # (a path given where the object goes)
            raise WrongTypeError(
                f"LanguageModel's tokenizer must be a tokenizer object (e.g. AutoTokenizer.from_pretrained(path), "
                f"or lw.VocabTokenizer(words)); got {type(tokenizer).__name__} {tokenizer!r:.60}"
            )
        if tokenizer is None and vocab is not None:
            tokenizer = VocabTokenizer(vocab)
        if tokenizer is None:
            raise InputError(
                f"LanguageModel({type(model).__name__}) needs a tokenizer: pass one, e.g. "
                f"lw.LanguageModel(model, transformers.AutoTokenizer.from_pretrained(path)), or its vocabulary, "
                f"lw.LanguageModel(model, vocab=[token strings by id]). Text goes in and comes out through it, so it "
                f"cannot be guessed."
            )
        self.model: Any = model  # transformers' methods (generate, config, ...) or a plain module's: not typed
        gate(model)  # other threads' forwards wait while a run of ours holds it (gate.py)
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
        # where the weights came from (path, revision, weights hash): goes into run records
        self.source = dict(source or {})

    @property
    def pad_token_id(self) -> int:
        """The id padding is written with: the tokenizer's pad token, else its end-of-text token,
        else 0 (any id does: padding is masked)."""
        for token_id in (getattr(self.tokenizer, "pad_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(token_id, int):
                return token_id
        return 0

    @property
    def kind(self) -> str:
        """facts.kind, without the rest of the facts (which count parameters)."""
        if self.plain:  # it predicts the next token at every position (of its output, for an encoder-decoder)
            return "seq2seq" if is_encoder_decoder(self.model) else "causal"
        return _kind(self.model, bool(self.labels), getattr(self.model, "can_generate", lambda: False)())

    @property
    def labels(self) -> list[str]:
        """A classifier's class names by id (the config's id2label, control characters and lone
        surrogates shown as escapes; a name given to several classes gets each one's id: "pos (0)",
        "pos (2)"); [] for other models."""
        if not type(self.model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification")):
            return []
        config = self.model.config
        names = getattr(config, "id2label", None) or {}
        given = [
            printable(str(names.get(i, f"LABEL_{i}"))) for i in range(int(getattr(config, "num_labels", len(names))))
        ]
        counts = Counter(given)  # two classes of one name would be one key, one bar: each gets its id
        return [f"{name} ({i})" if counts[name] > 1 else name for i, name in enumerate(given)]

    def label_id(self, label: str | int) -> int:
        """A class given by name or id, checked."""
        labels = self.labels
        if checks.is_int(label) and 0 <= label < len(labels):
            return label
        if isinstance(label, str) and label in labels:
            return labels.index(label)
        shared = [name for name in labels if isinstance(label, str) and name.rsplit(" (", 1)[0] == label]
        if len(shared) > 1:
            raise InputError(
                f"{label!r} names {len(shared)} classes of {self.name} ({shared}, its config's id2label repeats it): "
                f"give one of those names, or the class id"
            )
        raise InputError(
            f"{label!r} is not a class of {self.name}: its classes are {labels} (by name, or id 0 to {len(labels) - 1})"
        )

    @property
    def facts(self) -> ModelFacts:
        """Worked out once per model (again when its tree or weights' placement changes); the
        attention implementation, which a run switches, read each time."""
        facts = remembered(self.model, ("facts", self.name, self.kind), lambda _: self._facts())
        if self.plain:
            return facts
        attention = str(getattr(self.model.config, "_attn_implementation", None) or "eager")
        return facts if facts.attn_implementation == attention else replace(facts, attn_implementation=attention)

    def _facts(self) -> ModelFacts:
        model = self.model
        if self.plain:
            return self._plain_facts()
        text, alone = _text_config(model.config)
        decoder = ("decoder_attention_heads",) if alone else ()
        n_heads = _config_int(text, *decoder, "num_attention_heads", "n_head") or 0
        hidden = _config_int(text, "hidden_size", "n_embd", "d_model") or 0
        head_dim = _config_int(text, "head_dim") or (hidden // n_heads if n_heads else 0)
        param = next(model.parameters(), None)
        return ModelFacts(
            name=self.name,
            architecture=type(model).__name__,
            model_type=getattr(text, "model_type", "") or getattr(model.config, "model_type", ""),
            kind=self.kind,
            n_layers=config_layers(model),
            n_heads=n_heads,
            n_kv_heads=_config_int(text, "num_key_value_heads") or n_heads,
            head_dim=head_dim,
            hidden_size=hidden,
            vocab_size=_config_int(text, "vocab_size") or len(self.tokenizer),
            context_length=_config_int(text, "max_position_embeddings", "n_positions"),
            n_parameters=sum(p.numel() for p in model.parameters()),
            dtype=str(param.dtype).removeprefix("torch.") if param is not None else "unknown",
            device=placement(model),
            attn_implementation=str(getattr(model.config, "_attn_implementation", None) or "eager"),
        )

    def check_analysable(self, what: str) -> None:
        """Refuse, saying why, an analysis that walks a transformers model's one stack of blocks
        (the lens, patching, sweeps, profiles, scaling): not an encoder-decoder's or a plain model's."""
        if self.plain:
            raise InputError(
                f"{what} needs a Hugging Face transformers model; {self.name} is a plain PyTorch model "
                f"(trace it, view and edit its attention, attribute its output)"
            )
        if self.kind == "seq2seq":
            raise InputError(
                f"{what} reads a decoder-only model's stack of blocks; {self.name} is an "
                f"encoder-decoder (trace it, view and edit its three kinds of attention, attribute "
                f"its output to the source)"
            )

    def _plain_facts(self) -> ModelFacts:
        model = self.model
        attention = attention_modules(model)
        param = next(model.parameters(), None)
        return ModelFacts(
            name=self.name,
            architecture=type(model).__name__,
            model_type="torch",
            kind=self.kind,
            n_layers=len(attention),
            n_heads=attention[0].num_heads,
            n_kv_heads=attention[0].num_heads,
            head_dim=attention[0].head_dim,
            hidden_size=attention[0].embed_dim,
            vocab_size=len(self.tokenizer),
            context_length=None,
            n_parameters=sum(p.numel() for p in model.parameters()),
            dtype=str(param.dtype).removeprefix("torch.") if param is not None else "unknown",
            device=placement(model),
            attn_implementation="torch.nn.MultiheadAttention",
        )

    @provided
    def trace(
        self,
        prompt: Any,
        *,
        max_new_tokens: int = 0,
        edits: Any = (),
        seed: int | None = None,
        do_sample: bool = False,
        keep_logits: bool = False,
        capture: bool = True,
        capture_device: str | torch.device | None = None,
        capture_dtype: torch.dtype | None = None,
        profile: bool = False,
        **generation_kwargs: Any,
    ) -> Trace | TraceBatch:
        """One instrumented run: the prompt's forward pass and, with max_new_tokens, generation.

        `prompt` is a string, a chat message list or token ids; several of them (a list of
        strings, a 2-D id tensor, a tokenizer's padded output) run as one padded batch and
        give a `lw.TraceBatch`, a Trace per row, as they ran together; one prompt gives a
        `lw.Trace`. `edits` are lw.ScaleAttention / lw.AblateHead. `seed` makes sampling
        repeatable (one is drawn and recorded when sampling without it). Other keyword
        arguments go to `generate` (temperature, top_p, use_cache, ...), but for
        `decoder_prompt_ids`: an encoder-decoder's decoder begins with those token ids after
        its start token (a translation's forced beginning), then generates.

        keep_logits keeps the prompt's logits [T, vocab] on the trace; capture=False skips
        keeping queries and keys (no attention views); capture_device moves them off the
        accelerator as they are captured (e.g. "cpu" for long contexts on a GPU) and
        capture_dtype stores them in a lower precision (half the memory of float32; the
        recomputed probabilities then differ from the run's by up to about 3e-3 with
        torch.float16 and 2e-2 with torch.bfloat16, as measured on SmolLM2 at 1,024 tokens);
        profile=True also profiles the run (`trace.profile()` returns it at once).

        The engine (llm_widgets.trace, the layer above) implements it.
        """
        ...

    def __repr__(self) -> str:
        f = self.facts
        kv = f" ({f.n_kv_heads} KV)" if f.n_kv_heads != f.n_heads else ""
        context = f", context {f.context_length:,}" if f.context_length else ""
        return (
            f"LanguageModel({self.name!r}: {f.architecture}, {f.n_layers} layers x {f.n_heads} heads{kv}, "
            f"{_human(f.n_parameters)} parameters{context}, {f.dtype} on {f.device}, "
            f"attention {f.attn_implementation})"
        )


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def torch_module(model: Any) -> Any:
    """The torch module of a LanguageModel, or `model` itself. (Not `getattr(model, "model")`: a
    transformers model has a `.model` too, its base model without the head.)"""
    return model.model if isinstance(model, LanguageModel) else model
