"""hatch-jupyter-builder hook: `npm ci` (exact lockfile) then the esbuild bundle.

Used by `pip install .`, `pip install -e .` and `python -m build`; skipped when
the bundles are newer than every source file under js/ (see pyproject.toml).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _is_fresh() -> bool:
    """True when every bundle exists and is newer than every front-end source."""
    entries = [p for p in (ROOT / "js").iterdir() if p.suffix in (".ts", ".css")]
    outputs = [ROOT / "llm_widgets/static" / (p.stem + (".js" if p.suffix == ".ts" else ".css")) for p in entries]
    if not all(p.exists() for p in outputs):
        return False
    sources = [p for p in (ROOT / "js").rglob("*") if p.is_file()] + [ROOT / "package-lock.json"]
    return min(p.stat().st_mtime for p in outputs) > max(p.stat().st_mtime for p in sources)


def build(target_name: str, version: str) -> None:  # noqa: ARG001 (the hook's signature)
    if _is_fresh():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "Building llm-widgets needs Node.js and npm (for the widget front ends); install them first."
        )
    lock, installed = ROOT / "package-lock.json", ROOT / "node_modules/.package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True)
    subprocess.run([npm, "run", "build"], cwd=ROOT, check=True)
