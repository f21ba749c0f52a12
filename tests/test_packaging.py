"""The wheel carries the built front end and the bundled model; the sdist can rebuild them."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # no isolation: the build backend is installed in the test environment, and
    # the JS bundles are fresh, so this neither downloads nor reruns npm
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--sdist", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


@pytest.mark.slow
def test_wheel_holds_bundles_and_model(dist):
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for entry in (ROOT / "js").glob("*.ts"):
        assert f"llm_widgets/static/{entry.stem}.js" in names
    for required in ("model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md"):
        assert f"llm_widgets/models/tiny_gpt2/{required}" in names
    assert not any(n.startswith(("node_modules", "js/", "tests/", "scripts/")) for n in names)
    assert any(n.endswith("licenses/NOTICE") for n in names)


@pytest.mark.slow
def test_sdist_holds_front_end_sources(dist):
    (sdist,) = dist.glob("*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for required in (
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "js/build.mjs",
        "scripts/build_js.py",
        "js/model_card.ts",
        "js/lib/format.ts",
    ):
        assert required in names, required
    assert not any(n.startswith(("node_modules/", ".venv/")) for n in names)
