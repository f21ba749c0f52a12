"""Tracing a plain PyTorch transformer (nn.MultiheadAttention, nn.TransformerEncoderLayer):
what `model.trace(prompt)` does for a model without transformers in it.

Queries and keys are computed from each attention's input with its own
projection weights (a forward pre-hook), so a run without edits is the model's
own run: nn.TransformerEncoderLayer keeps torch's fused fast path, whose kernel
never calls nn.MultiheadAttention.forward. Edits turn the fast path off for the
run and add their log-factors to the attention mask that nn.MultiheadAttention
is given. Every hook is removed and the fast-path flag restored, on errors too.
"""

from __future__ import annotations

import inspect
import math
import secrets
import threading
import warnings
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models import LanguageModel
from ..models.devices import input_device
from ..models.modes import model_mode
from ..models.plain import attention_modules, logits_of
from .attention import SELF, AttentionStack, LayerAttention
from .edits import AblateHead, ScaleAttention, validate_edits
from .locking import exclusive
from .masks import allowed_mask, edit_bias, spare_fully_masked
from .record import make_record
from .trace import TOP_K_KEPT, Trace, probability_of, top_k_of

SETTINGS = {"temperature"}  # the generation settings a plain model's sampling loop takes
_MHA_ARGS = inspect.signature(torch.nn.MultiheadAttention.forward).parameters


def trace_plain(lm: LanguageModel, ids: torch.Tensor, generation: dict, edits, *, keep_logits: bool = False,
                capture: bool = True) -> Trace:
    """One instrumented run of a plain PyTorch model on one prompt, generating greedily (or
    sampling with `do_sample`, `temperature` and `seed`) by running the model on the whole
    sequence at each step."""
    model = lm.model
    unknown = sorted(set(generation) - {"max_new_tokens", "do_sample", "seed"} - SETTINGS)
    if unknown:
        raise InputError(f"a plain PyTorch model generates with max_new_tokens, do_sample, seed and temperature; "
                         f"{unknown} are for transformers' generate")
    modules = attention_modules(model)
    n_heads, max_new = modules[0].num_heads, generation["max_new_tokens"]
    edits = validate_edits(edits, n_layers=len(modules), n_heads=n_heads, sequence_length=len(ids) + max_new)
    if any(isinstance(e, AblateHead) for e in edits):
        raise InputError("AblateHead is not available for plain PyTorch models yet (nn.MultiheadAttention applies its "
                         "output projection inside one call); use ScaleAttention")
    if generation["do_sample"] and generation["seed"] is None:
        generation = {**generation, "seed": secrets.randbits(31)}
    device = input_device(model)
    run = _Run(model, modules, edits)
    sequence = ids[None].to(device)
    step_logits, prompt_logits = [], None
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    with exclusive(model), model_mode(model, training=False), torch.no_grad(), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), run.installed(capture):
        if generation["seed"] is not None:
            torch.manual_seed(generation["seed"])
        logits = logits_of(model(sequence))
        prompt_logits = logits[0].float().cpu() if keep_logits else None
        for step in range(max_new + 1):
            step_logits.append(logits[:, -1])
            if step == max_new or (eos is not None and step and int(sequence[0, -1]) == eos):
                break
            sequence = torch.cat([sequence, _next_token(logits[:, -1], generation)], dim=1)
            if step + 1 < max_new or capture:  # the last token runs through the model for its attention only
                logits = logits_of(model(sequence))
        step_logits = step_logits[:max(1, sequence.shape[1] - len(ids))]
    if run.fully_masked_rows:
        warnings.warn("ScaleAttention with factor 0 masked every key of some query rows; those rows were left "
                      "unchanged (a softmax over no keys has no answer).", stacklevel=4)
    generated = sequence[0, len(ids):].tolist()
    layers = [run.layer(i) for i in range(len(modules))] if capture else None
    stack = AttentionStack(SELF, n_layers=len(modules), n_heads=n_heads, queries=(0, sequence.shape[1]),
                           keys=(0, sequence.shape[1]), layers=layers, edits=edits, model_name=lm.name)
    logits = [step[0] for step in step_logits]
    return Trace(model=lm, input_ids=sequence[0].cpu(), n_prompt=len(ids), stacks={SELF: stack}, edits=edits,
                 top_k=[top_k_of(step, TOP_K_KEPT) for step in logits],
                 chosen=[probability_of(step, token) for step, token in zip(logits, generated)],
                 first_logprobs=torch.log_softmax(logits[0].float(), dim=-1).cpu(), logits=prompt_logits,
                 record=make_record(lm, ids.tolist(), generation, edits, generated))


