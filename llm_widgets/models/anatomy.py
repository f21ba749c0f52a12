"""Where things are inside a transformer, found from its structure, not per model.

The analyses need the stack of blocks (the residual stream between them), each
block's attention and MLP, and the way from a residual stream to logits (the
final norm and the unembedding). Model files name these differently (GPT-2's
`transformer.h` / `ln_f`, Llama's `model.layers` / `norm`); the shapes of the
module tree are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .structure import remembered

_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "DenseReluDense")  # (T5's, inside T5LayerFF)


@dataclass(frozen=True)
class Anatomy:
    blocks: torch.nn.ModuleList  # one per layer; each maps the residual stream to the next
    final_norm: torch.nn.Module | None  # applied to the last block's output before the unembedding
    unembedding: torch.nn.Module | None  # hidden -> vocabulary logits (lm_head)
    attentions: tuple[torch.nn.Module | None, ...]  # each block's attention module
    mlps: tuple[torch.nn.Module | None, ...]  # each block's MLP (or mixture of experts)
    logit_softcap: float | None = None
    logit_scale: float = 1.0

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual stream [..., d] -> logits [..., vocab], as the model's head computes them."""
        if self.unembedding is None:
            raise InputError(
                "this model has no unembedding (get_output_embeddings() is None): it does not predict "
                "tokens, so residual streams cannot be read as predictions"
            )
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        logits = self.unembedding(hidden) * self.logit_scale
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def block_output(output: Any) -> torch.Tensor:
    """A block's (or attention's, or MLP's) forward output, as the hidden tensor it carries."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_block_output(output: Any, hidden: torch.Tensor) -> Any:
    """A block's (or attention's, or MLP's) forward output with its hidden tensor replaced (a tuple
    or list keeps the rest): what a forward hook returns to change it."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def anatomy(model: Any, n_layers: int) -> Anatomy:
    """The blocks (the largest ModuleList with one entry per layer), the final norm (the
    first norm registered after them in their parent), the unembedding and the scaling the
    model's head applies (Gemma 2's softcap, Granite's and Cohere's logit scales). Found once per
    model (models.structure)."""
    return remembered(model, ("anatomy", n_layers), lambda m: _anatomy(m, n_layers))


def _anatomy(model: Any, n_layers: int) -> Anatomy:
    parent, blocks, best = None, None, -1
    for module in model.modules():
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers:
                size = sum(p.numel() for p in child.parameters())
                if size > best:
                    parent, blocks, best = module, child, size
    if blocks is None or parent is None:
        raise InputError(
            f"{type(model).__name__}: no stack of {n_layers} blocks found, so per-layer analyses "
            f"(lens, patching) cannot locate its residual stream"
        )
    final_norm, after = None, False
    for child in parent.children():
        if child is blocks:
            after = True
        elif after and "norm" in type(child).__name__.lower():
            final_norm = child
            break
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = 1.0
    if getattr(config, "logits_scaling", None):  # Granite divides
        scale /= float(config.logits_scaling)
    if getattr(config, "logit_scale", None) and isinstance(config.logit_scale, (int, float)):  # Cohere multiplies
        scale *= float(config.logit_scale)
    unembedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return Anatomy(
        blocks=blocks,
        final_norm=final_norm,
        unembedding=unembedding,
        attentions=tuple(_child(block, _is_attention) for block in blocks),
        mlps=tuple(_child(block, _is_mlp) for block in blocks),
        logit_softcap=getattr(config, "final_logit_softcapping", None),
        logit_scale=scale,
    )


def _is_attention(name: str, module: torch.nn.Module) -> bool:
    kind = type(module).__name__
    return "attention" in kind.lower() or name in ("attn", "self_attn", "attention")


def _is_mlp(name: str, module: torch.nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return name in _MLP_NAMES or kind.endswith(("mlp", "feedforward", "moe", "moeblock"))


def find_mlp(block: torch.nn.Module) -> torch.nn.Module | None:
    """A block's MLP at any depth (T5's sits inside its T5LayerFF), or None (BART's fc1 and fc2 are
    the block's own linears)."""
    for name, module in block.named_modules():
        if module is not block and _is_mlp(name.rsplit(".", 1)[-1], module):
            return module
    return None


def _child(block: torch.nn.Module, test) -> torch.nn.Module | None:
    for name, child in block.named_children():
        if test(name, child):
            return child
    return None
