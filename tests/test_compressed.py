"""The models users compress (the `compress` extra): a LoRA adapter (peft) before and after merging,
int8 and int4 weights (optimum-quanto), float16 and bfloat16 copies, a magnitude-pruned copy.
Traced logits equal the plain model's, attention equals eager within the dtype's tolerance, and
lw.diverge blames what was changed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as prune
import transformers

import llm_widgets as lw
from llm_widgets.models.modes import model_mode

from .test_trace_architectures import PROMPT, VOCAB, build_from

peft = pytest.importorskip("peft", reason="the compress extra (pip install 'llm-widgets[compress]')")
quanto = pytest.importorskip("optimum.quanto", reason="the compress extra (pip install 'llm-widgets[compress]')")

# attention computed in the model's dtype against ours (float32 from its scores): the README's tolerances
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-2}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama() -> lw.LanguageModel:
    """Wide enough for int4's groups of 128 input features."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return build_from(config, transformers.AutoModelForCausalLM, "tiny-llama")


def lora(model: torch.nn.Module, layers: list[int] | None = None, seed: int = 0) -> torch.nn.Module:
    """A LoRA adapter on every attention and MLP projection, with non-zero weights (as after training)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=PROJECTIONS, init_lora_weights=False, layers_to_transform=layers
    )
    return peft.get_peft_model(copy.deepcopy(model), config)


def quantized(model: torch.nn.Module, weights, exclude=None) -> torch.nn.Module:
    q = copy.deepcopy(model)
    quanto.quantize(q, weights=weights, exclude=exclude)
    quanto.freeze(q)
    return q


def pruned(model: torch.nn.Module, amount: float = 0.3) -> torch.nn.Module:
    p = copy.deepcopy(model)
    for module in p.modules():
        if isinstance(module, torch.nn.Linear):
            prune.l1_unstructured(module, "weight", amount=amount)
    return p


VARIANTS = {
    "lora": lora,
    "lora merged": lambda m: lora(m).merge_and_unload(),
    "int8": lambda m: quantized(m, quanto.qint8),
    "int4": lambda m: quantized(m, quanto.qint4),
    "float16": lambda m: copy.deepcopy(m).half(),
    "bfloat16": lambda m: copy.deepcopy(m).bfloat16(),
    "pruned": pruned,
}


def eager_attention(model: torch.nn.Module, ids: list[int]):
    """The model's own eager attention (quantized tensors cannot be deep-copied: switch and restore)."""
    with model_mode(model, attn_implementation="eager"), torch.no_grad():
        return model(torch.tensor([ids]), output_attentions=True).attentions


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_traces_of_compressed_models_are_faithful(variant, llama):
    model = VARIANTS[variant](llama.model)
    lm = lw.LanguageModel(model, llama.tokenizer, name=f"tiny-llama {variant}")
    tr = lm.trace(PROMPT, keep_logits=True)
    with torch.no_grad():
        plain = model(torch.tensor([PROMPT])).logits[0].float()
    assert torch.equal(tr.logits, plain), f"{variant}: traced logits differ from plain"
    reference = eager_attention(model, PROMPT)
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    for layer in range(lm.facts.n_layers):
        for head in range(lm.facts.n_heads):
            torch.testing.assert_close(
                tr.attention(layer, head), reference[layer][0, head].float(), atol=TOLERANCE[dtype], rtol=0
            )
    generated = lm.trace(PROMPT, max_new_tokens=3).generated_ids
    with torch.no_grad():
        plain_generated = model.generate(torch.tensor([PROMPT]), max_new_tokens=3, do_sample=False)[0, len(PROMPT) :]
    assert generated == plain_generated.tolist()


def test_a_lora_adapter_on_one_layer_is_blamed_on_it(llama):
    adapted = lw.LanguageModel(lora(llama.model, layers=[1]), llama.tokenizer, name="tiny-llama + LoRA on layer 1")
    d = lw.diverge(llama, adapted, PROMPT, 4)
    assert float(d.kl.mean()) > 0 and float(d.errors["residual"][0].abs().max()) == 0
    layer, site, share = d.blame[0]
    assert layer == 1 and site in ("attention", "mlp", "residual") and share > 0.5
    merged = lw.LanguageModel(adapted.model.merge_and_unload(), llama.tokenizer, name="merged")
    again = lw.diverge(llama, merged, PROMPT, 4)
    assert again.blame[0][0] == 1
    torch.testing.assert_close(again.kl, d.kl, atol=1e-5, rtol=1e-3)  # merging changes rounding only


def test_a_quantized_unembedding_is_blamed_on_the_output(llama):
    head_only = quantized(llama.model, quanto.qint8, exclude=[f"model.layers.{i}*" for i in range(3)])
    d = lw.diverge(llama, lw.LanguageModel(head_only, llama.tokenizer, name="int8 lm_head"), PROMPT, 4)
    assert float(d.errors["residual"].abs().max()) == 0 and float(d.kl.mean()) > 0
    assert d.blame[0][:2] == (3, "output") and d.blame[0][2] == pytest.approx(1.0)


def test_keeping_the_blamed_layer_in_full_precision_takes_its_share_away(llama):
    int4 = lw.LanguageModel(quantized(llama.model, quanto.qint4), llama.tokenizer, name="int4")
    d = lw.diverge(llama, int4, PROMPT, 4)
    layer, site, share = next(item for item in d.alone if item[1] in ("attention", "mlp"))
    keep = f"model.layers.{layer}.{'self_attn' if site == 'attention' else 'mlp'}*"
    fixed = lw.LanguageModel(quantized(llama.model, quanto.qint4, exclude=[keep]), llama.tokenizer, name="fixed")
    after = lw.diverge(llama, fixed, PROMPT, 4, blame=False)
    assert float(after.kl.mean()) < float(d.kl.mean())
