"""`SampleTreeView(tree)`: the answers sampling gives, as the tree they make, inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..analysis import SampleTree
from ..errors import InputError, WrongTypeError
from ..export import sample_tree as export
from ._frontend import Answers, StaticFallback, bundle, linked
from .attention_view import AttentionView


class SampleTreeView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.SampleTreeView(lw.sample_tree(model, prompt, n=32))`: the tree left to right, each branch
    as tall as the answers through it, coloured by the entropy of the next token (or by
    decisiveness), outcomes at the leaves. Click a box for its numbers and top alternatives; force
    one and the new branch appears; open an answer's trace in `view=` (an AttentionView)."""

    _esm = bundle("sample_tree_view")
    _css = bundle("sample_tree_view", ".css")

    title = traitlets.Unicode(help="the view's title").tag(sync=True)
    segments = traitlets.List(traitlets.Dict(), help="the boxes: export.sample_tree.segments(tree)").tag(sync=True)
    colour_by = traitlets.Unicode("entropy", help="'entropy' or 'decisiveness': what colours the boxes").tag(sync=True)
    selected = traitlets.Int(-1, help="the clicked box's last node, -1 for none").tag(sync=True)
    detail = traitlets.List(traitlets.Unicode(), help="lines about the selected node").tag(sync=True)
    alternatives = traitlets.List(
        traitlets.Dict(), help="the selected node's top next tokens: {token_id, text, prob, taken}"
    ).tag(sync=True)
    answers = traitlets.List(traitlets.Int(), help="the answers through the selected node").tag(sync=True)
    error = traitlets.Unicode(help="why the last request failed ('' when it did not)").tag(sync=True)

    def __init__(self, tree: SampleTree, *, view: AttentionView | None = None, **kwargs: Any):
        if not isinstance(tree, SampleTree):
            raise WrongTypeError(f"SampleTreeView takes the result of lw.sample_tree, got {type(tree).__name__}")
        self.tree, self.view = tree, linked(view, AttentionView, "view")
        super().__init__(title=repr(tree), segments=export.segments(tree), **kwargs)
        self.observe(self._on_select, names="selected")
        tree.watch(self._redraw)  # a branch forced from code (or another view) appears here too

    def _redraw(self) -> None:
        self.title, self.segments = repr(self.tree), export.segments(self.tree)
        if self.selected >= 0:
            self._on_select(None)

    @traitlets.validate("colour_by")
    def _check_colour(self, proposal):
        if proposal.value not in export.COLOUR_BY:
            raise traitlets.TraitError(f"colour_by must be one of {export.COLOUR_BY}; got {proposal.value!r}")
        return proposal.value

    @traitlets.validate("selected")
    def _check_selected(self, proposal):
        if not -1 <= proposal.value < len(self.tree.nodes):
            raise traitlets.TraitError(f"selected must be a node id (0 to {len(self.tree.nodes) - 1}) or -1")
        return proposal.value

    def _on_select(self, change) -> None:
        if self.selected < 0:
            self.detail, self.alternatives, self.answers = [], [], []
            return
        node = self.tree.nodes[self.selected]
        taken = {self.tree.nodes[c].token_id for c in node.children}
        prefix = "".join(n.token for n in self.tree.path(node.samples[0])[1 : node.depth + 1])
        lines = [
            f"after {node.depth} tokens: {prefix!r}" if node.depth else "after the prompt",
            f"{node.count} sampled answers through it" + (f", {node.forced} forced" if node.forced else ""),
            f"p(last token | before) {node.prob:.3g} (sampling: {node.sample_prob:.3g})",
        ]
        if node.entropy is not None:
            lines.append(f"next-token entropy {node.entropy:.2f} bits")
        if node.decisiveness is not None:
            lines.append(f"decisiveness {node.decisiveness:.2f} bits: outcomes {node.outcomes}")
        elif node.outcomes:
            lines.append(f"outcomes {node.outcomes}")
        self.detail = lines
        self.alternatives = [
            {"token_id": t, "text": text, "prob": p, "taken": t in taken} for t, text, p in node.alternatives
        ]
        self.answers = list(node.samples)

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The front end's requests: "force" (node, token), "open" (answer) and "export" (format)."""
        what = request.get("what")
        if what == "force":
            index = self.tree.force(self.number(request, "node"), self.number(request, "token"))
            return {"type": "forced", "answer": index}, []  # (the tree's watch redraws this view)
        if what == "open":
            if self.view is None:
                raise InputError("no attention view to open it in: make the view with view=lw.AttentionView(...)")
            self.view.show_trace(self.tree.samples.trace(self.number(request, "answer")))
            return {"type": "opened"}, []
        if what == "export":
            fmt = str(request.get("format"))
            return {"type": "file", "name": f"sample_tree.{fmt}", "format": fmt}, [
                export.render(self.tree, fmt, self.colour_by)
            ]
        raise InputError(f"unknown request {what!r}: this view answers 'force', 'open' and 'export'")

    def static_figure(self) -> bytes:
        return export.render(self.tree, "png", self.colour_by)

    def static_text(self) -> str:
        return "\n".join([self.title, *(f"{i}: {t!r}" for i, t in enumerate(self.tree.texts[:8]))])

    def save(self, path: str | Path) -> Path:
        """.png / .svg (the tree) or standalone .html (with every answer and the data)."""
        return export.save(self.tree, path, self.colour_by)
