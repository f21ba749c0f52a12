"""Plain PyTorch transformers: a model built from `nn.MultiheadAttention` (or
`nn.TransformerEncoderLayer`) with no transformers in it, and a tokenizer made
from its vocabulary when it has none.

Such a model's forward takes token ids [batch, T] and returns logits
[batch, T, vocab] (or an object with `.logits`); it predicts the next token at
each position, so the trace engine runs it as a causal LM. A model built from
nn.TransformerDecoderLayer (as nn.Transformer is) is an encoder-decoder: its
forward takes (source ids [batch, S], target ids [batch, T]).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError


def attention_modules(model: torch.nn.Module) -> list[torch.nn.MultiheadAttention]:
    """The model's attention modules, in the order they are registered (= layer order)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.TransformerDecoderLayer) for m in model.modules())


def input_embedding(model: torch.nn.Module, vocab_size: int) -> torch.nn.Embedding:
    """The token embedding: the first nn.Embedding with one row per token of the vocabulary."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size:
            return module
    raise InputError(
        f"{type(model).__name__} has no nn.Embedding with {vocab_size} rows (one per token of its "
        f"vocabulary), so its inputs cannot be attributed"
    )


def logits_of(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise InputError(
            "a plain PyTorch model's forward(input_ids [batch, T]) must return logits [batch, T, vocab] "
            f"(or an object with .logits); got {type(output).__name__}"
            + (f" of shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else "")
        )
    return logits


class VocabTokenizer:
    """A tokenizer made from a vocabulary list, for models that have none: text is split on
    whitespace and each word looked up (an unknown word is refused, naming it); ids decode
    to their words joined by spaces."""

    chat_template = None

    def __init__(
        self,
        vocab: list[str],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ):
        if not isinstance(vocab, (list, tuple)) or not vocab or not all(isinstance(v, str) for v in vocab):
            raise InputError(f"vocab must be a non-empty list of token strings (id i is vocab[i]); got {vocab!r:.80}")
        if len(set(vocab)) != len(vocab):
            raise InputError("vocab has repeated tokens: each id needs its own string")
        blank = [i for i, v in enumerate(vocab) if not v or any(c.isspace() for c in v)]
        if blank:  # text is split on whitespace: such a token could never be written
            raise InputError(
                f"vocab tokens must be non-empty and without whitespace (text is split on it); token "
                f"{blank[0]} is {vocab[blank[0]]!r}"
            )
        self.vocab = list(vocab)
        self._ids = {token: i for i, token in enumerate(self.vocab)}
        self.bos_token_id = self._special_id("bos_token", bos_token)
        self.eos_token_id = self._special_id("eos_token", eos_token)
        self.pad_token_id = self._special_id("pad_token", pad_token)

    def _special_id(self, name: str, token: str | None) -> int | None:
        if token is not None and token not in self._ids:
            raise InputError(f"{name} {token!r} is not in the vocabulary")
        return self._ids[token] if token is not None else None

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        words = text.split()
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            raise InputError(
                f"{unknown[0]!r} is not in this model's vocabulary ({len(self.vocab)} tokens, e.g. "
                f"{self.vocab[:5]}); write the prompt as space-separated vocabulary tokens"
            )
        return [self._ids[w] for w in words]

    def __call__(self, text: str, return_tensors: str | None = None, **_: Any) -> dict:
        ids = self.encode(text)
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        special = {self.bos_token_id, self.eos_token_id, self.pad_token_id} if skip_special_tokens else set()
        outside = [i for i in ids if not 0 <= i < len(self.vocab)]
        if outside:
            raise InputError(f"id {outside[0]} is not in this vocabulary of {len(self.vocab)} tokens")
        return " ".join(self.vocab[i] for i in ids if i not in special)

    def batch_decode(self, sequences: list[list[int]], **kwargs: Any) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in sequences]
