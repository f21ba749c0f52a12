"""Shared fixtures. Tests run offline: no model hub, no network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import llm_widgets as lw  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gpt2() -> lw.LanguageModel:
    return lw.load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def smollm2() -> lw.LanguageModel:
    """The real 135M model; the first load on a machine converts the GGUF (about 30 s)."""
    return lw.load_model("smollm2-135m", progress=False)
