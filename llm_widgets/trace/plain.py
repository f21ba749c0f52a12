"""Tracing a plain PyTorch transformer (nn.MultiheadAttention, nn.TransformerEncoderLayer,
nn.TransformerDecoderLayer): what `model.trace(prompt)` does for a model without
transformers in it.

Queries and keys are computed from each attention's input with its own
projection weights (hooks), so a run without edits is the model's own run:
nn.TransformerEncoderLayer keeps torch's fused fast path, whose kernel never
calls nn.MultiheadAttention.forward. Edits turn the fast path off for the run
and add their log-factors to the attention mask that nn.MultiheadAttention is
given; an ablated head's module output is computed again without it. Every hook
is removed and the fast-path flag restored, on errors too.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models import LanguageModel
from ..models.devices import input_device
from ..models.plain import VocabTokenizer, attention_modules, logits_of
from .attention import SELF, AttentionStack, LayerAttention, stack_offsets, stack_spans
from .capture import Place
from .edits import AblateHead, AblateMLP, ScaleAttention, SteerResidual, validate_edits
from .masks import allowed_mask, edit_bias, spare_fully_masked
from .record import make_record
from .runner import Request, Runner, refuse_unused_sampling
from .steering import ResidualSteering, enclosing_blocks
from .trace import Trace, predictions

SETTINGS = {"temperature"}  # the generation settings a plain model's sampling loop takes
# nn.MultiheadAttention.forward's arguments in order, to read them however a caller passed them
_MHA_ARGS_AFTER_SELF = [
    name for name in inspect.signature(torch.nn.MultiheadAttention.forward).parameters if name != "self"
]


def mha_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    """nn.MultiheadAttention.forward's arguments by name, however its caller passed them."""
    return dict(zip(_MHA_ARGS_AFTER_SELF, args), **kwargs)


def plain_stacks(model: torch.nn.Module) -> dict[str, list[torch.nn.MultiheadAttention]]:
    """The attention modules of each kind, in layer order: {"self": [...]}; or, for a model built from
    nn.TransformerDecoderLayer (an encoder-decoder such as nn.Transformer), the encoder layers'
    self-attention, the decoder layers' self-attention and their attention over the source."""
    decoder_layers = [m for m in model.modules() if isinstance(m, torch.nn.TransformerDecoderLayer)]
    if not decoder_layers:
        return {SELF: attention_modules(model)}
    stacks = {
        "encoder": [m.self_attn for m in model.modules() if isinstance(m, torch.nn.TransformerEncoderLayer)],
        "decoder": [m.self_attn for m in decoder_layers],
        "cross": [m.multihead_attn for m in decoder_layers],
    }
    known = {id(m) for modules in stacks.values() for m in modules}
    if any(id(m) not in known for m in attention_modules(model)) or not stacks["encoder"]:
        raise InputError(
            f"{type(model).__name__} has nn.TransformerDecoderLayer modules, so it is read as an "
            f"encoder-decoder, but its other attention is not in nn.TransformerEncoderLayer modules; "
            f"llm-widgets traces plain encoder-decoders built from the two (as nn.Transformer is)"
        )
    return stacks


