"""`SteeringSearchView(search, editor=...)`: what a steering search tried, success against fluency
cost; a chosen point goes into a linked editor as its edits (sliders and list), which regenerates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..analysis import SteeringSearch
from ..errors import InputError, WrongTypeError
from ..export import steering as export
from ._frontend import Answers, StaticFallback, bundle, linked
from .attention_editor import AttentionEditor


class SteeringSearchView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.SteeringSearchView(lw.search_steering(...), editor=lw.AttentionEditor(model, prompt))`:
    every edit tried as a point (success up, fluency cost right), the Pareto front joined and listed;
    click (or Enter on) a point or a row to install its edits in the editor."""

    _esm = bundle("steering_search_view")
    _css = bundle("steering_search_view", ".css")

    title = traitlets.Unicode(help="what was searched, and how long it took").tag(sync=True)
    points = traitlets.List(
        traitlets.Dict(), help="each candidate: {label, kind, success, cost, front} (export.steering.points)"
    ).tag(sync=True)
    plain = traitlets.Float(help="the success without an edit").tag(sync=True)
    installed = traitlets.Int(-1, help="the candidate last installed in the editor (-1: none)").tag(sync=True)
    status = traitlets.Unicode(help="what the last install did, or why it failed").tag(sync=True)

    def __init__(self, search: SteeringSearch, *, editor: AttentionEditor | None = None, **kwargs: Any):
        if not isinstance(search, SteeringSearch):
            raise WrongTypeError(
                f"SteeringSearchView takes the result of lw.search_steering, got {type(search).__name__}"
            )
        self.search, self.editor = search, linked(editor, AttentionEditor, "editor")
        if editor is not None and editor.lm is not search.model:
            raise InputError(
                f"the editor runs {editor.lm.name}, the search {search.model.name}: link an editor of the same model"
            )
        super().__init__(title=export.title(search), points=export.points(search), plain=search.plain.success, **kwargs)

    def install(self, index: int) -> None:
        """Put candidate `index`'s edits into the linked editor (which regenerates)."""
        if self.editor is None:
            raise InputError("no editor to install it in: make the view with editor=lw.AttentionEditor(model, prompt)")
        if not 0 <= index < len(self.search.candidates):
            raise InputError(f"candidate {index} is out of range: 0 to {len(self.search.candidates) - 1}")
        candidate = self.search.candidates[index]
        self.editor.edits = list(candidate.edits)
        self.installed, self.status = index, f"installed: {candidate.label}"

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: "install" (index) and "export" (format)."""
        what = request.get("what")
        if what == "install":
            try:
                self.install(self.number(request, "index"))
            except Exception as error:  # said in the view too; the editor keeps its edits
                self.status = f"not installed: {error}"
                raise
            return {"type": "installed"}, []
        if what == "export":
            fmt = str(request.get("format"))
            return {"type": "file", "name": f"steering_search.{fmt}", "format": fmt}, [export.render(self.search, fmt)]
        raise InputError(f"unknown request {what!r}: this view answers 'install' and 'export'")

    def static_figure(self) -> bytes:
        return export.render(self.search, "png")

    def static_text(self) -> str:
        return "\n".join([self.title, *(repr(c) for c in self.search.front)])

    def save(self, path: str | Path) -> Path:
        """.png / .svg (the plot) or standalone .html (with the front and the data)."""
        return export.save(self.search, path)
