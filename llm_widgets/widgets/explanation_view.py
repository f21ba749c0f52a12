"""`ExplanationView`: why a head attends where it does, as a table of the terms of its score.

Rows are the largest query-side components, columns the largest key-side ones (the rest summed
in "other"), each cell the term of that pair; the last column and row are each component's part
of the score on its side. Linked to an AttentionView, a click on a heatmap cell explains that
cell (a pooled cell: its whole row); linked to an editor, a click on a head's total ablates that
head's output where it acts (at the key, or the query) there and regenerates, old and new side
by side.
"""

from __future__ import annotations

from typing import Any

import torch
import traitlets

from ..analysis import AttentionExplanation
from ..analysis.explain import head_of
from ..errors import WrongTypeError
from ..trace import AblateHead, AblateMLP
from ._frontend import linked
from .attention_editor import AttentionEditor
from .attention_view import AttentionView
from .matrix_views import MatrixWidget

SHOWN = 8  # components per side in the table
OTHER = "other"
TOTAL = "total"


class ExplanationView(MatrixWidget):
    """`lw.ExplanationView(trace.explain_attention(...))`, or `lw.ExplanationView(view)` to explain
    whatever cell is clicked in the AttentionView (or editor) `view`. With `editor=` (by default
    the view, when it is an editor) a click on a head's total ablates that head in the editor."""

    depth = traitlets.Int(1, help="1: components; 2: the largest head components split by source token too").tag(
        sync=True
    )

    def __init__(
        self,
        source: AttentionExplanation | AttentionView,
        *,
        editor: AttentionEditor | None = None,
        depth: int = 1,
        **kwargs: Any,
    ):
        if not isinstance(source, (AttentionExplanation, AttentionView)):
            raise WrongTypeError(
                f"ExplanationView takes trace.explain_attention(...)'s result or an lw.AttentionView to follow; got "
                f"{type(source).__name__}"
            )
        self.view = source if isinstance(source, AttentionView) else None
        if editor is None and isinstance(self.view, AttentionEditor):
            editor = self.view
        self.editor = linked(editor, AttentionEditor, "editor")
        self.explanation = source if isinstance(source, AttentionExplanation) else None
        self._rows: list[str] = []
        self._columns: list[str] = []
        super().__init__(kind="explanation", scale="diverging", value_name="term", depth=depth, **kwargs)
        self._following = self.view is not None
        if self.view is not None:
            self.view.observe(self._follow, names=["cell", "revision"])
            self._follow()
        else:
            self._show(self.explanation)

    def close(self) -> None:
        if self.view is not None and self._following:  # (close runs again when the widget is collected)
            self.view.unobserve(self._follow, names=["cell", "revision"])
            self._following = False
        super().close()

    def _follow(self, change: Any = None) -> None:
        """Explain the view's clicked cell (again, when its trace changed)."""
        view = self.view
        assert view is not None
        if len(view.cell) != 2:
            self.title = f"why head {view.layer}.{view.head} attends where it does"
            self.summary = ["click a cell of the attention heatmap to explain its score"]
            return
        query, key = view.cell
        try:
            explanation = view.trace.explain_attention(
                view.layer, view.head, query, None if key < 0 else key, depth=self.depth, stack=view.stack
            )
        except Exception as error:  # shown in the widget; the previous explanation stays
            self.error = f"{type(error).__name__}: {error}"
            return
        self._show(explanation)

    def _show(self, explanation: AttentionExplanation | None) -> None:
        if explanation is None:
            return
        self.explanation = explanation
        table, self._rows, self._columns = _table(explanation)
        inner = table[:-1, :-1].abs()
        with self.hold_sync():
            self.values = table.tolist()
            self.words = [[f"{v:+.2f}" for v in row] for row in table.tolist()]
            self.row_labels, self.column_labels = list(self._rows), list(self._columns)
            self.vmax = float(inner.max()) or 1.0
            self.title = _title(explanation)
            self.summary = _summary(explanation, self.editor is not None)
            self.selected, self.detail, self.error = [], [], ""
            self._strip(explanation)

    def _strip(self, explanation: AttentionExplanation) -> None:
        """For a whole row: each key's score above the table, the explained key marked."""
        if len(explanation.keys) == 1:
            self.strip_values, self.strip_labels, self.strip_mark = [], [], -1
            return
        tokens = explanation.trace.tokens
        self.strip_values = explanation.scores.tolist()
        self.strip_labels = [f"{j}:{tokens[j]}" for j in explanation.keys]
        self.strip_name = "score"
        self.strip_mark = explanation.keys.index(explanation.key)

    def _on_select(self, change) -> None:
        if len(self.selected) != 2 or self.explanation is None:
            return
        row, column = self.selected
        e = self.explanation
        query_name, key_name = self._rows[row], self._columns[column]
        value = self.values[row][column]
        if key_name == TOTAL or query_name == TOTAL:
            name, side = (query_name, "query") if key_name == TOTAL else (key_name, "key")
            lines = [f"{name}: {value:+.4g} of the score on the {side} side", *_sources(e, name, side)]
            at = e.key if side == "key" else e.query
            self.detail = lines + self._ablate(name, at)  # (after the editor's new run, which redraws this view)
        else:
            self.detail = [f"{query_name} (query side) x {key_name} (key side): {value:+.4g}"]

    def _ablate(self, name: str, position: int) -> list[str]:
        """A head's or an MLP's total clicked: ablate its output at the position it acts on (the key's
        or the query's) in the linked editor; it regenerates, and this view explains the same cell of
        its new run."""
        found = head_of(name)
        if self.editor is None or not (found or name.startswith("mlp ")):
            return []
        plain = self.editor.lm.plain  # (its heads are ablated at every position; no AblateMLP)
        if found is not None:
            stack, layer, head = found
            edit: AblateHead | AblateMLP = AblateHead(layer, head, stack=stack, positions=None if plain else position)
        elif plain:
            return []
        else:
            edit = AblateMLP(int(name.removeprefix("mlp ")), positions=position)
        self.editor.edits = [e for e in self.editor.edits if e != edit] + [edit]
        where = "at every position" if plain else f"at position {position}"
        return [f"ablated {name} {where} in the editor: now {self.editor.trace.output_text!r}"]


