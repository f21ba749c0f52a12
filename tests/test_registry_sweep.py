"""Every causal-LM type of the installed transformers that computes attention through the
attention registry, each from a tiny random config of its own config class: the traced
generate equals the plain one, recomputed attention equals eager attention (all heads of every
layer that attends), a factor-1 edit changes nothing, and an edited generate is the same with and
without the KV cache. Types whose tiny model does not build or run (configs that need real sizes,
multimodal wrappers) are counted apart; types we refuse are listed, with the reason, in
`llm_widgets.models.compat.UNSUPPORTED_ATTENTION`, and must get an error naming it.

`python tests/test_registry_sweep.py [TYPE ...]` prints one line per type and `N/M architectures pass`.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.auto import configuration_auto, modeling_auto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import llm_widgets as lw  # noqa: E402
from llm_widgets.models.compat import UNSUPPORTED_ATTENTION, uses_attention_registry  # noqa: E402
from tests.test_trace_architectures import PROMPT, ToyTokenizer, VOCAB  # noqa: E402

TARGET = 0.97  # of the types that build, run and use the registry
TOO_BIG = 30_000_000  # parameters: a config whose sizes our shrinking does not reach (vision towers, ...)
SIZES = {
    "vocab_size": VOCAB, "hidden_size": 64, "n_embd": 64, "d_model": 64, "intermediate_size": 96, "ffn_dim": 96,
    "n_inner": 96, "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "num_attention_heads": 4, "n_head": 4,
    "num_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128, "n_positions": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4, "num_local_experts": 4,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "kv_lora_rank": 16, "q_lora_rank": 24,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1, "n_group": 1,
    "topk_group": 1, "rotary_dim": 8, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": None,
}
# what one family needs beyond the shared sizes: which layers attend in a hybrid, MLA's head sizes
OVERRIDES = {
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"]),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], attention_window_size=6),
}
MLA = dict(head_dim=8, qk_head_dim=16, num_key_value_heads=4)  # head_dim: the rotary part; keys per query head


def tiny_config(model_type: str):
    config = configuration_auto.CONFIG_MAPPING[model_type]()
    values = dict(SIZES)
    if hasattr(config, "qk_rope_head_dim"):
        values.update(MLA)
    values.update(OVERRIDES.get(model_type, {}))
    for name, value in values.items():
        if hasattr(config, name) or name in OVERRIDES.get(model_type, {}):
            try:
                setattr(config, name, value)
            except (AttributeError, TypeError, ValueError):
                pass
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, list) and kinds and model_type not in OVERRIDES:
        kinds = list(dict.fromkeys(kinds))
        attends = [k for k in kinds if "attention" in k and "linear" not in k] or kinds[-1:]
        others = [k for k in kinds if k not in attends]
        try:  # a hybrid: one layer of another kind, then one that attends
            config.layer_types = (others[:1] + attends[:1]) if others else attends[:1] * 2
            config.num_hidden_layers = len(config.layer_types)
        except (AttributeError, TypeError, ValueError):
            pass
    if getattr(config, "sliding_window", None):
        config.sliding_window = 6
    return config


def build(model_type: str, attn: str | None = None, state: dict | None = None) -> torch.nn.Module:
    kwargs = {"attn_implementation": attn} if attn else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type), **kwargs).float().eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def causal_types() -> list[str]:
    return sorted(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def runnable(model_type: str) -> tuple[torch.nn.Module | None, str]:
    """The tiny plain model, or None and why it is not counted."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            size = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(
                tiny_config(model_type)).parameters())
        if size > TOO_BIG:
            return None, f"does not shrink ({size / 1e6:.0f}M parameters)"
        model = build(model_type)
    except Exception as error:  # noqa: BLE001 - a config that needs real sizes: not counted, said why
        return None, f"does not build: {type(error).__name__}: {str(error)[:120]}"
    if not uses_attention_registry(model):
        return None, "outside the attention registry (viewed through eager output_attentions)"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.generate(torch.tensor([PROMPT]), max_new_tokens=2, do_sample=False, pad_token_id=0)
    except Exception as error:  # noqa: BLE001
        return None, f"does not run: {type(error).__name__}: {str(error)[:120]}"
    return model, ""


