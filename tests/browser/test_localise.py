"""The localisation notebook in JupyterLab: the lens and patching views render as tables of
cells, a click on a head of the patching view opens it in the attention view, a click on a
head of the sweep ablates it in the editor."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, clipped, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_localise_notebook_lens_patching_and_sweep(jupyter_server, page):
    open_notebook(page, jupyter_server, "03_localise.ipynb")
    run_all_cells(page)
    matrices = page.locator(".lw-mx")
    page.locator(".jp-OutputArea-output", has_text="Comparison(").wait_for(timeout=600_000)
    page.locator(".jp-OutputArea-output", has_text="AttentionExplanation(").first.wait_for(timeout=600_000)
    matrices.nth(5).wait_for(timeout=120_000)  # the last view may draw after its cell's text
    assert matrices.count() == 6  # lens, residual patching, head patching, sweep, comparison, explanation
    assert notebook_errors(page) == []
    # the lens: 30 layers of words, the last prompt position's last layer says " Mary"
    lens = matrices.nth(0)
    assert lens.locator("tr").count() == 31
    assert lens.locator(".lw-mx-cell").count() == 30 * 18  # 14 prompt + 4 generated tokens
    assert "Mary" in lens.locator("tr").last.locator(".lw-mx-cell").nth(13).inner_text()
    lens.locator("tr").nth(25).locator(".lw-mx-cell").nth(13).press("Enter")  # a cell from the keyboard
    detail = lens.locator(".lw-mx-detail")
    page.wait_for_function("el => el.textContent.startsWith('layer 24')", arg=detail.element_handle(), timeout=60_000)
    assert lens.locator(".lw-legend-swatch").count() == 5  # the colour legend, with its values
    lens.scroll_into_view_if_needed()
    lens.screenshot(path=str(ARTIFACTS / "lens_view.png"))
    # head patching: a click on layer 20, head 0 opens it in the attention view
    heads = matrices.nth(2)
    assert heads.locator(".lw-mx-col").first.inner_text() == "head 0"
    heads.locator("tr").nth(21).locator(".lw-mx-cell").nth(0).click()
    status = page.locator(".lw-attn-view .lw-attn-status").first
    page.wait_for_function(
        "el => el.textContent.startsWith('layer 20, head 0')", arg=status.element_handle(), timeout=60_000
    )
    matrices.nth(1).scroll_into_view_if_needed()
    matrices.nth(1).screenshot(path=str(ARTIFACTS / "patching_view.png"))
    # the sweep: a click on a head ablates it in the editor (whose edit list shows it)
    sweep = matrices.nth(3)
    sweep.locator("tr").nth(2).locator(".lw-mx-cell").nth(5).click()
    page.wait_for_function(
        "el => el.textContent.includes('ablated layer 1 head 5')",
        arg=sweep.locator(".lw-mx-detail").element_handle(),
        timeout=120_000,
    )
    _explanation_follows_a_click_and_ablates(page, matrices.nth(5))
    cut = clipped(page)  # at 800 px wide every view fits its output, or scrolls
    assert cut == [], "\n".join(cut)
    assert not page.dialogs


def _explanation_follows_a_click_and_ablates(page, explanation) -> None:
    """The induction head's explanation: a click on another heatmap cell of its editor explains
    that cell; a click on head 16.0's total ablates it in the editor, which regenerates."""
    title = explanation.locator(".lw-mx-title")
    page.wait_for_function(
        "el => el.textContent.includes('attends to key 27')", arg=title.element_handle(), timeout=120_000
    )
    editor = page.locator(".lw-editor").last  # the induction editor
    canvas = editor.locator("canvas.lw-attn-heatmap")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    n = 65  # 61 tokens and 4 generated: one cell per position
    canvas.click(position={"x": (26 + 0.5) * box["width"] / n, "y": (56 + 0.5) * box["height"] / n})
    page.wait_for_function(
        "el => el.textContent.includes('attends to key 26')", arg=title.element_handle(), timeout=120_000
    )
    headers = explanation.locator("th.lw-mx-col").all_inner_texts()
    column = next(i for i, text in enumerate(headers) if text.startswith("head 16.0"))
    totals = explanation.locator("tr").last.locator(".lw-mx-cell")
    totals.nth(column).click()
    page.wait_for_function(
        "el => el.textContent.includes('ablated head 16.0 at position 26 in the editor')",
        arg=explanation.locator(".lw-mx-detail").element_handle(),
        timeout=120_000,
    )
    explanation.scroll_into_view_if_needed()
    explanation.screenshot(path=str(ARTIFACTS / "explanation_view.png"))
