"""The compressed-models notebook in JupyterLab: the divergence view draws the KL strip over the
generated tokens with the first split outlined, the residual stream's errors per layer and
position, and the blame as bars; a click on a cell answers with every site's error there."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, clipped, low_contrast, notebook_errors, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_compressed_notebook_divergence_view(jupyter_server, page):
    open_notebook(page, jupyter_server, "07_compressed.ipynb")
    run_all_cells(page)
    page.locator(".jp-OutputArea-output", has_text="layer 3: relative error").wait_for(timeout=600_000)
    assert notebook_errors(page) == []
    views = page.locator(".lw-mx")
    views.nth(1).wait_for(timeout=120_000)
    view = views.nth(0)  # int4 against float32
    assert "where SmolLM2 int4 parts from smollm2-135m" in view.locator(".lw-mx-title").inner_text()
    assert view.locator(".lw-mx-strip-token").count() == 8  # a KL per generated token
    split = view.locator(".lw-mx-split")
    assert split.count() == 1 and "(first split)" in (split.get_attribute("title") or "")
    assert view.locator("tr").count() == 31  # a header and 30 layers
    bars = view.locator(".lw-mx-bar-row")
    assert bars.count() == 10 and bars.first.locator(".lw-mx-bar").evaluate("e => e.style.width") == "100%"
    view.locator("tr").nth(12).locator(".lw-mx-cell").nth(5).click()
    detail = view.locator(".lw-mx-detail")
    page.wait_for_function("el => el.textContent.startsWith('layer 11, position 5')", arg=detail.element_handle())
    assert "alone, on a's inputs, causes" in detail.inner_text()
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(ARTIFACTS / "divergence_view.png"))
    assert low_contrast(page, ".lw-mx") == []
    cut = clipped(page)  # at 800 px wide every view fits its output, or scrolls
    assert cut == [], "\n".join(cut)
    assert not page.dialogs
