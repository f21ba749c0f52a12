"""The debugger notebook in JupyterLab: the view shows where the run stopped (the breakpoint's
hit marked), back and step move the current call, the inspector shows the recomputed tensor,
the timeline exports, and the text reads in the light theme."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, clipped, low_contrast, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def _current(view) -> str:
    return view.locator(".lw-dbg-current td").first.inner_text().strip()


def _wait_current(page, call: str) -> None:
    """The current call's row, as drawn now (each move draws the list anew)."""
    page.wait_for_function(
        "call => document.querySelector('.lw-dbg .lw-dbg-current td')?.textContent.trim() === call",
        arg=call,
        timeout=60_000,
    )


def test_debugger_notebook_stops_steps_and_inspects(jupyter_server, page):
    open_notebook(page, jupyter_server, "06_debugger.ipynb")
    run_all_cells(page)
    view = page.locator(".lw-dbg")
    view.wait_for(timeout=300_000)
    status = view.locator(".lw-dbg-status")
    assert "stopped at call 37: transformer.h.2.mlp.c_fc" in status.inner_text()
    assert "aten.addmm" in status.inner_text()
    assert view.locator(".lw-dbg-stack .lw-dbg-frame").count() == 5
    hit = view.locator(".lw-dbg-calls tr", has=page.locator(".lw-dbg-hit", has_text="●"))
    assert hit.count() == 1 and _current(view) == "37"
    view.scroll_into_view_if_needed()
    view.locator("button[data-move='back']").click()
    _wait_current(page, "36")
    view.locator("button[data-move='step']").click()
    _wait_current(page, "37")
    strip = view.locator("canvas.lw-dbg-strip")  # the timeline from the keyboard: left, one call back
    strip.press("ArrowLeft")
    _wait_current(page, "36")
    strip.press("ArrowRight")
    _wait_current(page, "37")
    view.get_by_role("button", name="inspect").click()
    inspector = view.locator(".lw-dbg-inspector")
    page.wait_for_function(
        "el => el.textContent.includes('output: [1, 15, 1024] float32')",
        arg=inspector.element_handle(),
        timeout=120_000,
    )
    assert "NaN 15" in inspector.inner_text() and inspector.locator("canvas").count() == 2
    view.screenshot(path=str(ARTIFACTS / "debugger_view.png"))
    with page.expect_download(timeout=300_000) as download:
        view.locator("button[data-format='csv']").click()
    assert download.value.suggested_filename == "timeline.csv"
    assert low_contrast(page, ".lw-dbg") == []
    cut = clipped(page)  # at 800 px wide every view fits its output, or scrolls
    assert cut == [], "\n".join(cut)
    page.locator(".jp-OutputArea-output", has_text="transformer.h.0").last.wait_for(timeout=300_000)
    assert notebook_errors(page) == []
    assert not page.dialogs