class PlainRunner(Runner):
    """One run of a plain PyTorch model on one prompt, generating greedily (or sampling with
    `do_sample`, `temperature` and `seed`) by running the model on the whole sequence at each
    step. An encoder-decoder's forward takes (source ids, target ids); its target starts with the
    tokenizer's bos token."""

    def __init__(self, request: Request):
        super().__init__(request)
        lm, generation = self.lm, request.generation
        if request.is_batch:
            raise InputError(f"{lm.name} is a plain PyTorch model: trace one prompt at a time")
        if request.capture_device is not None or request.capture_dtype is not None or request.profile:
            raise InputError("capture_device, capture_dtype and profile are for transformers models")
        unknown = sorted(set(generation) - {"max_new_tokens", "do_sample", "seed"} - SETTINGS)
        if unknown:
            raise InputError(
                f"a plain PyTorch model generates with max_new_tokens, do_sample, seed and "
                f"temperature; {unknown} are for transformers' generate"
            )
        refuse_unused_sampling(request.settings, generation["do_sample"])
        stacks = plain_stacks(self.model)
        self.shapes = {name: (len(modules), int(modules[0].num_heads)) for name, modules in stacks.items()}
        self.seq2seq = SELF not in stacks
        self.ids = request.rows[0]
        n = len(self.ids)
        (n_layers, n_heads), total = next(iter(self.shapes.values())), n + request.max_new_tokens + int(self.seq2seq)
        self.edits = validate_edits(
            request.edits,
            n_layers=n_layers,
            n_heads=n_heads,
            sequence_length=total,
            stacks=self.shapes if self.seq2seq else None,
            model_name=lm.name,
            width=lm.facts.hidden_size,
        )
        if any(isinstance(e, AblateMLP) for e in self.edits):
            raise InputError(f"AblateMLP is for transformers models' blocks; {lm.name} is a plain PyTorch model")
        self.n_source = n if self.seq2seq else 0
        self.run = _Run(self.model, stacks, self.edits, stack_offsets(self.n_source))
        self.steering = _steering(self.model, stacks, self.edits, self.n_source, n + int(self.seq2seq))
        self.start = decoder_start(lm) if self.seq2seq else None

    @contextmanager
    def instrumented(self) -> Iterator[None]:
        with self.run.installed(self.request.capture), self.steering.installed():
            yield

    def execute(self) -> None:
        model, request = self.model, self.request
        source = self.ids[None].to(input_device(model))
        sequence = torch.tensor([[self.start]], device=source.device) if self.seq2seq else source
        forward = (lambda out: logits_of(model(source, out))) if self.seq2seq else (lambda seq: logits_of(model(seq)))
        self.step_logits, eos = [], getattr(self.lm.tokenizer, "eos_token_id", None)
        max_new = request.max_new_tokens
        logits = forward(sequence)
        _check_width(logits, self.lm)
        self.prompt_logits = logits[0].float().cpu() if request.keep_logits else None
        self.first = sequence.shape[1]
        for step in range(max_new + 1):
            self.step_logits.append(logits[:, -1])
            if step == max_new or (eos is not None and step and int(sequence[0, -1]) == eos):
                break
            sequence = torch.cat([sequence, _next_token(logits[:, -1], request.generation)], dim=1)
            if step + 1 < max_new or request.capture:  # the last token runs through the model for its attention only
                logits = forward(sequence)
        self.sequence = sequence

    def traces(self) -> list[Trace]:
        ids, n_source, capture = self.ids, self.n_source, self.request.capture
        generated = self.sequence[0, self.first :].tolist()
        whole = torch.cat([ids, self.sequence[0].cpu()]) if self.seq2seq else self.sequence[0].cpu()
        spans = stack_spans(n_source, len(whole))
        attention = {
            name: AttentionStack(
                name,
                n_layers=layers,
                n_heads=heads,
                queries=spans[name][0],
                keys=spans[name][1],
                edits=self.edits,
                model_name=self.lm.name,
                layers=[self.run.layer((name, i)) for i in range(layers)] if capture else None,
            )
            for name, (layers, heads) in self.shapes.items()
        }
        logits = [step[0] for step in self.step_logits[: max(1, len(generated))]]
        return [
            Trace(
                model=self.lm,
                input_ids=whole,
                n_prompt=len(ids) + 1 if self.seq2seq else len(ids),
                n_source=n_source,
                stacks=attention,
                edits=self.edits,
                **predictions(logits, generated),
                logits=self.prompt_logits,
                record=make_record(self.lm, ids.tolist(), self.request.generation, self.edits, generated),
            )
        ]


@contextmanager
def edited(model: torch.nn.Module, edits: tuple, n_source: int) -> Iterator[None]:
    """A plain model's attention edits (ScaleAttention, AblateHead) on it for one forward, nothing
    captured: what an analysis that runs the traced sequence again needs (explain_attention)."""
    with _Run(model, plain_stacks(model), edits, stack_offsets(n_source)).installed(capture=False):
        yield


