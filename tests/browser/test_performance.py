"""The performance notebook in JupyterLab: the profile's icicle renders, a click zooms into a
layer, the export buttons download the figure and the Chrome trace."""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_performance_notebook_profile_view(jupyter_server, page):
    open_notebook(page, jupyter_server, "04_performance.ipynb")
    run_all_cells(page)
    view = page.locator(".lw-prof")
    view.wait_for(timeout=300_000)
    boxes = view.locator(".lw-prof-box")
    assert boxes.count() > 30
    assert "prefill of" in view.locator(".lw-prof-findings").inner_text()
    assert view.locator(".lw-prof-chart polyline").count() == 1
    page.set_viewport_size({"width": 1280, "height": 1700})  # the whole view: no status bar across its table
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(ARTIFACTS / "profile_view.png"))
    page.set_viewport_size({"width": 1280, "height": 1000})
    view.locator(".lw-prof-box[data-module='model.layers.3']").press("Enter")  # (a keyboard user's click)
    crumbs = view.locator(".lw-prof-crumbs")
    page.wait_for_function(
        "el => el.textContent.includes('zoomed into model.layers.3')", arg=crumbs.element_handle(), timeout=60_000
    )
    assert view.locator(".lw-prof-box[data-module='model.layers.3.self_attn']").count() == 1
    assert view.locator(".lw-prof-box[data-module='model.layers.4']").count() == 0
    for fmt, name in (("png", "profile.png"), ("json", "profile.trace.json")):
        with page.expect_download(timeout=300_000) as download:  # the kernel may still run the later cells
            view.locator(f"button[data-format='{fmt}']").click()
        assert download.value.suggested_filename == name
        path = ARTIFACTS / name
        download.value.save_as(path)
        assert path.stat().st_size > 1000
    assert json.loads((ARTIFACTS / "profile.trace.json").read_text())["traceEvents"]
    page.locator(".jp-OutputArea-output", has_text="StepProfile(").wait_for(timeout=300_000)
    assert notebook_errors(page) == []
    assert not page.dialogs
