"""The tour as a reader without a kernel sees it: nbconvert's HTML (what GitHub's preview and
Colab before it connects also show). A notebook saved from JupyterLab holds no widget state, so
such readers skip each widget's MIME type and show its static fallback: the figure and the text."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def tour_html(tmp_path_factory, smollm2):
    nb = nbformat.read(ROOT / "notebooks" / "01_tour.ipynb", as_version=4)
    where = tmp_path_factory.mktemp("tour")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # store_widget_state=False: as JupyterLab saves by default; with state, nbconvert would embed
    # the widgets through a JavaScript manager fetched from a CDN
    NotebookClient(
        nb, timeout=600, kernel_name="python3", store_widget_state=False, resources={"metadata": {"path": str(where)}}
    ).execute()
    page, _ = HTMLExporter().from_notebook_node(nb)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "tour_static.html").write_text(page)
    return nb, page


def test_every_widget_of_the_tour_leaves_its_figure_and_text(tour_html):
    nb, page = tour_html
    widgets = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if WIDGET in out.get("data", {})
    ]
    ours = [out for out in widgets if "lw-static" in out["data"].get("text/html", "")]
    assert len(ours) == 6  # two model cards, three attention views, the editor
    # the rest are transformers' loading bars (tqdm's widget), which leave their text
    assert all(out["data"]["text/plain"].startswith("Loading weights") for out in widgets if out not in ours)
    fallbacks = re.findall(r'<div class="lw-static">(.*?)</div>', page, flags=re.S)
    assert len(fallbacks) == len(ours)
    images = [f for f in fallbacks if re.match(r'<img [^>]*src="data:image/png;base64,', f)]
    assert len(images) == 4  # each view and the editor: its heatmap as drawn when displayed
    assert sum("n_layers: 30" in f for f in fallbacks) == 1 and sum("n_layers: 4" in f for f in fallbacks) == 1
    assert any("without edits:" in f and "with edits:" in f for f in fallbacks)
    assert any("The capital of France is" in f and "Paris" in f for f in fallbacks)
    assert "Loading widget" not in page and WIDGET not in page


def test_token_text_stays_text_in_the_static_page(tour_html):
    _, page = tour_html
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img src=x" not in page


def test_the_fallbacks_ask_nothing_of_the_network(tour_html):
    """(nbconvert's own template loads require.js and MathJax from a CDN; what we add loads nothing.)"""
    _, page = tour_html
    for block in re.findall(r'<div class="lw-static">(.*?)</div>', page, flags=re.S):
        assert "<script" not in block and "<link" not in block
        assert not re.search(r'(?:src|href)="(?:https?:)?//', block)
