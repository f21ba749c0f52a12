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
import traitlets
import transformers
from transformers.models.auto import configuration_auto, modeling_auto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import llm_widgets as lw  # noqa: E402
from llm_widgets.models.compat import UNSUPPORTED_ATTENTION, unsupported_attention, uses_attention_registry  # noqa: E402
from tests.test_trace_architectures import PROMPT, VOCAB, ToyTokenizer  # noqa: E402

TARGET = 0.97  # of the types that build, run and use the registry
TOO_BIG = 30_000_000  # parameters: a config whose sizes our shrinking does not reach (vision towers, ...)
SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "intermediate_size": 96,
    "ffn_dim": 96,
    "n_inner": 96,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "n_positions": 128,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 24,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "rotary_dim": 8,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 96,
    "decoder_ffn_dim": 96,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 2,
    "swa_head_dim": 16,
    "vocab_size_per_layer_input": VOCAB,  # Gemma 3n/4's per-layer embeddings
    "hidden_size_per_layer_input": 16,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}
# what one family needs beyond the shared sizes: which layers attend in a hybrid, MLA's head sizes
OVERRIDES = {
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"]),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], attention_window_size=6),
    # Moshi's own generate differs with and without its cache once the text outgrows a sliding window
    # (transformers 5.24): keep the window longer than the test's text
    "moshi": dict(sliding_window=128),
    # Dory's blocks: input, recurrent (run n_recurrent_loops times), output
    "dory": dict(num_hidden_layers=3, n_input_layers=1, n_recurrent_layers=1, n_output_layers=1),
}
MLA = dict(head_dim=8, qk_head_dim=16, num_key_value_heads=4)  # head_dim: the rotary part; keys per query head
# each type runs twice: at SIZES, and "type@varied": more layers (a hybrid's attention first and
# last), more and smaller heads, a shorter window
VARIED = {
    **{name: 3 for name in ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers")},
    **{name: 8 for name in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")},
    **{name: 8 for name in ("decoder_attention_heads", "swa_num_attention_heads", "head_dim", "swa_head_dim")},
    "num_key_value_heads": 4,
    "swa_num_key_value_heads": 4,
    "sliding_window": 4,
}


def case_config(case: str):
    """The config of a sweep case: "llama" at SIZES, "llama@varied" with VARIED over them."""
    model_type, _, variant = case.partition("@")
    return tiny_config(model_type, VARIED if variant == "varied" else None)


def tiny_config(model_type: str, variant: dict | None = None):
    """The type's config at tiny sizes, built through its own constructor where it takes them (so
    what its __post_init__ derives, per-layer sizes, recurrent depth, follows), else set after; a
    hybrid gets one layer of another kind, then one that attends."""
    cls = configuration_auto.CONFIG_MAPPING[model_type]
    values = {**SIZES, **(variant or {})}
    if "qk_rope_head_dim" in _parameters(cls):  # MLA: a key per query head
        values.update(MLA, num_key_value_heads=values["num_attention_heads"])
    values.update(OVERRIDES.get(model_type, {}))  # what a family needs wins over a variant
    config = _constructed(cls, values)
    n_layers = (variant or {}).get("num_hidden_layers", 2)
    kinds = (
        _hybrid_layers(cls, n_layers) if model_type not in OVERRIDES and "layer_types" not in (variant or {}) else None
    )
    if kinds and "layer_types" in _parameters(cls):
        config = _constructed(cls, {**values, "layer_types": kinds, "num_hidden_layers": len(kinds)})
    for name, value in values.items():
        if name not in _parameters(cls) and (hasattr(config, name) or name in OVERRIDES.get(model_type, {})):
            _set(config, name, value)
    if kinds and getattr(config, "layer_types", None) != kinds:
        _set(config, "layer_types", kinds)
        _set(config, "num_hidden_layers", len(kinds))
    for name, value in vars(config).items():  # per-layer lists (heads per layer, ...): one entry a layer
        if name.endswith("_per_layer") and isinstance(value, list) and value:
            base = getattr(config, name.removesuffix("_per_layer"), None)
            setattr(config, name, [base if isinstance(base, int) else value[0]] * config.num_hidden_layers)
    if getattr(config, "sliding_window", None) and "sliding_window" not in values:
        config.sliding_window = 6
    return config


def _parameters(cls) -> set[str]:
    fields = getattr(cls, "__dataclass_fields__", None)
    return set(fields) if fields else set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def _constructed(cls, values: dict):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**{k: v for k, v in values.items() if k in _parameters(cls)})
    except Exception:  # noqa: BLE001 - sizes this constructor checks against each other: set them after
        return cls()


def _set(config, name: str, value) -> None:
    try:
        setattr(config, name, value)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        pass


def _hybrid_layers(cls, n_layers: int) -> list[str] | None:
    """A hybrid's layer kinds for the sweep, from its full-size default: one of another kind, then
    one that attends (three layers: attention first and last)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kinds = getattr(cls(), "layer_types", None)
    if not isinstance(kinds, list) or not kinds:
        return None
    kinds = list(dict.fromkeys(kinds))
    attends = [k for k in kinds if "attention" in k and "linear" not in k] or kinds[-1:]
    others = [k for k in kinds if k not in attends]
    if not others:
        return attends[:1] * n_layers
    return others[:1] + attends[:1] if n_layers == 2 else attends[:1] + others[:1] + attends[:1]


def build(case: str, attn: str | None = None, state: dict | None = None) -> torch.nn.Module:
    kwargs = {"attn_implementation": attn} if attn else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(case_config(case), **kwargs).float().eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def causal_types() -> list[str]:
    return sorted(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def cases() -> list[str]:
    return causal_types() + [f"{t}@varied" for t in causal_types()]


def runnable(case: str) -> tuple[torch.nn.Module | None, str]:
    """The tiny plain model, or None and why it is not counted."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            size = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(case_config(case)).parameters())
        if size > TOO_BIG:
            return None, f"does not shrink ({size / 1e6:.0f}M parameters)"
        model = build(case)
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


def check(case: str, model: torch.nn.Module) -> None:
    """The matrix's checks on one tiny model; raises AssertionError or the engine's error."""
    lm = lw.LanguageModel(model, ToyTokenizer(), name=f"tiny-{case}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = lm.trace(PROMPT, max_new_tokens=4)
        with torch.no_grad():
            plain = model.generate(torch.tensor([PROMPT]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert traced.generated_ids == plain[0, len(PROMPT) :].tolist(), (
            "the traced generate differs from the plain one"
        )
        eager = build(case, "eager", model.state_dict())
        with torch.no_grad():
            given = eager(torch.tensor([PROMPT]), output_attentions=True).attentions
        tr = lm.trace(PROMPT)
        # per layer, or (hybrids) only the layers that attend
        reference = (
            [given[layer] for layer in tr.attention_layers]
            if len(given) == tr.n_layers
            else [a for a in given if a is not None]
        )
        assert len(reference) == len(tr.attention_layers), (
            f"eager gives {len(reference)} attention maps, we see layers {tr.attention_layers}"
        )
        for layer, maps in zip(tr.attention_layers, reference):
            for head in range(maps.shape[1]):
                ours, theirs = tr.attention(layer, head), maps[0, head].float()
                if (theirs.sum(-1) - 1).abs().max() < 1e-4 < (ours.sum(-1) - 1).abs().max():
                    # a sink applied after the softmax (Granite-SWA scales the output by it): eager reports
                    # the weights without the sink's share, we show the share that reaches the keys
                    ours = ours / ours.sum(-1, keepdim=True)
                worst = (ours - theirs).abs().max().item()
                assert worst < 1e-4, f"layer {layer} head {head}: attention differs from eager by {worst:.3g}"
        base = lm.trace(PROMPT, keep_logits=True)
        same = lm.trace(PROMPT, keep_logits=True, edits=[lw.ScaleAttention(1.0, keys=(0, 10))])
        assert (same.logits - base.logits).abs().max() < 1e-5, "a factor-1 edit changed the logits"
        edits = [lw.ScaleAttention(0.05, keys=(1, 6), layers=[tr.attention_layers[0]])]
        cached = lm.trace(PROMPT, max_new_tokens=4, edits=edits)
        uncached = lm.trace(PROMPT, max_new_tokens=4, edits=edits, use_cache=False)
        assert cached.generated_ids == uncached.generated_ids, "an edited generate differs with and without the cache"


def sweep(cases: list[str], report=print) -> dict[str, tuple[str, str]]:
    """{case: (status, why)}: pass, fail, refused (and said why), or not counted."""
    results = {}
    for case in cases:
        model_type = case.partition("@")[0]
        started = time.perf_counter()
        model, why = runnable(case)
        if model is None:
            results[case] = ("not counted", why)
        elif unsupported_attention(model_type):
            reason = unsupported_attention(model_type)
            try:
                lw.LanguageModel(model, ToyTokenizer()).trace(PROMPT)
                results[case] = ("fail", "listed as unsupported, but traced without an error")
            except lw.InputError as error:
                # (a type wrong only on an older transformers release is counted apart, as one that does not build)
                status = "refused" if model_type in UNSUPPORTED_ATTENTION else "not counted"
                results[case] = (
                    (status, reason) if reason in str(error) else ("fail", f"refused without its reason: {error}")
                )
        else:
            try:
                check(case, model)
                results[case] = ("pass", "")
            except lw.InputError as error:  # refused saying why (no layer attends, recurrent depth): counted so
                refused = str(error).startswith("llm-widgets cannot trace this model")
                results[case] = ("refused" if refused else "fail", str(error)[:160])
            except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the sweep
                results[case] = ("fail", f"{type(error).__name__}: {str(error)[:160]}")
        report(f"{results[case][0]:12} {case:32} {time.perf_counter() - started:5.1f}s {results[case][1]}")
    return results


def summary(results: dict[str, tuple[str, str]]) -> str:
    counted = {t: r for t, r in results.items() if r[0] != "not counted"}
    passed = sum(r[0] == "pass" for r in counted.values())
    return f"{passed}/{len(counted)} architectures pass"


@pytest.mark.slow
def test_every_registry_causal_lm_is_traced_exactly(capsys):
    results = sweep(cases())
    line = summary(results)
    with capsys.disabled():
        print(f"\n{line}; refused: {sorted(t for t, r in results.items() if r[0] == 'refused')}")
    failures = {t: why for t, (status, why) in results.items() if status == "fail"}
    assert failures == {}, f"{line}; failing: {failures}"
    counted = [r for r in results.values() if r[0] != "not counted"]
    assert sum(r[0] == "pass" for r in counted) >= TARGET * len(counted), line


if __name__ == "__main__":
    outcome = sweep(sys.argv[1:] or cases())
    print(summary(outcome))


# --- what the sweep's families need, one by one ---


def test_a_hybrid_model_shows_the_layers_that_attend():
    if "lfm3" not in configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"LFM3 (a convolution layer, then attention) is not in transformers {transformers.__version__}")
    lm = lw.LanguageModel(build("lfm3"), ToyTokenizer(), name="tiny-lfm3")  # a convolution layer, then attention
    tr = lm.trace(PROMPT, max_new_tokens=2)
    assert tr.attention_layers == (1,)
    with pytest.raises(lw.InputError, match="layer 0 has no attention.*attention layers are \\[1\\]"):
        tr.attention(0, 0)
    grid = tr.attention_grid().reshape(tr.n_layers, tr.n_heads, -1)
    assert grid[0].abs().max() == 0 and grid[1].abs().max() > 0  # a blank row where nothing attends
    view = lw.AttentionView(tr)
    assert view.layer == 1 and view.attention_layers == [1]
    with pytest.raises(traitlets.TraitError, match="layer 0 has no attention"):
        view.layer = 0
    with pytest.raises(lw.InputError, match="names layer 0, which has no attention"):
        lm.trace(PROMPT, edits=[lw.ScaleAttention(2.0, keys=(0, 2), layers=[0])])
    steered = lm.trace(
        PROMPT, keep_logits=True, edits=[lw.ScaleAttention(0.0, keys=(2, 8))]
    )  # every layer that attends
    assert (steered.logits - lm.trace(PROMPT, keep_logits=True).logits).abs().max() > 1e-4


def test_attention_sinks_take_their_share_of_each_row():
    model = build("gpt_oss")
    with torch.no_grad():
        model.model.layers[0].self_attn.sinks.fill_(2.0)  # a strong sink
    tr = lw.LanguageModel(model, ToyTokenizer()).trace(PROMPT)
    totals = tr.attention(0, 0).sum(-1)
    assert (totals < 0.99).all() and (totals > 0).all()  # the rest went to the sink
    assert tr.sink_layers == (0, 1) and lw.AttentionView(tr).sink_layers == [0, 1]  # the view says so
    eager = build("gpt_oss", "eager", model.state_dict())
    with torch.no_grad():
        reference = eager(torch.tensor([PROMPT]), output_attentions=True).attentions[0][0, 0]
    torch.testing.assert_close(tr.attention(0, 0), reference.float(), atol=1e-5, rtol=0)


def test_layers_with_another_head_count_than_the_config_are_refused_clearly():
    config = tiny_config("llama")
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.config.num_attention_heads = 8  # what a per-layer config can make the global number say
    with pytest.raises(lw.InputError, match="has 4 attention heads, its config says 8"):
        lw.LanguageModel(model, ToyTokenizer()).trace(PROMPT)


def test_a_config_where_nothing_attends_or_attention_recurs_is_refused_with_the_reason():
    if "lfm3" in configuration_auto.CONFIG_MAPPING:  # two convolution layers: nothing attends
        config = _constructed(configuration_auto.CONFIG_MAPPING["lfm3"], {**SIZES, "layer_types": ["conv", "conv"]})
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        with pytest.raises(lw.InputError, match=r"has no layer that attends \(its layers are \['conv', 'conv'\]\)"):
            lw.LanguageModel(model, ToyTokenizer()).trace(PROMPT, max_new_tokens=2)
    if "hrm_text" in configuration_auto.CONFIG_MAPPING:  # recurrent depth: 4 modules, 16 calls a forward
        with pytest.raises(
            lw.InputError,
            match="the 4 attention modules of HrmTextForCausalLM as configured run several times per forward",
        ):
            lw.LanguageModel(build("hrm_text"), ToyTokenizer()).trace(PROMPT)
    if "dory" in configuration_auto.CONFIG_MAPPING:  # one recurrent block, run twice: seen as it runs
        with pytest.raises(lw.InputError, match="the DoryAttention modules run several times per forward"):
            lw.LanguageModel(build("dory"), ToyTokenizer()).trace(PROMPT)
    shared = build("llama")  # one block run twice (weights shared across depth)
    shared.model.layers[1] = shared.model.layers[0]
    with pytest.raises(
        lw.InputError, match="the 1 attention modules of LlamaForCausalLM as configured run several times per forward"
    ):
        lw.LanguageModel(shared, ToyTokenizer()).trace(PROMPT)


def test_a_window_applied_only_by_the_mask_is_shown():
    """Phi-MoE passes its sliding window to the mask alone, not to the attention function."""
    model = build_varied("phimoe", sliding_window=4)
    lm = lw.LanguageModel(model, ToyTokenizer())
    tr = lm.trace(PROMPT)
    eager = build_varied("phimoe", "eager", model.state_dict(), sliding_window=4)
    with torch.no_grad():
        reference = eager(torch.tensor([PROMPT]), output_attentions=True).attentions[0][0]
    assert ((tr.attention(0, 0) > 0).sum(-1) <= 4).all()
    torch.testing.assert_close(tr.attention(0, 2), reference[2].float(), atol=1e-5, rtol=0)
    edits = [lw.ScaleAttention(0.05, keys=(len(PROMPT) - 3, len(PROMPT)))]
    cached = lm.trace(PROMPT, max_new_tokens=4, edits=edits)
    assert cached.generated_ids == lm.trace(PROMPT, max_new_tokens=4, edits=edits, use_cache=False).generated_ids
    assert ((cached.attention(1, 1)[-3:] > 0).sum(-1) <= 4).all()  # the generated tokens' rows too


def test_per_layer_sizes_and_a_decoder_alone_read_from_the_right_fields():
    if "gemma4_text" in configuration_auto.CONFIG_MAPPING:  # head_dim 16 in sliding layers, 512 in full ones
        lm = lw.LanguageModel(build("gemma4_text"), ToyTokenizer())
        assert lm.facts.head_dim == 16 and lm.facts.n_layers == 2
        assert lm.trace(PROMPT).attention(1, 0).shape == (len(PROMPT), len(PROMPT))
    config = tiny_config("whisper", {"encoder_attention_heads": 2, "decoder_attention_heads": 4})
    whisper = lw.LanguageModel(transformers.WhisperForCausalLM(config).eval(), ToyTokenizer())
    assert whisper.facts.n_heads == 4  # the decoder's, not the encoder's 2
    assert whisper.trace(PROMPT).n_heads == 4


def build_varied(model_type: str, attn: str | None = None, state: dict | None = None, **sizes) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        kwargs = {"attn_implementation": attn} if attn else {}
        model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type, sizes), **kwargs).float().eval()
    if state is not None:
        model.load_state_dict(state)
    return model