def _next_token(logits: torch.Tensor, generation: dict) -> torch.Tensor:
    if not generation["do_sample"]:
        return logits.argmax(-1, keepdim=True)
    temperature = float(generation.get("temperature", 1.0))
    return torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1)


class _Run:
    """The hooks of one run: capture each attention's queries and keys; steer the edited ones."""

    def __init__(self, model: torch.nn.Module, modules: list[torch.nn.MultiheadAttention], edits: tuple):
        self.modules = modules
        # attention module -> the encoder layer whose fused fast path may skip its forward
        self.owners = {id(layer.self_attn): layer for layer in model.modules()
                       if isinstance(layer, torch.nn.TransformerEncoderLayer)}
        self.edits = {i: tuple(e for e in edits if isinstance(e, ScaleAttention)
                               and (e.layers is None or i in e.layers)) for i in range(len(modules))}
        self.captured: dict[int, LayerAttention] = {}  # each pass overwrites: the last one covers every position
        self.fully_masked_rows = False

    def layer(self, index: int) -> LayerAttention:
        if index not in self.captured:
            raise InputError(f"attention module {index} ({type(self.modules[index]).__name__}) never ran during the "
                             f"forward pass, so it has nothing to show")
        return self.captured[index]

    @contextmanager
    def installed(self, capture: bool) -> Iterator[None]:
        with ExitStack() as stack:
            if capture and self.owners:
                # A hook on an encoder layer would turn its fast path off (torch checks the layer's own
                # hooks): a global one, called for every module, picks out ours and leaves it on.
                hook = torch.nn.modules.module.register_module_forward_hook(self._layer_hook(), with_kwargs=True)
                stack.callback(hook.remove)
            for index, mha in enumerate(self.modules):
                owner = self.owners.get(id(mha))
                if (capture and owner is None) or self.edits[index]:
                    hook = mha.register_forward_pre_hook(self._attention_hook(index, capture and owner is None),
                                                         with_kwargs=True)
                    stack.callback(hook.remove)
            if any(self.edits.values()):  # the fused encoder layer never calls the attention we steer
                enabled = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
                stack.callback(torch.backends.mha.set_fastpath_enabled, enabled)
            yield

    def _layer_hook(self):
        index_of = {id(layer): self.modules.index(layer.self_attn) for layer in self.owners.values()
                    if layer.self_attn in self.modules}
        thread = threading.get_ident()

        def hook(module, args, kwargs, output):  # after the layer ran: its input is as it was given
            index = index_of.get(id(module))
            if index is None or threading.get_ident() != thread:  # another module, or another thread's run
                return None
            bound = dict(zip(("src", "src_mask", "src_key_padding_mask", "is_causal"), args), **kwargs)
            src = bound["src"]
            x = module.norm1(src) if module.norm_first else src
            self._capture(index, x, x, bound.get("src_mask"), bool(bound.get("is_causal")),
                          bound.get("src_key_padding_mask"))
            return None
        return hook

    def _attention_hook(self, index: int, capture: bool):
        mha = self.modules[index]

        def hook(module, args, kwargs):
            bound = dict(zip(_MHA_ARGS_AFTER_SELF, args), **kwargs)
            query, key = bound["query"], bound["key"]
            if key is not query and not torch.equal(key, query):
                raise InputError(f"attention module {index} attends over another sequence (cross-attention, as in "
                                 f"nn.Transformer's decoder); plain PyTorch encoder-decoders are not supported yet")
            mask, causal = bound.get("attn_mask"), bool(bound.get("is_causal"))
            if capture:
                self._capture(index, query, key, mask, causal, bound.get("key_padding_mask"))
            if not self.edits[index]:
                return None
            bound["attn_mask"] = self._edited_mask(mha, query, mask, causal)
            bound["is_causal"] = False  # the mask above says all of it
            return (), bound
        return hook

    def _capture(self, index, query, key, mask, is_causal, padding) -> None:
        mha = self.modules[index]
        if padding is not None and bool(torch.as_tensor(padding).any()):
            raise InputError("a key_padding_mask with padded keys: trace one unpadded prompt at a time")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise InputError(f"attention module {index} uses add_bias_kv or add_zero_attn, which llm-widgets does not "
                             f"recompute yet")
        q, k = _projected(mha, query, 0), _projected(mha, key, 1)  # [B, H, T, d]
        n = q.shape[2]
        causal, bias = _mask_facts(mask, is_causal, n, mha.num_heads, q.device)
        self.captured[index] = LayerAttention(q[0].detach(), k[0].detach(), 1 / math.sqrt(q.shape[-1]), None, None,
                                              causal, None, bias)

    def _edited_mask(self, mha, query, mask, causal) -> torch.Tensor:
        """The module's own mask as an additive float mask [heads, T, T], plus the edits' log-factors."""
        n = query.shape[1] if mha.batch_first else query.shape[0]
        pos = torch.arange(n, device=query.device)
        is_causal, bias = _mask_facts(mask, causal, n, mha.num_heads, query.device)
        base = torch.zeros(mha.num_heads, n, n, device=query.device) if bias is None else bias.clone()
        allowed = allowed_mask(pos, pos, is_causal, None) & ~torch.isneginf(base[0])
        base = base.masked_fill(~allowed, float("-inf"))
        index = self.modules.index(mha)
        edit, spared = spare_fully_masked(edit_bias(self.edits[index], mha.num_heads, pos, pos), allowed)
        self.fully_masked_rows |= spared
        return (base + edit).to(query.dtype)


