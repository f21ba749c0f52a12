"""The tour notebook as a user meets it: JupyterLab, run all cells, look."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, open_notebook, run_all_cells

pytestmark = pytest.mark.browser


def test_tour_notebook_runs_and_shows_model_cards(jupyter_server, page):
    open_notebook(page, jupyter_server, "01_tour.ipynb")
    run_all_cells(page)
    cards = page.locator(".lw-card")
    cards.nth(1).wait_for(timeout=240_000)  # the second card is in the last cell
    assert cards.count() == 2
    first, second = cards.nth(0).inner_text(), cards.nth(1).inner_text()
    assert "smollm2-135m" in first and "LlamaForCausalLM (llama)" in first
    assert "9 (3 key/value heads, grouped)" in first and "8,192 tokens" in first
    assert "GPT2LMHeadModel" in second
    assert page.locator(".jp-OutputArea-output", has_text="The capital of France is Paris").count() == 1
    assert page.locator(".jp-OutputArea-output", has_text="steered: ").count() == 1
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Error").count() == 0
    cards.nth(0).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "tour.png"), full_page=False)
    cards.nth(0).screenshot(path=str(ARTIFACTS / "model_card.png"))
