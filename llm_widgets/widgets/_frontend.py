"""What every widget shares with its front end: the bundled JS (built by esbuild into
llm_widgets/static/), requests answered by id (Answers), and a static fallback where no
front end runs (StaticFallback)."""

from __future__ import annotations

import base64
import html
import os
import warnings
from pathlib import Path
from typing import Any

import anywidget
import anywidget.experimental

from ..errors import InputError, LLMWidgetsError, WrongTypeError
from ..text import printable

STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str, suffix: str = ".js") -> str | Path:
    """The built file for widget `name`, as text (read once, when the widget class is defined); a
    clear error if the JS was never built. Text, not a Path: anywidget watches a Path's file for
    hot reload and keeps every widget given one alive, so a closed view and its trace would never
    be freed. LLM_WIDGETS_DEV=1 gives the Path, for hot reload while editing js/."""
    path = STATIC / f"{name}{suffix}"
    if not path.is_file():
        raise RuntimeError(
            f"The front end of llm-widgets is not built ({path} is missing). From a source checkout run "
            f"`make build` (or `npm ci && npm run build`), or reinstall with `pip install .`, which builds it."
        )
    return path if os.environ.get("LLM_WIDGETS_DEV") == "1" else path.read_text(encoding="utf-8")


def linked(widget: Any, kind: type, name: str) -> Any:
    """A view or editor a result view is linked to (None: none), checked: a wrong one would only fail
    later, at the first click."""
    if widget is not None and not isinstance(widget, kind):
        raise WrongTypeError(f"{name} must be an lw.{kind.__name__} (or None); got {type(widget).__name__}")
    return widget


class Answers:
    """Mixed into a widget whose front end asks for data (js/lib/widget_io.ts `Requests`, through
    anywidget's invoke): `answer(request)` returns (reply, buffers); a bad request gets an error
    reply naming what was wrong, and the widget stays as it was."""

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:  # pragma: no cover - every widget has its own
        raise NotImplementedError

    @staticmethod
    def number(request: dict, name: str, default: int | None = None) -> int:
        """The request's integer field `name` (or the default where it may be left out), or an
        error naming the field: a malformed request never reaches the trace as a raw KeyError."""
        value = request.get(name, default)
        if value is None:
            raise InputError(f"the {request.get('what')!r} request has no {name!r} field")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise InputError(f"the {request.get('what')!r} request's {name!r} must be an integer; got {value!r:.40}")
        return int(value)

    @anywidget.experimental.command
    def request(self, msg: Any, buffers: list[bytes]) -> tuple[dict, list[bytes]]:
        if not isinstance(msg, dict):
            return {"type": "error", "message": f"a request is a dict; got {type(msg).__name__}"}, []
        try:
            return self.answer(msg)
        except (LLMWidgetsError, ValueError, KeyError, TypeError, ImportError) as error:
            return {"type": "error", "message": str(error)}, []


class StaticFallback:
    """What an output shows where no widget front end runs: nbconvert's HTML, GitHub's notebook
    preview, Colab before its kernel connects. Such readers skip the widget's MIME type and take
    the next one, so each view adds text/html (its figure as a PNG and its text, as they are when
    displayed) and a text/plain summary. Where a widget manager runs, the live widget ranks first."""

    def static_text(self) -> str:
        """A few lines that say what the widget shows."""
        raise NotImplementedError

    def static_figure(self) -> bytes | None:
        """The figure as PNG bytes, or None where there is none yet."""
        return None

    def static_html(self) -> str:
        text = self.static_text()
        png = self.static_figure()
        parts = ['<div class="lw-static">']
        if png is not None:
            alt = html.escape(text.splitlines()[0] if text else type(self).__name__, quote=True)
            parts.append(
                f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{alt}" '
                f'style="max-width:100%">'
            )
        parts.append(f"<pre>{html.escape(printable(text))}</pre></div>")  # token text is data, never markup
        return "".join(parts)

    def _repr_mimebundle_(self, **kwargs: Any):
        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        try:
            data["text/html"] = self.static_html()
            data["text/plain"] = printable(self.static_text())  # no terminal escapes from names or tokens
        except Exception as error:  # the live widget must still show: no fallback is the lesser loss
            warnings.warn(
                f"{type(self).__name__}: no static fallback for this output "
                f"({type(error).__name__}: {error}); the live widget is not affected",
                stacklevel=2,
            )
        return data, metadata
