"""The sampling notebook in JupyterLab: the sample tree renders a box per branch, a click on the
root shows its alternatives, forcing one draws a new (dashed) branch, and an answer opens in the
attention view."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, clipped, low_contrast, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_sampling_notebook_tree_click_force_and_open(jupyter_server, page):
    open_notebook(page, jupyter_server, "08_sampling.ipynb")
    run_all_cells(page)
    page.locator(".jp-OutputArea-output", has_text="identical_logits").wait_for(timeout=600_000)
    assert notebook_errors(page) == []
    view = page.locator(".lw-st").first
    boxes = view.locator(".lw-st-box")
    before = boxes.count()
    assert before > 10 and "24 samples" in view.locator(".lw-st-title").inner_text()
    assert view.locator(".lw-st-forced").count() == 1  # the notebook forced one from code
    view.scroll_into_view_if_needed()
    boxes.first.focus()  # the prompt's box, from the keyboard: the first split is after it
    boxes.first.press("Enter")
    # (the detail box is drawn anew on each change: wait for one with the text, not for one element)
    view.locator(".lw-st-detail", has_text="after the prompt").wait_for(timeout=60_000)
    alternatives = view.locator(".lw-st-alternatives button")
    assert alternatives.count() == 5
    free = view.locator(".lw-st-alternatives button:not(.lw-st-taken)").first
    free.click()
    page.wait_for_function(
        "n => document.querySelectorAll('.lw-st .lw-st-box').length > n", arg=before, timeout=120_000
    )
    assert view.locator(".lw-st-forced").count() == 2
    assert "forced: answer 25" in view.locator(".lw-st-status").inner_text()
    view.locator(".lw-st-answers button").nth(1).click()
    page.wait_for_function(
        "el => el.textContent.includes('opened')", arg=view.locator(".lw-st-status").element_handle()
    )
    view.screenshot(path=str(ARTIFACTS / "sample_tree_view.png"))
    assert low_contrast(page, ".lw-st") == []
    cut = clipped(page)  # at 800 px wide every view fits its output, or scrolls
    assert cut == [], "\n".join(cut)
    assert not page.dialogs
