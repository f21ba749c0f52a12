"""The tour notebook as a user meets it: JupyterLab and Notebook 7, run all cells, look; then in
the dark theme."""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, clipped, drag_over_keys, low_contrast, open_notebook, run_all_cells, set_theme, shot

pytestmark = pytest.mark.browser


def canvas_ink(locator) -> float:
    """Share of a canvas's pixels that are drawn and not white."""
    return locator.evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) ink++;
        return ink / (d.length / 4);
    }""")


def test_tour_notebook_runs_and_shows_its_widgets(front_end, page):
    open_notebook(page, front_end, "01_tour.ipynb")
    run_all_cells(page)
    cards = page.locator(".lw-card")
    cards.nth(1).wait_for(timeout=240_000)  # the second card is in the last cell
    assert cards.count() == 2
    first, second = cards.nth(0).inner_text(), cards.nth(1).inner_text()
    assert "smollm2-135m" in first and "LlamaForCausalLM (llama)" in first
    assert "9 (3 key/value heads, grouped)" in first and "8,192 tokens" in first
    assert "GPT2LMHeadModel" in second
    assert page.locator(".jp-OutputArea-output", has_text="The capital of France is Paris").count() >= 1
    assert page.locator(".jp-OutputArea-output", has_text="steered: ").count() == 1
    assert (
        page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error").count()
        == 0
    )
    # the attention views: heatmaps drawn, a token click colours the strip, HTML in tokens stays text
    views = page.locator(".lw-attn-view")
    views.nth(2).wait_for(timeout=120_000)  # the last cell
    assert views.count() == 3
    for i in range(3):
        views.nth(i).locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
        views.nth(i).locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
        assert canvas_ink(views.nth(i).locator("canvas.lw-attn-heatmap")) > 0.05
        assert canvas_ink(views.nth(i).locator("canvas.lw-attn-grid")) > 0.05
        assert not views.nth(i).locator(".lw-attn-stackbar").is_visible()  # one kind of attention: no switch
    first = views.nth(0)
    chip = first.locator(".lw-tok").nth(5)
    chip.click()
    page.wait_for_function(
        "el => el.style.backgroundColor !== ''", arg=first.locator(".lw-tok").nth(0).element_handle()
    )
    assert "lw-tok-query" in chip.get_attribute("class")
    first.locator("canvas.lw-attn-lines[data-drawn]").wait_for(timeout=30_000)  # the head view's lines
    assert canvas_ink(first.locator("canvas.lw-attn-lines")) > 0.005
    xss = views.nth(2)
    assert xss.locator(".lw-attn-tokens").text_content().startswith("<img src=x onerror=alert(1)>")
    assert xss.locator("img").count() == 0 and page.dialogs == []
    first.scroll_into_view_if_needed()
    page.screenshot(path=shot(front_end, "attention_view"))

    # a batch: one row at a time, picked in the title; the new row's tokens and maps replace the old
    batch = views.nth(1)
    strip = batch.locator(".lw-attn-tokens")
    assert "France" in strip.text_content() and "Japan" not in strip.text_content()
    batch.locator(".lw-attn-row select").select_option("1")
    page.wait_for_function("el => el.textContent.includes('Japan')", arg=strip.element_handle(), timeout=30_000)
    batch.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    batch.locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
    assert canvas_ink(batch.locator("canvas.lw-attn-heatmap")) > 0.05
    page.set_viewport_size({"width": 1280, "height": 1700})  # the whole view, title included, in one picture
    batch.scroll_into_view_if_needed()
    batch.screenshot(path=shot(front_end, "attention_batch"))
    page.set_viewport_size({"width": 1280, "height": 1000})

    # export what is on screen: the files arrive through the browser's download
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<svg"), ("html", b"<!doctype html>")):
        with page.expect_download() as download:
            first.locator(f"button[data-format='{fmt}']").click()
        path = ARTIFACTS / download.value.suggested_filename
        download.value.save_as(path)
        assert path.name == f"attention-L15-H4.{fmt}" and path.read_bytes().startswith(magic)

    # zoom: drag a rectangle on the heatmap, the detail tile replaces the overview
    heatmap = first.locator("canvas.lw-attn-heatmap")
    box = heatmap.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=5)
    page.mouse.up()
    first.locator("button", has_text="reset zoom").wait_for(state="visible", timeout=30_000)
    page.wait_for_function(
        "el => el.textContent.includes('queries 0')", arg=first.locator(".lw-attn-status").element_handle()
    )
    first.locator("button", has_text="reset zoom").click()

    # the editor: no keys, no slider; select "the word 'dog'", slide to 10, the output regenerates
    editor = page.locator(".lw-editor")
    assert editor.count() == 1
    editor.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    assert "0" in editor.locator(".lw-ed-badge").inner_text()
    slider = editor.locator("input.lw-ed-factor")
    assert slider.is_disabled() and "select key tokens" in editor.locator(".lw-ed-hint").inner_text()
    after = editor.locator(".lw-ed-after")
    original, runs = after.get_attribute("data-text"), int(after.get_attribute("data-runs"))
    chips = drag_over_keys(page, editor, 7, 11)
    assert [("lw-tok-key" in (chips.nth(i).get_attribute("class") or "")) for i in range(6, 13)] == [
        False,
        True,
        True,
        True,
        True,
        True,
        False,
    ]
    assert editor.locator(".lw-ed-keys").inner_text().startswith("7–11")
    assert slider.is_enabled()
    slider.focus()
    page.keyboard.press("End")  # the slider's far right: factor 10
    assert editor.locator(".lw-ed-factor-value").inner_text() == "×10"
    page.wait_for_function(f"el => Number(el.dataset.runs) > {runs}", arg=after.element_handle(), timeout=120_000)
    assert after.get_attribute("data-text") != original
    assert editor.locator(".lw-ed-after .lw-changed").count() > 0
    assert "×10 on keys 7–11" in editor.locator(".lw-ed-edits li").first.inner_text()
    assert editor.locator(".lw-error").inner_text() == ""
    page.set_viewport_size({"width": 1280, "height": 1700})  # the whole editor in one picture
    editor.scroll_into_view_if_needed()
    editor.screenshot(path=shot(front_end, "attention_editor"))
    page.set_viewport_size({"width": 1280, "height": 1000})
    with page.expect_download() as download:
        editor.locator("button.lw-ed-record").click()
    record = json.loads(open(download.value.path()).read())
    assert record["edits"][0]["factor"] == 10.0 and record["edits"][0]["keys"] == [[7, 12]]

    cards.nth(0).scroll_into_view_if_needed()
    page.screenshot(path=shot(front_end, "tour"), full_page=False)
    cards.nth(0).screenshot(path=shot(front_end, "model_card"))

    # re-running a cell replaces its widget without leaving listeners behind
    page.evaluate("""() => {
        window.__lwListeners = 0;
        const add = window.addEventListener, remove = window.removeEventListener;
        window.addEventListener = function (type, ...rest) {
            if (type === 'mouseup') window.__lwListeners++; return add.call(this, type, ...rest); };
        window.removeEventListener = function (type, ...rest) {
            if (type === 'mouseup') window.__lwListeners--; return remove.call(this, type, ...rest); };
    }""")
    last = page.locator(".jp-CodeCell").last
    prompt = last.locator(".jp-InputPrompt")
    for _ in range(3):
        before = prompt.inner_text().strip()
        last.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        page.wait_for_function(
            "([el, before]) => { const t = el.textContent.trim(); return t !== before && t !== '[*]:'; }",
            arg=[prompt.element_handle(), before],
            timeout=60_000,
        )
        last.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    assert page.evaluate("window.__lwListeners") == 0  # each new view's listeners replace the old one's

    # the themes: every widget's text reads (WCAG AA, 4.5:1) in the light theme and in the dark one
    bad = low_contrast(page)
    assert bad == [], "\n".join(bad)
    set_theme(page, "JupyterLab Dark")
    try:
        panels = page.locator(".lw-panel:not(.lw-card)")
        page.wait_for_function(
            "n => document.querySelectorAll('.lw-panel.lw-dark').length === n", arg=panels.count(), timeout=10_000
        )  # each view saw the page turn dark
        bad = low_contrast(page)
        assert bad == [], "\n".join(bad)
        assert canvas_ink(first.locator("canvas.lw-attn-heatmap")) > 0.05
        page.set_viewport_size({"width": 1280, "height": 1700})  # each view whole, title included
        first.scroll_into_view_if_needed()
        first.screenshot(path=shot(front_end, "attention_view_dark"))
        editor.scroll_into_view_if_needed()
        editor.screenshot(path=shot(front_end, "attention_editor_dark"))
    finally:  # the theme is a saved setting of this server: the next test starts light
        page.set_viewport_size({"width": 1280, "height": 1000})
        set_theme(page, "JupyterLab Light")
    assert page.locator(".lw-panel.lw-dark").count() == 0
    cut = clipped(page)  # at 800 px wide every view fits its output, or scrolls
    assert cut == [], "\n".join(cut)
    page.set_viewport_size({"width": 1280, "height": 1000})
    _keyboard(page, first)


def _active(page) -> str:
    """The class of the focused element (inside the notebook's output, no shadow roots here)."""
    return page.evaluate("() => document.activeElement && String(document.activeElement.className)")


def _keyboard(page, view) -> None:
    """The attention view from the keyboard alone: Tab reaches its selects, heatmap and grid (each
    with a visible focus ring), the head select and the grid's arrows switch heads, the heatmap's
    arrows and Enter pick a query, and the cell under the keys is read out."""
    status = view.locator(".lw-attn-status")
    layer_box, head_box = view.locator(".lw-attn-header select").nth(0), view.locator(".lw-attn-header select").nth(1)
    layer_box.focus()
    page.keyboard.press("Tab")
    assert head_box.evaluate("el => el === document.activeElement")
    page.keyboard.type("H5")  # a closed select: typing picks the option that reads so
    page.wait_for_function("el => el.textContent.startsWith('layer 15, head 5')", arg=status.element_handle())
    for _ in range(60):  # on through the view's controls to the heatmap, by Tab alone
        page.keyboard.press("Tab")
        if "lw-attn-heatmap" in _active(page):
            break
    assert "lw-attn-heatmap" in _active(page)
    heatmap = view.locator("canvas.lw-attn-heatmap")
    assert heatmap.evaluate("el => getComputedStyle(el).outlineStyle") == "solid"  # the focus ring
    page.keyboard.press("ArrowDown")  # lands on the picked query's row (5), then one down
    page.keyboard.press("ArrowDown")
    spoken = view.locator(".lw-attn-map [role=status]")
    assert spoken.text_content().startswith("query 6 ")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "el => el.className.includes('lw-tok-query')", arg=view.locator(".lw-tok").nth(6).element_handle()
    )
    page.keyboard.press("Tab")
    assert "lw-attn-grid" in _active(page)
    page.keyboard.press("ArrowRight")
    page.wait_for_function("el => el.textContent.startsWith('layer 15, head 6')", arg=status.element_handle())
    page.keyboard.press("ArrowUp")
    page.wait_for_function("el => el.textContent.startsWith('layer 14, head 6')", arg=status.element_handle())
