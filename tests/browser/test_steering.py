"""The steering notebook in JupyterLab: the editor's directions panel regenerates when its slider
is released and draws the projection strip; the search view installs a point in its editor, by
mouse and from the keyboard."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, clipped, low_contrast, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_steering_notebook_direction_slider_and_search_view(jupyter_server, page):
    open_notebook(page, jupyter_server, "09_steering.ipynb")
    run_all_cells(page)
    page.locator(".lw-ss").wait_for(timeout=600_000)
    editors = page.locator(".lw-editor")
    editors.nth(1).wait_for(timeout=300_000)
    assert notebook_errors(page) == []
    editor = editors.first
    panel = editor.locator(".lw-ed-dirs")
    assert panel.is_visible() and "positive - negative" in panel.locator("select.lw-ed-dir").inner_text()
    assert panel.locator(".lw-ed-strip-row").count() == 2 and panel.locator(".lw-ed-strip-row .lw-tok").count() > 10
    after = editor.locator(".lw-ed-after")
    original, runs = after.get_attribute("data-text"), int(after.get_attribute("data-runs"))
    editor.scroll_into_view_if_needed()
    slider = panel.locator("input.lw-ed-strength")
    slider.focus()  # from the keyboard: End puts it at its top, the release regenerates
    slider.press("End")
    page.wait_for_function(f"el => Number(el.dataset.runs) > {runs}", arg=after.element_handle(), timeout=120_000)
    assert after.get_attribute("data-text") != original
    assert "after block 6" in editor.locator(".lw-ed-edits").inner_text()
    rows = panel.locator(".lw-ed-strip-row")
    before_values = [
        float(v) for v in rows.nth(0).locator(".lw-tok").evaluate_all("els => els.map(e => e.dataset.value)")
    ]
    after_values = [
        float(v) for v in rows.nth(1).locator(".lw-tok").evaluate_all("els => els.map(e => e.dataset.value)")
    ]
    assert after_values[0] > before_values[0] + 1  # the prompt's first token moved along the direction
    editor.screenshot(path=str(ARTIFACTS / "steering_editor.png"))

    view = page.locator(".lw-ss")
    chosen = editors.nth(1)
    chosen_after = chosen.locator(".lw-ed-after")
    runs = int(chosen_after.get_attribute("data-runs"))
    view.scroll_into_view_if_needed()
    view.locator(".lw-ss-list button").last.click()  # the front's most successful edit
    page.wait_for_function(
        f"el => Number(el.dataset.runs) > {runs} && el.dataset.text.startsWith(' blue')",
        arg=chosen_after.element_handle(),
        timeout=120_000,
    )
    status = view.locator(".lw-ss-status")
    page.wait_for_function("el => el.textContent.startsWith('installed')", arg=status.element_handle())
    runs = int(chosen_after.get_attribute("data-runs"))
    point = view.locator("circle.lw-ss-on-front").first  # the cheapest point of the front, from the keyboard
    point.focus()
    point.press("Enter")
    page.wait_for_function(
        f"el => Number(el.dataset.runs) > {runs}", arg=chosen_after.element_handle(), timeout=120_000
    )
    view.screenshot(path=str(ARTIFACTS / "steering_search_view.png"))
    assert low_contrast(page, ".lw-ss") == [] and low_contrast(page, ".lw-editor") == []
    cut = clipped(page)
    assert cut == [], "\n".join(cut)
    assert not page.dialogs
