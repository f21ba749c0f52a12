"""Widget state without a browser: what the front end receives."""

from __future__ import annotations

import copy
import json
import re

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
    """No CDN and no network address in what the browser loads (the SVG namespace, an
    identifier that is never fetched, is the one URL a bundle may hold)."""
    for path in _frontend.STATIC.iterdir():
        text = path.read_text().replace('"http://www.w3.org/2000/svg"', "")
        for needle in ("http://", "https://", "cdn.", "unpkg", "jsdelivr"):
            assert needle not in text, f"{path.name} mentions {needle}"


def _selectors(css: str) -> list[str]:
    """The selectors of a stylesheet's top-level rules (comments removed)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    depth, text, selectors = 0, "", []
    for ch in css:
        if ch == "{":
            if depth == 0:
                selectors += [s.strip() for s in text.split(",")]
            depth, text = depth + 1, ""
        elif ch == "}":
            depth, text = depth - 1, ""
        elif depth == 0:
            text += ch
    return selectors


def test_bundles_need_nothing_of_one_front_end():
    """One bundle for JupyterLab, Notebook 7, VS Code, Colab and marimo: no JupyterLab or classic
    Notebook globals, and CSS that styles only our own elements (anywidget puts it in the page's head)."""
    for path in _frontend.STATIC.glob("*.js"):
        text = path.read_text()
        for needle in ("jupyterapp", "@jupyterlab/", "window.jupyter", "Jupyter.notebook", "IPython.", "requirejs"):
            assert needle not in text, f"{path.name} uses {needle}"
    for path in _frontend.STATIC.glob("*.css"):
        selectors = _selectors(path.read_text())
        assert selectors, path.name
        for selector in selectors:
            assert ".lw-" in selector.split()[0], f"{path.name}: {selector!r} styles more than our widgets"


# --- AttentionView: state and request handlers, no browser ---

from llm_widgets.widgets.transport import encode_rows_uint8  # noqa: E402


def decode_rows_uint8(meta: dict, buffers: list[bytes]) -> np.ndarray:
    """What the front end does with an answer (js/lib/heatmap.ts decodeRowsUint8)."""
    rows, cols = meta["shape"]
    values = np.frombuffer(buffers[0], dtype=np.uint8).reshape(rows, cols).astype(np.float32)
    scales = np.frombuffer(buffers[1], dtype=np.float32)
    return values / 255.0 * scales[:, None]


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
    np.testing.assert_allclose(
        decode_rows_uint8(message, buffers)[6 * 9 : 6 * 10], tr.attention_overview(1, 1, size=6).numpy(), atol=1 / 255
    )


def test_bad_requests_reply_with_an_error(view):
    """The front end's requests arrive through anywidget's command ("request"): a bad one gets an
    error reply naming what was wrong, never an exception in the kernel."""
    reply, buffers = view.request({"what": "overview", "layer": 9, "head": 0}, [])
    assert reply["type"] == "error" and "layer 9 is out of range" in reply["message"] and buffers == []
    reply, _ = view.request({"what": "everything"}, [])
    assert "unknown request 'everything'" in reply["message"]
    reply, _ = view.request(["not", "a", "dict"], [])
    assert reply["type"] == "error"
    for request, message in (
        ({"what": "row", "layer": 1, "head": 0}, "the 'row' request has no 'query' field"),
        ({"what": "overview", "layer": "x", "head": 0}, "the 'overview' request's 'layer' must be an integer; got 'x'"),
        ({"what": "tile", "layer": 0, "head": 0, "q0": 0, "q1": 2.5, "k0": 0, "k1": 2}, "'q1' must be an integer"),
        ({"what": "grid", "size": True}, "'size' must be an integer; got True"),
    ):
        reply, buffers = view.request(request, [])
        assert reply == {"type": "error", "message": message} or message in reply["message"], reply
    reply, buffers = view.request({"what": "grid", "size": 6}, [])
    assert reply["type"] == "reply" and len(buffers) == 2
    assert getattr(type(view).request, "_anywidget_command", False)  # anywidget registers it


def test_selection_is_validated(view):
    with pytest.raises(traitlets.TraitError, match="layer 4 is out of range"):
        view.layer = 4
    with pytest.raises(traitlets.TraitError, match="head -1 is out of range"):
        view.head = -1
    view.query = 3
    assert view.query == 3
    with pytest.raises(TypeError, match="AttentionView takes a Trace or a TraceBatch"):
        lw.AttentionView("not a trace")


def test_a_batch_shows_one_row_at_a_time(tiny_gpt2):
    batch = tiny_gpt2.trace(["Call me Ishmael.", "It was the best of times, it was the worst"], max_new_tokens=3)
    view = lw.AttentionView(batch, layer=1)
    assert (view.n_rows, view.row, view.tokens) == (2, 0, batch[0].tokens)
    view.query, view.zoom = 2, [0, 2, 0, 2]
    revision = view.revision
    view.row = 1
    assert view.tokens == batch[1].tokens and view.n_prompt == batch[1].n_prompt
    assert view.output_text == batch[1].output_text and view.revision == revision + 1
    assert (view.query, view.zoom, view.layer) == (-1, [], 1)  # the selection is cleared, the head kept
    message, buffers = view.answer({"what": "overview", "layer": 1, "head": 2})
    np.testing.assert_allclose(decode_rows_uint8(message, buffers), batch[1].attention(1, 2).numpy(), atol=1 / 255)
    with pytest.raises(traitlets.TraitError, match="row 2 is out of range: this batch has rows 0 to 1"):
        view.row = 2
    assert lw.AttentionView(batch[1]).n_rows == 1


def test_grid_of_a_long_trace_samples_one_exact_row_per_bin(tiny_gpt2, monkeypatch):
    from llm_widgets.trace import attention

    monkeypatch.setattr(attention, "EXACT_GRID", 8)  # treat this trace as long
    view = lw.AttentionView(tiny_gpt2.trace("Call me Ishmael. Some years ago, never mind how long"))
    n = len(view.trace)
    grid = view.trace.attention_grid(size=4)
    assert grid.shape == (4 * 8 * 4, 4)
    edges = torch.linspace(0, n, 5).round().long()
    layer, head = 2, 5
    thumb = grid[(layer * 8 + head) * 4 : (layer * 8 + head + 1) * 4]
    full = view.trace.attention(layer, head)
    for b in range(4):
        row = full[edges[b + 1] - 1]  # the bin's last query, exactly
        expected = [row[edges[k] : edges[k + 1]].max().item() for k in range(4)]
        assert thumb[b].tolist() == pytest.approx(expected, abs=1e-6)


def test_zoom_tiles_and_head_rows(view):
    tr = view.trace
    message, buffers = view.answer({"what": "tile", "layer": 1, "head": 2, "q0": 3, "q1": 9, "k0": 0, "k1": 5})
    assert message["shape"] == [6, 5]
    np.testing.assert_allclose(decode_rows_uint8(message, buffers), tr.attention(1, 2)[3:9, 0:5].numpy(), atol=1 / 255)
    pooled = tr.attention_overview(1, 2, size=2, queries=(2, 10), keys=(0, 8))
    full = tr.attention(1, 2)[2:10, 0:8]
    torch.testing.assert_close(pooled, full.reshape(2, 4, 2, 4).amax(dim=(1, 3)))
    message, buffers = view.answer({"what": "heads", "layer": 3, "query": 5})
    assert message["shape"] == [8, len(tr)]
    rows = decode_rows_uint8(message, buffers)
    for head in (0, 7):
        np.testing.assert_allclose(rows[head], tr.attention(3, head)[5].numpy(), atol=1 / 255)
    with pytest.raises(ValueError, match="outside the sequence"):
        tr.attention_overview(0, 0, queries=(5, 999))
    with pytest.raises(traitlets.TraitError, match="zoom must be"):
        view.zoom = [0, 3, 2]


# --- export: what is on screen, as files ---


def test_save_png_svg_html_keep_the_selection(view, tmp_path):
    from PIL import Image

    view.layer, view.head, view.query, view.zoom = 2, 3, 6, [0, 10, 0, 10]
    try:
        png, svg, page = (view.save(tmp_path / f"fig.{ext}") for ext in ("png", "svg", "html"))
    finally:
        view.zoom, view.query = [], -1
    with pytest.raises(lw.InputError, match="cannot save the figure as .*: the folder .* does not exist"):
        view.save(tmp_path / "missing" / "fig.png")
    image = Image.open(png)
    assert image.format == "PNG" and image.width > 400 and len(np.unique(np.asarray(image.convert("L")))) > 10
    text = svg.read_text()
    assert text.startswith("<svg") and "layer 2, head 3" in text and "queries 0-9, keys 0-9" in text
    assert "&lt;" in text and "<img" not in text  # token text escaped, drawn as <text>
    from html import escape

    from llm_widgets.export.attention import shown

    for token in view.trace.tokens[:10]:  # the zoomed region's tokens label the axes, as text
        assert f">{escape(shown(token))}</text>" in text
    html_text = page.read_text()
    assert html_text.startswith("<!doctype html>") and "&lt;" in html_text
    assert "<img" not in html_text and "<script src" not in html_text
    for needle in ("http://", "https://"):  # only the SVG namespace may mention a URL
        assert needle not in html_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    import json
    import re

    data = json.loads(
        re.search(r'<script type="application/json" id="llm-widgets-data">(.*?)</script>', html_text, re.S).group(1)
    )
    assert (data["layer"], data["head"], data["query"], data["queries"]) == (2, 3, 6, [0, 10])
    assert data["tokens"] == view.trace.tokens and data["record"]["output_ids"] == view.trace.generated_ids
    assert data["query_row"] == pytest.approx(view.trace.attention(2, 3)[6].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="must end in .png, .svg or .html"):
        view.save(tmp_path / "fig.pdf")


def test_export_request_returns_the_file(view):
    message, buffers = view.answer({"what": "export", "id": 2, "format": "svg"})
    assert message["type"] == "file" and message["name"] == f"attention-L{view.layer}-H{view.head}.svg"
    assert buffers[0].startswith(b"<svg")
    message, buffers = view.answer({"what": "export", "format": "png"})
    assert buffers[0][:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown export format"):
        view.answer({"what": "export", "format": "gif"})


def test_exported_html_escapes_script_breaking_tokens(tiny_gpt2, tmp_path):
    tr = tiny_gpt2.trace("</script><script>alert(1)</script> hello")
    page = lw.AttentionView(tr).save(tmp_path / "x.html").read_text()
    assert "<script>alert(1)" not in page and page.count("<script") == 1


# --- AttentionEditor: steering from the UI's edit dicts ---

PROMPT = "It was a truth universally acknowledged, that a single man"


@pytest.fixture()
def editor(tiny_gpt2):
    return lw.AttentionEditor(tiny_gpt2, PROMPT, max_new_tokens=8)


def _scale(factor, keys, layers=None, heads=None):
    return {
        "kind": "scale_attention",
        "factor": factor,
        "keys": [list(keys)],
        "queries": None,
        "layers": layers,
        "heads": heads,
    }


def test_editor_starts_from_the_run_without_edits(editor, tiny_gpt2):
    plain = tiny_gpt2.trace(PROMPT, max_new_tokens=8, seed=0)
    assert editor.fidelity == 0.0
    assert editor.edit_specs == [] and editor.edits == []
    assert editor.unedited_tokens == editor.new_tokens == plain.tokens[plain.n_prompt :]
    assert editor.target == editor.new_tokens[0]
    assert editor.p_before == pytest.approx(plain.chosen_probability(0)) == pytest.approx(editor.p_after)
    assert json.loads(editor.record_json)["output_ids"] == plain.generated_ids


def test_ui_edits_regenerate_and_equal_model_trace(editor, tiny_gpt2):
    revision = editor.revision
    editor.edit_specs = [_scale(10.0, (4, 6)), {"kind": "ablate_head", "layer": 1, "head": 2, "mode": "zero"}]
    direct = tiny_gpt2.trace(PROMPT, max_new_tokens=8, seed=0, edits=editor.edits)
    assert editor.edits == [lw.ScaleAttention(10.0, keys=(4, 6)), lw.AblateHead(1, 2)]
    assert editor.new_tokens == direct.tokens[direct.n_prompt :] != editor.unedited_tokens
    assert editor.tokens == direct.tokens and editor.revision == revision + 1 and not editor.busy
    assert editor.p_after == pytest.approx(direct.probability(editor.unedited.next_token_id))
    assert json.loads(editor.record_json)["edits"][1] == {"kind": "ablate_head", "layer": 1, "head": 2, "mode": "zero"}
    message, buffers = editor.answer({"what": "row", "layer": 0, "head": 0, "query": 5})  # the view shows the new run
    np.testing.assert_allclose(decode_rows_uint8(message, buffers)[0], direct.attention(0, 0)[5].numpy(), atol=1 / 255)
    editor.reset()
    assert editor.edit_specs == [] and editor.new_tokens == editor.unedited_tokens


def test_setting_edits_from_python_updates_the_ui_state(editor):
    editor.edits = [lw.ScaleAttention(0.0, keys=(2, 5), layers=[1, 2])]
    assert editor.edit_specs == [lw.ScaleAttention(0.0, keys=(2, 5), layers=[1, 2]).to_dict()]
    assert editor.runs == 2


def test_a_failed_regenerate_keeps_everything_and_says_why(editor, tiny_gpt2, monkeypatch):
    editor.edit_specs = [_scale(3.0, (1, 3))]
    before = (editor.edit_specs, editor.new_tokens, editor.tokens, editor.revision, editor.trace)
    editor.edit_specs = [_scale(3.0, (0, 999))]  # as the front end would send it: no exception, a message
    assert "outside the sequence" in editor.error and not editor.busy
    assert (editor.edit_specs, editor.new_tokens, editor.tokens, editor.revision, editor.trace) == before
    with pytest.raises(ValueError, match="layer 7 is out of range|layers"):
        editor.edits = [lw.ScaleAttention(2.0, keys=(0, 1), layers=[7])]
    assert editor.edit_specs == before[0]

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_gpt2, "trace", boom)
    editor.edit_specs = [_scale(5.0, (1, 3))]
    assert editor.error == "RuntimeError: out of memory" and editor.edit_specs == before[0]
    assert tiny_gpt2.model.config._attn_implementation == "sdpa" and not tiny_gpt2.model.training
    monkeypatch.undo()
    editor.edit_specs = [_scale(5.0, (1, 3))]
    assert editor.error == "" and editor.edits[0].factor == 5.0


def test_an_interrupt_during_regenerate_puts_the_edits_back(editor, tiny_gpt2, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_gpt2, "trace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        editor.edit_specs = [_scale(5.0, (1, 3))]
    assert editor.edit_specs == [] and not editor.busy and "interrupted" in editor.error


def test_busy_is_sent_while_the_model_runs(editor):
    seen = []
    editor.observe(lambda change: seen.append(change["new"]), names="busy")
    editor.edit_specs = [_scale(2.0, (1, 2))]
    assert seen == [True, False]


def test_two_editors_do_not_interfere(tiny_gpt2):
    a = lw.AttentionEditor(tiny_gpt2, PROMPT, max_new_tokens=6)
    b = lw.AttentionEditor(tiny_gpt2, "Call me Ishmael. Some years ago", max_new_tokens=6)
    b_tokens = list(b.new_tokens)
    a.edit_specs = [_scale(0.0, (1, 4))]
    assert b.new_tokens == b_tokens and b.edit_specs == [] and b.tokens[0] != a.tokens[4]
    assert a.new_tokens != a.unedited_tokens or a.p_after != a.p_before


def test_editor_refuses_bad_input(tiny_gpt2):
    with pytest.raises(TypeError, match="takes a LanguageModel"):
        lw.AttentionEditor(tiny_gpt2.model, PROMPT)
    with pytest.raises(ValueError, match="prompt is empty"):
        lw.AttentionEditor(tiny_gpt2, "")
    with pytest.raises(TypeError, match="ScaleAttention"):
        lw.AttentionEditor(tiny_gpt2, PROMPT, edits=["mask it"])


def test_trace_probability_of_any_token(tiny_gpt2):
    tr = tiny_gpt2.trace(PROMPT, max_new_tokens=3)
    first = tr.generated_ids[0]
    assert tr.probability(first) == pytest.approx(tr.chosen_probability(0), rel=1e-5)
    assert tr.probability(tr.tokens[-2], step=1) == pytest.approx(tr.chosen_probability(1), rel=1e-5)
    assert 0 < tr.probability(" the") < 1
    with pytest.raises(ValueError, match="tokens for this tokenizer"):
        tr.probability(" acknowledgedness and more")


def test_every_synced_trait_is_typed_and_explained():
    """What a widget sends its front end is documented where it is declared (as lonboard does)."""
    ours = {
        (c.__name__, name): trait
        for widget in [name for name in lw.__all__ if name in vars(lw.widgets)]
        for c in getattr(lw, widget).__mro__
        if c.__module__.startswith("llm_widgets")
        for name, trait in vars(c).items()
        if isinstance(trait, traitlets.TraitType) and trait.metadata.get("sync")
    }
    assert len(ours) > 60
    assert [key for key, trait in ours.items() if not trait.help] == []


# --- where no widget front end runs: the static fallback ---


def _fallback(widget) -> tuple[dict, str]:
    data, _ = widget._repr_mimebundle_()
    return data, data.get("text/html", "")


def test_every_view_carries_its_figure_and_text_as_a_static_fallback(tiny_gpt2):
    trace = tiny_gpt2.trace("<b>Call</b> me Ishmael", max_new_tokens=3)
    figures = [
        lw.AttentionView(trace, layer=1, head=2),
        lw.AttributionView(trace.attribute(trace.generated_ids[0])),
        lw.AttentionEditor(tiny_gpt2, "<b>Call</b> me", max_new_tokens=3),
        lw.LensView(trace),
        lw.ExplanationView(trace.explain_attention(1, 2, 4, 1)),
    ]
    for widget in figures:
        data, page = _fallback(widget)
        assert "application/vnd.jupyter.widget-view+json" in data  # the live widget still ranks first
        assert page.count('<img src="data:image/png;base64,') == 1, type(widget).__name__
        assert "<b>" not in page  # token text is data, never markup
        assert "object at 0x" not in data["text/plain"]
    for widget in figures[0], figures[2]:
        assert "&lt;b&gt;Call&lt;/b&gt;" in _fallback(widget)[1]  # the prompt, escaped
    assert "layer 1, head 2" in _fallback(figures[0])[0]["text/plain"]
    data, page = _fallback(lw.ModelCard(tiny_gpt2))
    assert "<img" not in page and "n_layers: 4" in page


def test_the_editor_fallback_says_both_outputs(tiny_gpt2):
    editor = lw.AttentionEditor(tiny_gpt2, "Call me", max_new_tokens=4, edits=[lw.ScaleAttention(5.0, keys=(0, 1))])
    text = _fallback(editor)[0]["text/plain"]
    assert (
        f"without edits: {editor.unedited.output_text!r}" in text and f"with edits:    {editor.output_text!r}" in text
    )


def test_the_monitor_fallback_is_its_charts_once_it_has_steps(tiny_gpt2):
    net = copy.deepcopy(tiny_gpt2.model).float().train().requires_grad_(True)
    monitor = lw.GradientMonitor(net, warn=False)
    view = lw.GradientMonitorView(monitor)
    data, page = _fallback(view)
    assert "<img" not in page and "step 0" in data["text/plain"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.enable_grad():
        loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
    monitor.step(loss=loss)
    data, page = _fallback(view)
    assert page.count("<img") == 1 and "step 1" in data["text/plain"]


def test_a_broken_fallback_warns_and_the_widget_still_shows(tiny_gpt2, monkeypatch):
    view = lw.AttentionView(tiny_gpt2.trace("Call me"))
    monkeypatch.setattr(type(view), "static_figure", lambda self: 1 / 0)
    with pytest.warns(UserWarning, match="no static fallback.*ZeroDivisionError"):
        data, _ = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and "text/html" not in data


def test_the_monitor_charts_follow_the_page_theme(tiny_gpt2):
    view = lw.GradientMonitorView(lw.GradientMonitor(copy.deepcopy(tiny_gpt2.model).float().requires_grad_(True)))
    loss = view._figures[0]
    assert loss.background_fill_color == "#ffffff" and loss.title.text_color == "#222222"
    view.controls.dark = True  # what the front end sends when the page under it is dark
    for fig in view._figures:
        assert fig.background_fill_color == "#212121" and fig.title.text_color == "#e0e0e0"
        assert all(axis.major_label_text_color == "#e0e0e0" for axis in fig.axis)
    assert view._loss_line.glyph.line_color == "#e0e0e0"  # the loss line was near-black
    view.controls.dark = False
    assert loss.background_fill_color == "#ffffff" and view._loss_line.glyph.line_color == "#333333"
    view.controls.dark = True  # the layout's boxes too: no white gaps between the charts
    assert {box.styles["background-color"] for box in (view.charts, *view.charts.children)} == {"#212121"}


def test_closed_views_are_freed_with_the_traces_they_hold(tiny_gpt2):
    """anywidget keeps a widget alive when its front end is a file Path (it watches the file):
    ours are text, so a view that is closed and dropped is collected, its trace with it."""
    import gc
    import weakref

    prompt = "It is a truth universally acknowledged"

    def views():
        tr = tiny_gpt2.trace(prompt, max_new_tokens=2)
        yield tr, lambda: lw.AttentionView(tr)
        yield tr, lambda: lw.AttributionView(tr.attribute())
        yield tr, lambda: lw.LensView(tr)
        yield tr, lambda: lw.ExplanationView(tr.explain_attention(1, 0, 5, depth=2))
        yield tr, lambda: lw.CompareView(lw.compare(tr, tiny_gpt2.trace(prompt, max_new_tokens=2)))
        yield tr, lambda: lw.PatchingView(lw.ablation_sweep(tr, progress=False))
        yield None, lambda: lw.AttentionEditor(tiny_gpt2, prompt, max_new_tokens=2)
        yield None, lambda: lw.ModelCard(tiny_gpt2)
        yield None, lambda: lw.ProfileView(lw.profile(tiny_gpt2, prompt, repeats=1))
        yield None, lambda: lw.DebuggerView(lw.debug(tiny_gpt2, prompt, max_new_tokens=2))
        yield None, lambda: lw.DivergenceView(lw.diverge(tiny_gpt2, tiny_gpt2, prompt, 2))
        yield None, lambda: lw.SampleTreeView(lw.sample_tree(tiny_gpt2, prompt, n=2, max_new_tokens=2, seed=0))
        yield None, lambda: lw.SteeringSearchView(lw.search_steering(tiny_gpt2, prompt, " the", budget=2))

    kept = []
    for trace, make in views():
        view = make()
        kept.append((type(view).__name__, weakref.ref(view), trace and weakref.ref(trace)))
        view.close()
        del view, trace, make
    monitor = lw.GradientMonitor(tiny_gpt2.model)
    view = lw.GradientMonitorView(monitor)
    kept.append(("GradientMonitorView", weakref.ref(view), None))
    view.close()
    monitor.detach()
    del view, monitor
    gc.collect()
    alive = [(name, ref() is not None, trace is not None and trace() is not None) for name, ref, trace in kept]
    assert [a for a in alive if a[1] or a[2]] == []