_MHA_ARGS_AFTER_SELF = [name for name in _MHA_ARGS if name != "self"]


def _projected(mha: torch.nn.MultiheadAttention, x: torch.Tensor, which: int) -> torch.Tensor:
    """Queries (which=0) or keys (1) of `x` as the module computes them: [batch, heads, T, head_dim]."""
    if not mha.batch_first:
        x = x.transpose(0, 1)
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        weight = mha.in_proj_weight[which * e:(which + 1) * e]
    else:
        weight = mha.q_proj_weight if which == 0 else mha.k_proj_weight
    bias = mha.in_proj_bias[which * e:(which + 1) * e] if mha.in_proj_bias is not None else None
    out = F.linear(x, weight, bias)
    return out.view(*out.shape[:2], mha.num_heads, mha.head_dim).transpose(1, 2)


def _mask_facts(mask: Any, is_causal: bool, n: int, heads: int, device) -> tuple[bool, torch.Tensor | None]:
    """(causal, additive bias [heads, n, n] or None) of the mask nn.MultiheadAttention was given: a
    causal mask (nn.Transformer.generate_square_subsequent_mask's, or a boolean one) is just causal."""
    if mask is None:
        return bool(is_causal), None
    mask = torch.as_tensor(mask, device=device)
    additive = torch.zeros(mask.shape, device=device).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool \
        else mask.float()
    if additive.dim() == 2:
        upper = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
        if torch.equal(torch.isneginf(additive), upper) and not additive[~upper].any():
            return True, None
        return False, additive[None].expand(heads, n, n)
    return False, additive[-heads:]  # [batch * heads, n, n]: one prompt, its heads
