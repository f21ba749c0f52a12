"""JupyterLab, Notebook 7 and marimo on 127.0.0.1, and Debian's chromium driven by playwright.

playwright cannot download its own browser here, so we launch the system one.
Notebooks are copied to a temporary folder first: JupyterLab autosaves, and the
committed notebooks must stay without outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# every cell in the DOM (no virtual scrolling), and no news pop-up over the page
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory, smollm2):  # smollm2: convert the weights before the kernel needs them
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    with jupyter_app(root, "jupyterlab") as server:
        yield server


@pytest.fixture(params=["jupyterlab", "notebook7"])
def front_end(request) -> dict:
    """The notebook's front end: JupyterLab, then Notebook 7 (the same test runs in each)."""
    return request.getfixturevalue("jupyter_server" if request.param == "jupyterlab" else "notebook7_server")


def shot(server: dict, name: str) -> Path:
    """Where a screenshot goes: test-artifacts/NAME.png in JupyterLab, notebook7_NAME.png in Notebook 7."""
    return ARTIFACTS / (f"{name}.png" if server["app"] == "jupyterlab" else f"notebook7_{name}.png")


@pytest.fixture(scope="session")
def notebook7_server(tmp_path_factory, smollm2):
    """Jupyter Notebook 7 (the `notebook` package): its own front end, the same kernels and widgets."""
    root = tmp_path_factory.mktemp("nb7")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    with jupyter_app(root, "notebook") as server:
        yield server


@contextlib.contextmanager
def jupyter_app(root: Path, app: str):
    """JupyterLab (app "jupyterlab") or Notebook 7 ("notebook") serving root/notebooks on a free
    port of 127.0.0.1, with a token; stopped on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    settings = root / "settings"
    for plugin, values in LAB_SETTINGS.items():
        (settings / plugin.split(":")[0]).mkdir(parents=True, exist_ok=True)
        (settings / plugin.split(":")[0] / f"{plugin.split(':')[1]}.jupyterlab-settings").write_text(json.dumps(values))
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / "ws"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        HF_HUB_OFFLINE="1",
    )
    cmd = [
        sys.executable,
        "-m",
        app,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root / 'notebooks'}",
    ]
    if app == "jupyterlab":
        cmd += ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with serve(cmd, env, root, f"http://127.0.0.1:{port}", f"/api/status?token={token}", f"{app}.log") as base:
        server = {"base": base, "token": token, "root": root / "notebooks", "app": app}
        SERVERS.append(server)
        try:
            yield server
        finally:
            SERVERS.remove(server)


@contextlib.contextmanager
def serve(cmd: list[str], env: dict, cwd: Path, base: str, probe: str, log_name: str):
    """Run a local server until `base + probe` answers; yields `base`; stopped on exit. Its output
    goes to test-artifacts/<log_name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.time() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(base + probe, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{cmd[2]} did not start; see {ARTIFACTS / log_name}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def chromium():
    """Debian's chromium through playwright (which cannot download its own browser here)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        raise RuntimeError("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser():
    try:
        with chromium() as browser:
            yield browser
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs  # a token that runs alert() shows up here, and the test fails
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # what the user would have seen
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()
    for server in SERVERS:  # no kernel left running into the next test (or the Python tests' timings)
        shut_down_kernels(server)


SERVERS: list[dict] = []  # the Jupyter servers running now (jupyter_app)


def shut_down_kernels(server: dict) -> None:
    """End every session the server has, and its kernel: an earlier test's notebook (SmolLM2 in
    memory, maybe still busy) must not slow the next one's clicks on two cores."""
    headers = {"Authorization": f"token {server['token']}"}
    with urllib.request.urlopen(urllib.request.Request(f"{server['base']}/api/sessions", headers=headers)) as reply:
        sessions = json.load(reply)
    for session in sessions:
        url = f"{server['base']}/api/sessions/{session['id']}"
        urllib.request.urlopen(urllib.request.Request(url, headers=headers, method="DELETE")).close()