def _steering(model, stacks: dict[str, list], edits: tuple, n_source: int, n_prompt: int) -> ResidualSteering:
    """The run's SteerResidual edits on the blocks that hold each stack's self-attention (a plain
    model runs the whole sequence at every step: a pass starts at its stack's first position)."""
    steered = any(isinstance(e, SteerResidual) and e.strength for e in edits)
    names = [name for name in stacks if name != "cross"]
    blocks = {name: enclosing_blocks(model, stacks[name]) for name in names} if steered else {}
    offsets = {name: first for name, (first, _) in stack_offsets(n_source).items()}
    seq_dims = {name: -2 if stacks[name][0].batch_first else -3 for name in names}
    return ResidualSteering(edits, blocks, offsets=offsets, n_prompt=n_prompt, seq_dims=seq_dims)


def _check_width(logits: torch.Tensor, lm: LanguageModel) -> None:
    """A word list must name every id the model can predict (a Hugging Face tokenizer decodes the
    padding ids of a widened output as "", so those are left alone)."""
    tokenizer = lm.tokenizer
    if isinstance(tokenizer, VocabTokenizer) and logits.shape[-1] > len(tokenizer):
        raise InputError(
            f"{lm.name} predicts {logits.shape[-1]} tokens but its vocabulary has {len(tokenizer)}: "
            f"give lw.VocabTokenizer one word per output (ids {len(tokenizer)} to {logits.shape[-1] - 1} have none)"
        )


def decoder_start(lm: LanguageModel) -> int:
    """The token a plain encoder-decoder's output starts with: its tokenizer's bos token."""
    start = getattr(lm.tokenizer, "bos_token_id", None)
    if not isinstance(start, int):
        raise InputError(
            f"{lm.name} is a plain encoder-decoder: its output starts with a bos token, and its tokenizer "
            f"has none; give one, e.g. lw.LanguageModel(module, tokenizer=lw.VocabTokenizer(vocab, "
            f"bos_token='<s>', eos_token='</s>'))"
        )
    return start


def _next_token(logits: torch.Tensor, generation: dict) -> torch.Tensor:
    if not generation["do_sample"]:
        return logits.argmax(-1, keepdim=True)
    temperature = float(generation.get("temperature", 1.0))
    return torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1)


