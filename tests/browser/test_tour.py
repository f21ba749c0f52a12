"""The tour notebook as a user meets it: JupyterLab, run all cells, look."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def canvas_ink(locator) -> float:
    """Share of a canvas's pixels that are drawn and not white."""
    return locator.evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) ink++;
        return ink / (d.length / 4);
    }""")


def test_tour_notebook_runs_and_shows_its_widgets(jupyter_server, page):
    open_notebook(page, jupyter_server, "01_tour.ipynb")
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
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Error").count() == 0
    # the attention views: heatmaps drawn, a token click colours the strip, HTML in tokens stays text
    views = page.locator(".lw-attn")
    views.nth(1).wait_for(timeout=120_000)  # the last cell
    assert views.count() == 2
    for i in range(2):
        views.nth(i).locator("canvas.lw-attn-heatmap[data-drawn]").wait_for(timeout=60_000)
        views.nth(i).locator("canvas.lw-attn-grid[data-drawn]").wait_for(timeout=60_000)
        assert canvas_ink(views.nth(i).locator("canvas.lw-attn-heatmap")) > 0.05
        assert canvas_ink(views.nth(i).locator("canvas.lw-attn-grid")) > 0.05
    first = views.nth(0)
    chip = first.locator(".lw-tok").nth(5)
    chip.click()
    page.wait_for_function("el => el.style.backgroundColor !== ''", arg=first.locator(".lw-tok").nth(0).element_handle())
    assert "lw-tok-query" in chip.get_attribute("class")
    xss = views.nth(1)
    assert xss.locator(".lw-attn-tokens").text_content().startswith("<img src=x onerror=alert(1)>")
    assert xss.locator("img").count() == 0 and page.dialogs == []
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "attention_view.png"))
    cards.nth(0).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "tour.png"), full_page=False)
    cards.nth(0).screenshot(path=str(ARTIFACTS / "model_card.png"))
