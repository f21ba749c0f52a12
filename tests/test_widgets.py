"""Widget state without a browser: what the front end receives."""

from __future__ import annotations

import pytest

import llm_widgets as lw
from llm_widgets.widgets import _frontend


def test_model_card_state(tiny_gpt2):
    card = lw.ModelCard(tiny_gpt2)
    assert card.facts == tiny_gpt2.facts.to_dict()
    assert card.source["bundled"] == "tiny-gpt2"
    state = card.get_state()
    assert state["facts"]["n_layers"] == 4
    assert "export default" in str(card._esm) or "render" in str(card._esm)
    assert ".lw-card" in str(card._css)


def test_model_card_refuses_other_things(tiny_gpt2):
    with pytest.raises(TypeError, match="ModelCard takes a LanguageModel"):
        lw.ModelCard(tiny_gpt2.model)


def test_missing_build_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(_frontend, "STATIC", tmp_path)
    with pytest.raises(RuntimeError, match="make build"):
        _frontend.bundle("model_card")


def test_bundles_are_offline():
    """No CDN and no network address in what the browser loads."""
    for path in _frontend.STATIC.iterdir():
        text = path.read_text()
        for needle in ("http://", "https://", "cdn.", "unpkg", "jsdelivr"):
            assert needle not in text, f"{path.name} mentions {needle}"