def open_notebook(page, server: dict, name: str) -> None:
    shut_down_kernels(server)
    where = f"lab/tree/{name}?reset&" if server.get("app", "jupyterlab") == "jupyterlab" else f"notebooks/{name}?"
    page.goto(f"{server['base']}/{where}token={server['token']}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    accept_kernel_dialog(page)


def set_theme(page, name: str) -> None:
    """Settings > Theme > NAME, as a user switches (JupyterLab and Notebook 7 alike)."""
    page.get_by_role("menuitem", name="Settings", exact=True).click()
    page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Theme$"))).hover()
    page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{name}$"))).click()
    page.wait_for_function("name => document.body.dataset.jpThemeName === name", arg=name, timeout=30_000)
    page.wait_for_timeout(1500)  # the theme's stylesheet, then the widgets' check of their background


# Text contrast from computed styles (WCAG 2 relative luminance): every element under `root` with
# text of its own, visible and not disabled; its colour blended over the backgrounds beneath it.
CONTRAST_JS = """root => {
  const rgba = s => { const p = (s.match(/[\\d.]+/g) || []).map(Number);
                      return p.length < 3 ? [0, 0, 0, 0] : [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                     return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const over = (top, under) => [0, 1, 2].map(i => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const background = el => {
    const layers = [];
    for (let at = el; at; at = at.parentElement) {
      const c = rgba(getComputedStyle(at).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    return layers.reverse().reduce((under, c) => over(c, under), [255, 255, 255, 1]);
  };
  const out = [];
  let checked = 0;
  for (const el of root.querySelectorAll('*')) {
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    if (!el.getClientRects().length || el.closest(':disabled, [aria-disabled=true]')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const bg = background(el), fg = over(rgba(style.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    checked++;
    if (ratio < 4.5) out.push(`${ratio.toFixed(2)}:1 ${style.color} on rgb(${bg.slice(0, 3).map(Math.round)}) ` +
                              `<${el.tagName.toLowerCase()} class="${el.className}"> `
                              + el.textContent.trim().slice(0, 30));
  }
  return [checked, out];
}"""


def low_contrast(page, selector: str = ".lw-panel") -> list[str]:
    """Text under each widget panel below WCAG AA (4.5:1); fails if there was no text to check."""
    failures, checked = [], 0
    for panel in page.locator(selector).all():
        n, bad = panel.evaluate(CONTRAST_JS)
        checked += n
        failures += bad
    assert checked > 20, f"only {checked} text elements found under {selector}"
    return failures


CLIPPED_JS = """panel => {
  // elements past the panel's right edge that no scrolling box inside it (or the panel) lets a
  // reader scroll to: what is cut off and lost
  const right = panel.getBoundingClientRect().right + 1;
  const scrolls = el => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      const x = getComputedStyle(a).overflowX;
      if ((x === "auto" || x === "scroll") && a.scrollWidth > a.clientWidth) return true;
      if (a === panel) return false;
    }
    return false;
  };
  const output = panel.closest(".jp-OutputArea-output, .jp-RenderedHTMLCommon, body");
  const room = output ? output.getBoundingClientRect().right + 1 : Infinity;
  const cut = [...panel.querySelectorAll("*")].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > right && !scrolls(e);
  });
  const names = [...new Set(cut.map(e => e.tagName.toLowerCase() + "." + [...e.classList].join(".")))];
  return [cut.length, panel.getBoundingClientRect().right > room, names.slice(0, 6).join(", ")];
}"""


def clipped(page, selector: str = ".lw-panel", width: int = 800) -> list[str]:
    """At `width` px: each panel past its output area, or with content cut off at its right edge
    (content a reader can scroll to is fine)."""
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(500)  # the layout settles
    out = []
    for i, panel in enumerate(page.locator(selector).all()):
        if not panel.is_visible():
            continue
        cut, wider, which = panel.evaluate(CLIPPED_JS)
        name = panel.get_attribute("class")
        if cut:
            out.append(f"panel {i} ({name}): {cut} elements cut off at its right edge ({which})")
        if wider:
            out.append(f"panel {i} ({name}): wider than its output area")
    return out


def notebook_errors(page) -> list[str]:
    """The errors the notebook's cells wrote to stderr (tracebacks), as text."""
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error")
    return [errors.nth(i).inner_text() for i in range(errors.count())]


def accept_kernel_dialog(page) -> None:
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        dialog.locator("button.jp-mod-accept").click()


def run_all_cells(page) -> None:
    """Run > Run All Cells, again until the first cell has started: a click that
    lands while the kernel is still connecting runs nothing."""
    first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(6):
        page.locator(".jp-Notebook").click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        accept_kernel_dialog(page)
        for _ in range(20):
            if first_prompt.inner_text().strip() not in ("[ ]:", ""):
                return
            page.wait_for_timeout(500)
    raise AssertionError("Run All Cells did not start the notebook (kernel not connected?)")


def drag_over_keys(page, editor, first: int, last: int):
    """Press on token `first` of an editor's strip and release on `last`, passing those between;
    returns the strip's chips."""
    chips = editor.locator(".lw-tok")
    chips.nth(first).scroll_into_view_if_needed()
    chips.nth(first).hover()
    page.mouse.down()
    for i in range(first + 1, last + 1):
        chips.nth(i).hover()
    page.mouse.up()
    return chips
