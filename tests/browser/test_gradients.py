"""The gradients notebook in JupyterLab and Notebook 7: charts that move while training runs,
sliders that steer, and charts that follow the page into the dark theme."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image, ImageStat

from .conftest import low_contrast, notebook_errors, open_notebook, run_all_cells, set_theme, shot

pytestmark = pytest.mark.browser


def test_gradients_notebook_monitor_updates_live_and_steers(front_end, page):
    open_notebook(page, front_end, "02_gradients.ipynb")
    run_all_cells(page)
    monitors = page.locator(".lw-monitor")
    monitors.first.wait_for(timeout=300_000)
    status = monitors.first.locator(".lw-mon-status")
    seen = set()
    deadline = time.time() + 300
    while time.time() < deadline:  # sample the plotted step count while the training cell runs
        plotted = int(status.get_attribute("data-steps-plotted") or 0)
        seen.add(plotted)
        if plotted >= 150:
            break
        page.wait_for_timeout(200)
    assert max(seen) == 150
    assert len({s for s in seen if 0 < s < 150}) >= 3, f"the chart did not grow step by step while training: {seen}"
    # bokeh drew the charts (jupyter_bokeh, no CDN)
    assert page.locator(".jupyter-widgets-error-widget").count() == 0
    assert page.locator(".widget-vbox .bk-Column, .widget-vbox [class*='bk-']").count() > 0
    assert "alerts" in monitors.first.locator(".lw-mon-alerts").inner_text()
    monitors.nth(1).wait_for(timeout=300_000)
    page.locator(".jp-OutputArea-output", has_text="figures/monitor.html").wait_for(timeout=300_000)
    assert notebook_errors(page) == []
    assert page.locator(".jp-OutputArea-output", has_text="Attribution(grad_x_input").count() == 1
    # the flight recorder's newest incident, replayed from its button: the step's own gradients again
    monitors.first.locator(".lw-mon-incidents button").first.click()
    replayed = monitors.first.locator(".lw-mon-replay")
    page.wait_for_function("el => el.textContent.startsWith('step ')", arg=replayed.element_handle(), timeout=60_000)
    assert "gradients equal the step's" in replayed.inner_text()
    # attribution: tokens coloured with a sign mark; a click in the head grid opens that head in the linked view
    attributions = page.locator(".lw-attrib")
    assert attributions.count() == 2
    assert attributions.first.locator(".lw-tok[data-sign]").count() > 0
    grid = attributions.nth(1).locator("canvas.lw-attn-grid[data-drawn]")
    grid.click(position={"x": 3, "y": 3})
    status = page.locator(".lw-attn-view .lw-attn-status")
    page.wait_for_function(
        "el => el.textContent.startsWith('layer 0, head 0')", arg=status.element_handle(), timeout=60_000
    )
    attributions.first.scroll_into_view_if_needed()
    attributions.first.screenshot(path=shot(front_end, "attribution_view"))
    # a steering slider, moved after the runs: the monitor applies the new scale
    steered = monitors.nth(1)
    steered.locator("summary").click()
    slider = steered.locator("input.lw-mon-scale[data-group='layer 1']")
    slider.evaluate(
        "el => { el.value = '0.5'; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }"
    )
    applied = steered.locator(".lw-mon-row", has=page.locator("[data-group='layer 1']")).locator(".lw-mon-applied")
    page.wait_for_function("el => el.dataset.scale === '0.5'", arg=applied.element_handle(), timeout=60_000)
    assert "applied: ×0.5" in applied.inner_text()
    monitors.first.scroll_into_view_if_needed()
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.screenshot(path=shot(front_end, "gradient_monitor"))

    # the dark theme: the widgets' text keeps 4.5:1 and the bokeh charts turn dark with the page
    box = page.locator(".widget-vbox", has=monitors.first).first
    assert _brightness(box) > 200
    set_theme(page, "JupyterLab Dark")
    try:
        monitors.first.and_(page.locator(".lw-dark")).wait_for(timeout=10_000)
        bad = low_contrast(page)
        assert bad == [], "\n".join(bad)
        deadline = time.time() + 30
        while _brightness(box) > 80 and time.time() < deadline:  # Python repaints the charts, bokeh syncs
            page.wait_for_timeout(300)
        assert _brightness(box) < 80
        monitors.first.scroll_into_view_if_needed()
        page.screenshot(path=shot(front_end, "gradient_monitor_dark"))
        bright = _bright_edges(page)
        assert bright == [], f"light lines at the charts' edges in the dark theme: {bright}"
    finally:
        set_theme(page, "JupyterLab Light")


def _brightness(locator) -> float:
    """Mean grey level (0-255) of what the user sees of an element."""
    return ImageStat.Stat(Image.open(io.BytesIO(locator.screenshot())).convert("L")).mean[0]


# Every bokeh figure's box on screen (bokeh draws inside shadow roots).
FIGURES_JS = """() => { const out = []; const walk = root => { for (const el of root.querySelectorAll('*')) {
    if (el.classList.contains('bk-Figure')) {
      const r = el.getBoundingClientRect(); out.push([r.x, r.y, r.width, r.height]); }
    if (el.shadowRoot) walk(el.shadowRoot); } }; walk(document); return out; }"""


def _bright_edges(page) -> list[str]:
    """The charts' top and left edge pixels that are light (the page and charts are dark)."""
    image = Image.open(io.BytesIO(page.screenshot())).convert("L")
    out = []
    for x, y, w, h in page.evaluate(FIGURES_JS):
        x, y = round(x), round(y)
        if w < 50 or x < 0 or y < 0 or y + h > image.height or x + w > image.width:
            continue  # scrolled out of view
        top = max(image.getpixel((x + i, y)) for i in range(10, int(w) - 40))
        left = max(image.getpixel((x, y + i)) for i in range(10, int(h) - 10))
        if max(top, left) > 100:
            out.append(f"figure at ({x}, {y}): top edge {top}, left edge {left}")
    return out