def check(model_type: str, model: torch.nn.Module) -> None:
    """The matrix's checks on one tiny model; raises AssertionError or the engine's error."""
    lm = lw.LanguageModel(model, ToyTokenizer(), name=f"tiny-{model_type}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = lm.trace(PROMPT, max_new_tokens=4)
        with torch.no_grad():
            plain = model.generate(torch.tensor([PROMPT]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert traced.generated_ids == plain[0, len(PROMPT):].tolist(), "the traced generate differs from the plain one"
        eager = build(model_type, "eager", model.state_dict())
        with torch.no_grad():
            reference = [a for a in eager(torch.tensor([PROMPT]), output_attentions=True).attentions if a is not None]
        tr = lm.trace(PROMPT)
        assert len(reference) == len(tr.attention_layers), \
            f"eager gives {len(reference)} attention maps, we see layers {tr.attention_layers}"
        for layer, maps in zip(tr.attention_layers, reference):
            for head in range(maps.shape[1]):
                worst = (tr.attention(layer, head) - maps[0, head].float()).abs().max().item()
                assert worst < 1e-4, f"layer {layer} head {head}: attention differs from eager by {worst:.3g}"
        base = lm.trace(PROMPT, keep_logits=True)
        same = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(1.0, keys=(0, 10))])
        assert (same.logits - base.logits).abs().max() < 1e-5, "a factor-1 edit changed the logits"
        edits = [lw.ScaleAttention(0.05, keys=(1, 6), layers=[tr.attention_layers[0]])]
        cached = lm.trace(PROMPT, max_new_tokens=4, edits=edits)
        uncached = lm.trace(PROMPT, max_new_tokens=4, edits=edits, use_cache=False)
        assert cached.generated_ids == uncached.generated_ids, "an edited generate differs with and without the cache"


def sweep(types: list[str], report=print) -> dict[str, tuple[str, str]]:
    """{type: (status, why)}: pass, fail, refused (and said why), or not counted."""
    results = {}
    for model_type in types:
        started = time.perf_counter()
        model, why = runnable(model_type)
        if model is None:
            results[model_type] = ("not counted", why)
        elif model_type in UNSUPPORTED_ATTENTION:
            try:
                lw.LanguageModel(model, ToyTokenizer()).trace(PROMPT)
                results[model_type] = ("fail", "listed as unsupported, but traced without an error")
            except lw.InputError as error:
                named = UNSUPPORTED_ATTENTION[model_type] in str(error)
                results[model_type] = ("refused", UNSUPPORTED_ATTENTION[model_type]) if named else \
                    ("fail", f"refused without its reason: {error}")
        else:
            try:
                check(model_type, model)
                results[model_type] = ("pass", "")
            except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the sweep
                results[model_type] = ("fail", f"{type(error).__name__}: {str(error)[:160]}")
        report(f"{results[model_type][0]:12} {model_type:26} {time.perf_counter() - started:5.1f}s "
               f"{results[model_type][1]}")
    return results


def summary(results: dict[str, tuple[str, str]]) -> str:
    counted = {t: r for t, r in results.items() if r[0] != "not counted"}
    passed = sum(r[0] == "pass" for r in counted.values())
    return f"{passed}/{len(counted)} architectures pass"


@pytest.mark.slow
def test_every_registry_causal_lm_is_traced_exactly(capsys):
    results = sweep(causal_types())
    line = summary(results)
    with capsys.disabled():
        print(f"\n{line}; refused: {sorted(t for t, r in results.items() if r[0] == 'refused')}")
    failures = {t: why for t, (status, why) in results.items() if status == "fail"}
    assert failures == {}, f"{line}; failing: {failures}"
    counted = [r for r in results.values() if r[0] != "not counted"]
    assert sum(r[0] == "pass" for r in counted) >= TARGET * len(counted), line


if __name__ == "__main__":
    outcome = sweep(sys.argv[1:] or causal_types())
    print(summary(outcome))
