"""Where the bundled front ends live (built by esbuild into llm_widgets/static/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget

from ..errors import LLMWidgetsError

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


class Answers:
    """Mixed into a widget whose front end asks for data (js/lib/widget_io.ts `Requests`, through
    anywidget's invoke): `answer(request)` returns (reply, buffers); a bad request gets an error
    reply naming what was wrong, and the widget stays as it was."""

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:  # pragma: no cover - every widget has its own
        raise NotImplementedError

    @anywidget.experimental.command
    def request(self, msg: Any, buffers: list[bytes]) -> tuple[dict, list[bytes]]:
        if not isinstance(msg, dict):
            return {"type": "error", "message": f"a request is a dict; got {type(msg).__name__}"}, []
        try:
            return self.answer(msg)
        except (LLMWidgetsError, ValueError, KeyError, TypeError, ImportError) as error:
            return {"type": "error", "message": str(error)}, []
