"""The README's pictures: copied from the screenshots the browser tests take of the current code
(test-artifacts/), with a manifest of the front-end sources each was taken from, so a test can
tell when a view changed after its picture (tests/test_docs.py). `make pictures` runs the browser
tests first, then this."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
MANIFEST = IMAGES / "pictures.json"

# Each picture's view: the widget entry (js/<entry>.ts and .css) whose look it shows
PICTURE_VIEWS = {
    "attention_batch": "attention_view",
    "attention_view": "attention_view",
    "attention_view_dark": "attention_view",
    "cross_attention_view": "attention_view",
    "notebook7_attention_view": "attention_view",
    "marimo": "attention_view",
    "attention_editor": "attention_editor",
    "cross_attention_editor": "attention_editor",
    "attribution_view": "attribution_view",
    "debugger_view": "debugger_view",
    "divergence_view": "matrix_view",
    "explanation_view": "matrix_view",
    "lens_view": "matrix_view",
    "patching_view": "matrix_view",
    "gradient_monitor": "gradient_monitor",
    "gradient_monitor_dark": "gradient_monitor",
    "profile_view": "profile_view",
    "sample_tree_view": "sample_tree_view",
    "steering_editor": "attention_editor",
    "steering_search_view": "steering_search_view",
}


def pictures() -> list[str]:
    """The pictures the README shows, by name."""
    return sorted(set(re.findall(r"docs/images/([a-z_0-9]+)\.png", (ROOT / "README.md").read_text())))


def source_hash(view: str) -> str:
    """The view's look: its entry's TypeScript and CSS, and the shared CSS every panel imports."""
    digest = hashlib.sha256()
    for path in (ROOT / "js" / f"{view}.ts", ROOT / "js" / f"{view}.css", ROOT / "js" / "lib" / "panel.css"):
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    manifest = {}
    for name in pictures():
        shutil.copyfile(ROOT / "test-artifacts" / f"{name}.png", IMAGES / f"{name}.png")
        manifest[name] = {"view": PICTURE_VIEWS[name], "sources": source_hash(PICTURE_VIEWS[name])}
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest)} pictures copied from test-artifacts/ into docs/images/; look at them")


if __name__ == "__main__":
    main()