class _Run:
    """The hooks of one run: capture each attention's queries and keys; steer the edited ones."""

    def __init__(
        self,
        model: torch.nn.Module,
        stacks: dict[str, list[torch.nn.MultiheadAttention]],
        edits: tuple,
        offsets: dict[str, tuple[int, int]],
    ):
        self.places = {id(m): (name, i) for name, modules in stacks.items() for i, m in enumerate(modules)}
        self.modules = {
            place: m for name, modules in stacks.items() for place, m in (((name, i), m) for i, m in enumerate(modules))
        }
        # attention module -> the encoder layer whose fused fast path may skip its forward
        self.owners = {
            id(layer.self_attn): layer
            for layer in model.modules()
            if isinstance(layer, torch.nn.TransformerEncoderLayer) and id(layer.self_attn) in self.places
        }
        self.edits = {
            place: tuple(
                e
                for e in edits
                if isinstance(e, ScaleAttention)
                and e.stack in (None, place[0])
                and (e.layers is None or place[1] in e.layers)
            )
            for place in self.modules
        }
        if any(isinstance(e, AblateHead) and e.positions is not None for e in edits):
            raise InputError(
                "AblateHead positions: a plain PyTorch model's heads are ablated at every position (drop positions)"
            )
        self.ablations = {
            place: [
                e for e in edits if isinstance(e, AblateHead) and (e.stack or SELF) == place[0] and e.layer == place[1]
            ]
            for place in self.modules
        }
        self.offsets = offsets
        self.captured: dict[Place, LayerAttention] = {}  # each pass overwrites: the last one covers every position
        self.head_means: dict[tuple[Place, int], torch.Tensor] = {}  # mean ablation: the first (prompt) pass's
        self.fully_masked_rows = False

    def layer(self, place: Place) -> LayerAttention:
        if place not in self.captured:
            raise InputError(
                f"attention module {place[1]} of {place[0]!r} never ran during the forward pass, so it "
                f"has nothing to show"
            )
        return self.captured[place]

    @contextmanager
    def installed(self, capture: bool) -> Iterator[None]:
        with ExitStack() as stack:
            if capture and self.owners:
                # A hook on an encoder layer would turn its fast path off (torch checks the layer's own
                # hooks): a global one, called for every module, picks out ours and leaves it on.
                hook = torch.nn.modules.module.register_module_forward_hook(self._layer_hook(), with_kwargs=True)
                stack.callback(hook.remove)
            for place, mha in self.modules.items():
                fused = id(mha) in self.owners
                if (capture and not fused) or self.edits[place] or self.ablations[place]:
                    hook = mha.register_forward_pre_hook(
                        self._attention_hook(place, capture and not fused), with_kwargs=True
                    )
                    stack.callback(hook.remove)
                if self.ablations[place]:
                    hook = mha.register_forward_hook(self._ablation_hook(place), with_kwargs=True)
                    stack.callback(hook.remove)
            if any(self.edits.values()) or any(self.ablations.values()):  # a fused encoder layer never calls
                enabled = torch.backends.mha.get_fastpath_enabled()  # the attention we steer
                torch.backends.mha.set_fastpath_enabled(False)
                stack.callback(torch.backends.mha.set_fastpath_enabled, enabled)
            yield

    def _layer_hook(self):
        place_of = {id(layer): self.places[id(layer.self_attn)] for layer in self.owners.values()}
        thread = threading.get_ident()

        def hook(module, args, kwargs, output):  # after the layer ran: its input is as it was given
            place = place_of.get(id(module))
            if place is None or threading.get_ident() != thread:  # another module, or another thread's run
                return None
            bound = dict(zip(("src", "src_mask", "src_key_padding_mask", "is_causal"), args), **kwargs)
            src = bound["src"]
            x = module.norm1(src) if module.norm_first else src
            self._capture(
                place, x, x, bound.get("src_mask"), bool(bound.get("is_causal")), bound.get("src_key_padding_mask")
            )
            return None

        return hook

    def _attention_hook(self, place: Place, capture: bool):
        mha = self.modules[place]

        def hook(module, args, kwargs):
            bound = mha_arguments(args, kwargs)
            query, key = bound["query"], bound["key"]
            if place[0] != "cross" and key is not query and not torch.equal(key, query):
                raise InputError(
                    f"attention module {place[1]} attends over another sequence (cross-attention) outside "
                    f"an nn.TransformerDecoderLayer; llm-widgets reads plain encoder-decoders built from "
                    f"nn.TransformerEncoderLayer and nn.TransformerDecoderLayer (as nn.Transformer is)"
                )
            mask, causal = bound.get("attn_mask"), bool(bound.get("is_causal"))
            if capture:
                self._capture(place, query, key, mask, causal, bound.get("key_padding_mask"))
            if not self.edits[place]:
                return None
            bound["attn_mask"] = self._edited_mask(place, mha, query, key, mask, causal)
            bound["is_causal"] = False  # the mask above says all of it
            return (), bound

        return hook

    def _ablation_hook(self, place: Place):
        mha = self.modules[place]

        def hook(module, args, kwargs, output):
            """The module's output again, computed here with the ablated heads removed before its
            output projection (nn.MultiheadAttention applies it inside one call)."""
            bound = mha_arguments(args, kwargs)
            query, key, value = bound["query"], bound["key"], bound["value"]
            q, k, v = (projected(mha, x, which) for which, x in enumerate((query, key, value)))
            causal, bias = _mask_facts(
                bound.get("attn_mask"), bool(bound.get("is_causal")), q.shape[2], k.shape[2], mha.num_heads, q.device
            )
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if bias is None else bias[None].to(q.dtype), is_causal=causal and bias is None
            )  # [batch, heads, n, d]
            for edit in self.ablations[place]:
                if edit.mode == "zero":
                    out[:, edit.head] = 0
                else:
                    mean = self.head_means.setdefault((place, edit.head), out[:, edit.head].mean(dim=1, keepdim=True))
                    out[:, edit.head] = mean
            out = F.linear(out.transpose(1, 2).flatten(2), mha.out_proj.weight, mha.out_proj.bias)
            return (out if mha.batch_first else out.transpose(0, 1)), None

        return hook

    def _capture(self, place, query, key, mask, is_causal, padding) -> None:
        mha = self.modules[place]
        if padding is not None and bool(torch.as_tensor(padding).any()):
            raise InputError("a key_padding_mask with padded keys: trace one unpadded prompt at a time")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise InputError(
                f"attention module {place[1]} of {place[0]!r} uses add_bias_kv or add_zero_attn, which "
                f"llm-widgets does not recompute yet"
            )
        q, k = projected(mha, query, 0), projected(mha, key, 1)  # [B, H, n, d]
        causal, bias = _mask_facts(mask, is_causal, q.shape[2], k.shape[2], mha.num_heads, q.device)
        self.captured[place] = LayerAttention(
            q[0].detach(), k[0].detach(), 1 / math.sqrt(q.shape[-1]), None, None, causal, None, bias
        )

    def _edited_mask(self, place, mha, query, key, mask, causal) -> torch.Tensor:
        """The module's own mask as an additive float mask [heads, n, kv], plus the edits' log-factors
        (edit positions are the trace's: this stack's start there added)."""
        n, kv = (query.shape[1], key.shape[1]) if mha.batch_first else (query.shape[0], key.shape[0])
        q_off, k_off = self.offsets[place[0]]
        q_pos, k_pos = torch.arange(n, device=query.device), torch.arange(kv, device=query.device)
        is_causal, bias = _mask_facts(mask, causal, n, kv, mha.num_heads, query.device)
        base = torch.zeros(mha.num_heads, n, kv, device=query.device) if bias is None else bias.clone()
        allowed = allowed_mask(q_pos, k_pos, is_causal, None) & ~torch.isneginf(base[0])
        base = base.masked_fill(~allowed, float("-inf"))
        edit, spared = spare_fully_masked(
            edit_bias(self.edits[place], mha.num_heads, q_pos + q_off, k_pos + k_off), allowed
        )
        self.fully_masked_rows |= spared
        return (base + edit).to(query.dtype)


