"""The widgets in marimo (`marimo run notebooks/marimo_tour.py`): anywidgets through
mo.ui.anywidget, their requests answered over the comm (marimo has no anywidget invoke), the
editor regenerating, and the gradient monitor's controls live with its recorded charts."""

from __future__ import annotations

import os
import sys

import pytest

from .conftest import ARTIFACTS, ROOT, _free_port, drag_over_keys, serve
from .test_tour import canvas_ink

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def marimo_app(smollm2, tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", MARIMO_SKIP_UPDATE_CHECK="1")
    cmd = [
        sys.executable,
        "-m",
        "marimo",
        "run",
        str(ROOT / "notebooks" / "marimo_tour.py"),
        "--headless",
        "--host",
        "127.0.0.1",
        f"--port={port}",
        "--no-token",
        "--no-skew-protection",
    ]
    with serve(
        cmd, env, tmp_path_factory.mktemp("marimo"), f"http://127.0.0.1:{port}", "/health", "marimo.log"
    ) as base:
        yield base


def test_marimo_renders_the_widgets_and_they_answer(marimo_app, page):
    page.goto(marimo_app)
    view = page.locator(".lw-attn-view")
    view.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=180_000)
    view.locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
    assert canvas_ink(view.locator("canvas.lw-attn-heatmap")) > 0.05
    assert canvas_ink(view.locator("canvas.lw-attn-grid")) > 0.05
    chip = view.locator(".lw-tok").nth(5)  # a click asks Python for every head's row of that query
    chip.click()
    page.wait_for_function(
        "el => el.style.backgroundColor !== ''", arg=view.locator(".lw-tok").nth(0).element_handle(), timeout=30_000
    )
    view.locator("canvas.lw-attn-lines[data-drawn]").wait_for(timeout=30_000)
    assert view.locator(".lw-attn-status").inner_text().startswith("layer 15, head 4")

    # the editor: select keys, slide, the model regenerates through the synced edits
    editor = page.locator(".lw-editor")
    editor.locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
    after = editor.locator(".lw-ed-after")
    original, runs = after.get_attribute("data-text"), int(after.get_attribute("data-runs"))
    drag_over_keys(page, editor, 7, 11)
    slider = editor.locator("input.lw-ed-factor")
    slider.focus()
    page.keyboard.press("End")
    page.wait_for_function(f"el => Number(el.dataset.runs) > {runs}", arg=after.element_handle(), timeout=120_000)
    assert after.get_attribute("data-text") != original and editor.locator(".lw-error").inner_text() == ""
    editor.locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)

    # the monitor: controls live (an anywidget), charts as recorded, and a note that says so
    monitor = page.locator(".lw-monitor")
    monitor.wait_for(timeout=120_000)
    assert "step 30" in monitor.locator(".lw-mon-status").inner_text()
    page.get_by_text("live charts need Jupyter").wait_for()
    frame = page.frame_locator("iframe").first
    frame.locator(".bk-Column, [class*='bk-']").first.wait_for(timeout=60_000)  # bokeh drew, from inline resources
    page.set_viewport_size({"width": 1280, "height": 1700})
    view.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "marimo.png"))
