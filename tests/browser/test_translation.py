"""The translation notebook in JupyterLab: an encoder-decoder's cross-attention drawn (heatmap of
output x source, lines between the two token strips), the switch to its encoder and decoder
self-attention, and a cross-attention edit in the editor that changes the translation on screen."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, drag_over_keys, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_translation_notebook_cross_attention_view_and_edit(jupyter_server, page):
    open_notebook(page, jupyter_server, "05_beyond_decoders.ipynb")
    run_all_cells(page)
    view = page.locator(".lw-attn-view").first
    view.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=240_000)
    assert notebook_errors(page) == []
    # cross-attention first: the output tokens are the queries, the source tokens the keys
    bar = view.locator(".lw-attn-stackbar")
    assert bar.locator("button").count() == 3
    assert bar.locator("button[aria-checked='true']").inner_text().startswith("cross")
    status = view.locator(".lw-attn-status")
    assert "queries ×" in status.inner_text() and "keys" in status.inner_text()
    view.locator("canvas.lw-attn-xlines[data-drawn]").wait_for(timeout=60_000)
    assert view.locator(".lw-tok-output-start").count() == 1  # where the output starts in the strip
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(ARTIFACTS / "cross_attention_view.png"))
    # a source token is no query of cross-attention; an output token is, and its row lights the source
    view.locator(".lw-tok").first.click()
    page.wait_for_function(
        "el => el.textContent.includes('is not a query of this attention')", arg=status.element_handle(), timeout=30_000
    )
    n_source = view.locator(".lw-tok-output-start").evaluate("el => Number(el.dataset.index)")
    view.locator(".lw-tok").nth(n_source + 1).click()
    view.locator("canvas.lw-attn-lines[data-drawn]").wait_for(timeout=60_000)  # the head view's lines
    colours = view.locator(".lw-tok").evaluate_all("els => els.map(e => e.style.backgroundColor)")
    # weight only on the source: every output chip has weight 0's colour, the source chips do not all
    assert len(set(colours[n_source:])) == 1 and any(c != colours[n_source] for c in colours[:n_source])
    # the switch: encoder self-attention is source x source, with its own grid; then back
    bar.locator("button", has_text="encoder").click()
    page.wait_for_function(
        "el => el.querySelector('[aria-checked=\"true\"]').textContent.startsWith('encoder')",
        arg=bar.element_handle(),
        timeout=30_000,
    )
    view.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    view.locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
    assert view.locator("canvas.lw-attn-xlines").count() == 0
    page.wait_for_function(
        f"el => el.textContent.includes('{n_source} tokens')",
        arg=view.locator(".lw-attn-status").element_handle(),
        timeout=30_000,
    )
    view.screenshot(path=str(ARTIFACTS / "encoder_attention_view.png"))
    bar.locator("button", has_text="cross").click()
    view.locator("canvas.lw-attn-xlines[data-drawn]").wait_for(timeout=60_000)

    # the editor on cross-attention: pick source words, slide to 10, the translation regenerates
    editor = page.locator(".lw-editor")
    assert editor.count() == 1
    editor.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    after = editor.locator(".lw-ed-after")
    original, runs = after.get_attribute("data-text"), int(after.get_attribute("data-runs"))
    source = editor.locator(".lw-tok-output-start").evaluate("el => Number(el.dataset.index)")
    drag_over_keys(page, editor, source - 2, source - 2)  # the last source word before the end mark
    slider = editor.locator("input.lw-ed-factor")
    slider.focus()
    page.keyboard.press("End")
    page.wait_for_function(f"el => Number(el.dataset.runs) > {runs}", arg=after.element_handle(), timeout=120_000)
    assert editor.locator(".lw-error").inner_text() == ""
    assert "of cross attention" in editor.locator(".lw-ed-edits li").first.inner_text()
    assert after.get_attribute("data-text") != original
    assert editor.locator(".lw-ed-after .lw-changed").count() > 0
    page.set_viewport_size({"width": 1280, "height": 1700})
    editor.scroll_into_view_if_needed()
    editor.screenshot(path=str(ARTIFACTS / "cross_attention_editor.png"))
    assert not page.dialogs