def _table(e: AttentionExplanation) -> tuple[torch.Tensor, list[str], list[str]]:
    """The terms of the largest components (the rest summed in "other"), with each row's and each
    column's total."""
    terms = e.terms()
    groups = []
    for side_totals in (terms.sum(1), terms.sum(0)):
        top = side_totals.abs().argsort(descending=True)[:SHOWN].tolist()
        rest = [i for i in range(len(side_totals)) if i not in top]
        groups.append([[i] for i in top] + ([rest] if rest else []))
    rows, columns = groups
    picked = torch.tensor([[float(terms[r][:, c].sum()) for c in columns] for r in rows])
    table = torch.cat([picked, picked.sum(1, keepdim=True)], 1)
    table = torch.cat([table, table.sum(0, keepdim=True)], 0)

    def names(groups: list[list[int]], components: list[str]) -> list[str]:  # the singles, then "other"
        return [components[g[0]] for g in groups[:SHOWN]] + ([OTHER] if len(groups) > SHOWN else [])

    return table, names(rows, e.components) + [TOTAL], names(columns, e.key_components) + [TOTAL]


def _title(e: AttentionExplanation) -> str:
    tokens = e.trace.tokens
    what = f"key {e.key} {tokens[e.key]!r}" if len(e.keys) == 1 else f"its {len(e.keys)} keys (highest: {e.key})"
    stack = "" if e.stack == "self" else f"{e.stack} "
    return f"why {stack}head {e.layer}.{e.head} at query {e.query} {tokens[e.query]!r} attends to {what}"


def _summary(e: AttentionExplanation, editor: bool) -> list[str]:
    lines = [
        f"score of key {e.key}: {e.total:+.4g}, the sum of {len(e.components)} x {len(e.key_components)} terms "
        f"(residual error {e.residual_error:.2g})"
    ]
    for name, values in e.extra.items():
        lines.append(f"{name}: {float(values[e.keys.index(e.key)]):+.4g} of it (a term of its own)")
    if e.softcap:
        lines.append(f"before the softcap ({e.softcap:g}) the model applies to its scores")
    ablate = ", and a head's to ablate it in the editor" if editor else ""
    lines.append("rows: the query's components; columns: the key's; each cell the term of that pair")
    lines.append(f"click a term for its pair; a total (last row or column) for that component{ablate}")
    return lines


def _sources(e: AttentionExplanation, name: str, side: str) -> list[str]:
    """At depth 2, the tokens the head read that make up its part (the largest five)."""
    if (side, name) not in e.sources:
        return []
    return [f"  from token {t} {token!r}: {term:+.4g}" for t, token, term in e.by_source(name, side)[:5]]
