"""Where the bundled front ends live (built by esbuild into llm_widgets/static/)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str, suffix: str = ".js") -> Path:
    """The built file for widget `name`; a clear error if the JS was never built."""
    path = STATIC / f"{name}{suffix}"
    if not path.is_file():
        raise RuntimeError(
            f"The front end of llm-widgets is not built ({path} is missing). From a source checkout run "
            f"`make build` (or `npm ci && npm run build`), or reinstall with `pip install .`, which builds it."
        )
    return path