def projected(mha: torch.nn.MultiheadAttention, x: torch.Tensor, which: int) -> torch.Tensor:
    """Queries (which=0), keys (1) or values (2) of `x` as the module computes them: [batch, heads, n, head_dim]."""
    if not mha.batch_first:
        x = x.transpose(0, 1)
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        weight = mha.in_proj_weight[which * e : (which + 1) * e]
    else:
        weight = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[which]
    bias = mha.in_proj_bias[which * e : (which + 1) * e] if mha.in_proj_bias is not None else None
    out = F.linear(x, weight, bias)
    return out.view(*out.shape[:2], mha.num_heads, mha.head_dim).transpose(1, 2)


def _mask_facts(mask: Any, is_causal: bool, n: int, kv: int, heads: int, device) -> tuple[bool, torch.Tensor | None]:
    """(causal, additive bias [heads, n, kv] or None) of the mask nn.MultiheadAttention was given: a
    causal mask (nn.Transformer.generate_square_subsequent_mask's, or a boolean one) is just causal."""
    if mask is None:
        return bool(is_causal), None
    mask = torch.as_tensor(mask, device=device)
    additive = (
        torch.zeros(mask.shape, device=device).masked_fill(mask, float("-inf"))
        if mask.dtype == torch.bool
        else mask.float()
    )
    if additive.dim() == 2:
        upper = torch.ones(n, kv, dtype=torch.bool, device=device).triu(1)
        if n == kv and torch.equal(torch.isneginf(additive), upper) and not additive[~upper].any():
            return True, None
        return False, additive[None].expand(heads, n, kv)
    return False, additive[-heads:]  # [batch * heads, n, kv]: one prompt, its heads
