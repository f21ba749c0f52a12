"""Widget state without a browser: what the front end receives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import traitlets

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


# --- AttentionView: state and request handlers, no browser ---

from llm_widgets.widgets.transport import decode_rows_uint8, encode_rows_uint8  # noqa: E402


@pytest.fixture(scope="module")
def view(tiny_gpt2):
    return lw.AttentionView(tiny_gpt2.trace("<img src=x onerror=alert(1)> Call me Ishmael.", max_new_tokens=4))


def test_attention_view_state(view):
    tr = view.trace
    assert view.tokens == tr.tokens and view.n_prompt == tr.n_prompt
    assert (view.n_layers, view.n_heads, view.layer, view.head, view.query) == (4, 8, 0, 0, -1)
    assert "<img" in "".join(view.tokens)  # token text travels as data; the front end renders it as text


def test_uint8_rows_round_trip():
    m = torch.rand(5, 7) * torch.tensor([[1.0], [0.1], [0.001], [0.5], [0.0]])
    meta, buffers = encode_rows_uint8(m)
    assert meta == {"shape": [5, 7], "dtype": "uint8", "scale": "per_row"}
    assert len(buffers[0]) == 35 and len(buffers[1]) == 20
    back = decode_rows_uint8(meta, buffers)
    assert np.abs(back - m.numpy()).max(axis=1).tolist() <= (m.abs().amax(1) / 255 / 2 + 1e-7).tolist()


def test_requests_answer_with_binary_matrices(view):
    tr = view.trace
    message, buffers = view.answer({"type": "request", "id": 7, "what": "overview", "layer": 2, "head": 3, "size": 512})
    assert message["id"] == 7 and message["shape"] == [len(tr), len(tr)]
    np.testing.assert_allclose(decode_rows_uint8(message, buffers), tr.attention(2, 3).numpy(), atol=1 / 255)
    message, buffers = view.answer({"what": "row", "layer": 1, "head": 0, "query": len(tr) - 1})
    np.testing.assert_allclose(decode_rows_uint8(message, buffers)[0], tr.attention(1, 0)[-1].numpy(), atol=1 / 255)
    message, buffers = view.answer({"what": "grid", "size": 6})
    assert message["shape"] == [4 * 8 * 6, 6]
    np.testing.assert_allclose(decode_rows_uint8(message, buffers)[6 * 9: 6 * 10],
                               tr.attention_overview(1, 1, size=6).numpy(), atol=1 / 255)


def test_bad_requests_reply_with_an_error(view):
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    view._on_request(view, {"type": "request", "id": 3, "what": "overview", "layer": 9, "head": 0}, [])
    view._on_request(view, {"type": "request", "id": 4, "what": "everything"}, [])
    del view.send
    assert sent[0]["type"] == "error" and "layer 9 is out of range" in sent[0]["message"]
    assert "unknown request 'everything'" in sent[1]["message"]


def test_selection_is_validated(view):
    with pytest.raises(traitlets.TraitError, match="layer 4 is out of range"):
        view.layer = 4
    with pytest.raises(traitlets.TraitError, match="head -1 is out of range"):
        view.head = -1
    view.query = 3
    assert view.query == 3
    with pytest.raises(TypeError, match="AttentionView takes a Trace"):
        lw.AttentionView("not a trace")


def test_grid_of_a_long_trace_samples_one_exact_row_per_bin(tiny_gpt2, monkeypatch):
    from llm_widgets.widgets import attention_view

    monkeypatch.setattr(attention_view, "EXACT_GRID", 8)  # treat this trace as long
    view = lw.AttentionView(tiny_gpt2.trace("Call me Ishmael. Some years ago, never mind how long"))
    n = len(view.trace)
    grid = view.grid(size=4)
    assert grid.shape == (4 * 8 * 4, 4)
    edges = torch.linspace(0, n, 5).round().long()
    layer, head = 2, 5
    thumb = grid[(layer * 8 + head) * 4:(layer * 8 + head + 1) * 4]
    full = view.trace.attention(layer, head)
    for b in range(4):
        row = full[edges[b + 1] - 1]  # the bin's last query, exactly
        expected = [row[edges[k]:edges[k + 1]].max().item() for k in range(4)]
        assert thumb[b].tolist() == pytest.approx(expected, abs=1e-6)
