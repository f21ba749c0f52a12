"""`AttentionView`: a trace's attention per layer and head, inline.

Small state (tokens, selection) lives in traitlets; matrices go out on request,
one binary buffer per answer (see transport.py): the front end asks for what it
draws, so a long trace never travels whole.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import torch
import traitlets

from ..errors import InputError, WrongTypeError
from ..export import attention as export
from ..trace import Trace
from ..trace.batch import TraceBatch
from ..trace.trace import GRID_CELL, OVERVIEW
from ._frontend import Answers, StaticFallback, bundle
from .transport import encode_rows_uint8


class AttentionView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.AttentionView(trace)`: heatmap of one head, all heads as a grid, tokens to click.
    `lw.AttentionView(batch)` (a TraceBatch) shows one row at a time, with a row selector."""

    _esm = bundle("attention_view")
    _css = bundle("attention_view", ".css")

    model_name = traitlets.Unicode(help="the model's name, for the title").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode(), help="each token as text: prompt then generated").tag(sync=True)
    n_prompt = traitlets.Int(help="how many of the tokens are the prompt").tag(sync=True)
    n_layers = traitlets.Int(help="layers of the model").tag(sync=True)
    n_heads = traitlets.Int(help="attention heads per layer").tag(sync=True)
    layer = traitlets.Int(0, help="the layer shown").tag(sync=True)
    head = traitlets.Int(0, help="the head shown").tag(sync=True)
    query = traitlets.Int(-1, help="selected query position, -1 for none").tag(sync=True)
    cell = traitlets.List(
        traitlets.Int(), help="[query, key] of the heatmap cell clicked ([query, -1]: a pooled cell's row), [] for none"
    ).tag(sync=True)
    output_text = traitlets.Unicode(help="the generated text").tag(sync=True)
    zoom = traitlets.List(traitlets.Int(), help="[q0, q1, k0, k1] of the region shown, [] for all").tag(sync=True)
    revision = traitlets.Int(0, help="bumped when the trace is replaced: the front end reloads").tag(sync=True)
    overview_size = traitlets.Int(OVERVIEW, help="the pooled size of the heatmap the front end asks for").tag(sync=True)
    grid_size = traitlets.Int(GRID_CELL, help="the pooled size of each thumbnail of the grid").tag(sync=True)
    attention_layers = traitlets.List(
        traitlets.Int(), help="the layers that attend (all but a hybrid model's linear attention or state-space layers)"
    ).tag(sync=True)
    sink_layers = traitlets.List(
        traitlets.Int(),
        help="layers with attention sinks (GPT-OSS, ...): a row's weights sum to less than 1, the rest is the sink's",
    ).tag(sync=True)
    stacks = traitlets.List(
        traitlets.Unicode(),
        help="the kinds of attention: ['self'], or an encoder-decoder's ['encoder', 'decoder', 'cross']",
    ).tag(sync=True)
    stack = traitlets.Unicode("self", help="the kind of attention shown").tag(sync=True)
    query_range = traitlets.List(
        traitlets.Int(), help="[start, stop) of the positions that are this stack's queries"
    ).tag(sync=True)
    key_range = traitlets.List(traitlets.Int(), help="[start, stop) of the positions that are its keys").tag(sync=True)
    n_source = traitlets.Int(0, help="an encoder-decoder's source tokens (positions 0 .. n_source - 1)").tag(sync=True)
    n_rows = traitlets.Int(1, help="rows of the batch shown (1 for a single trace)").tag(sync=True)
    row = traitlets.Int(0, help="the batch row on screen").tag(sync=True)

    def __init__(
        self,
        trace: Trace | TraceBatch,
        *,
        layer: int | None = None,
        head: int = 0,
        row: int = 0,
        stack: str | None = None,
        **kwargs,
    ):
        if isinstance(trace, TraceBatch):
            self.batch = trace
        elif isinstance(trace, Trace):
            self.batch = None
        else:
            raise WrongTypeError(
                f"AttentionView takes a Trace or a TraceBatch (from model.trace(...)), got {type(trace).__name__}"
            )
        first = trace[0] if isinstance(trace, TraceBatch) else trace
        self.trace: Trace = first
        shown = first.stack(stack)  # an encoder-decoder's cross-attention unless asked otherwise
        super().__init__(
            model_name=first.model.name,
            tokens=first.tokens,
            n_prompt=first.n_prompt,
            output_text=first.output_text,
            stacks=list(first.stacks),
            stack=shown.name,
            n_source=first.n_source,
            n_rows=len(trace) if self.batch is not None else 1,
            **self._stack_state(shown),
            **kwargs,
        )
        self.layer, self.head, self.row = self.layer if layer is None else layer, head, row  # validated below

    @staticmethod
    def _stack_state(stack) -> dict:
        """The traits that follow the kind of attention shown (its layers, heads and positions)."""
        first_layer = stack.attention_layers[0] if stack.attention_layers else 0  # a hybrid's first may not attend
        return dict(
            n_layers=stack.n_layers,
            n_heads=stack.n_heads,
            attention_layers=list(stack.attention_layers),
            sink_layers=list(stack.sink_layers),
            query_range=list(stack.queries),
            key_range=list(stack.keys),
            layer=first_layer,
            head=0,
        )

    @traitlets.validate("stack")
    def _check_stack(self, proposal):
        if proposal.value not in self.trace.stacks:
            raise traitlets.TraitError(
                f"stack {proposal.value!r} is not in this trace: pick one of {list(self.trace.stacks)}"
            )
        return proposal.value

    @traitlets.observe("stack")
    def _show_stack(self, change):
        with self.hold_sync():
            self.query = -1
            self.cell = []
            self.zoom = []
            for name, value in self._stack_state(self.trace.stack(change.new)).items():
                setattr(self, name, value)
            self.revision += 1

    @traitlets.validate("row")
    def _check_row(self, proposal):
        if not 0 <= proposal.value < self.n_rows:
            raise traitlets.TraitError(
                f"row {proposal.value} is out of range: this batch has rows 0 to {self.n_rows - 1}"
            )
        return proposal.value

    @traitlets.observe("row")
    def _show_row(self, change):
        if self.batch is None or self.batch[change.new] is self.trace:
            return
        self.show_trace(self.batch[change.new])

    def show_trace(self, trace: Trace) -> None:
        """Put another run of the same model on screen (a batch row, the editor's new run), keeping
        the kind of attention, layer and head shown."""
        with self.hold_sync():
            self.query = -1  # before the tokens change: a kept position might not exist in this run
            self.zoom = []
            self.trace = trace
            self.tokens = trace.tokens
            self.n_prompt = trace.n_prompt
            self.n_source = trace.n_source
            self.output_text = trace.output_text
            part = trace.stack(self.stack)
            self.query_range, self.key_range = list(part.queries), list(part.keys)
            if self.cell and not (self.cell[0] < part.queries[1] and self.cell[1] < part.keys[1]):
                self.cell = []  # (kept while this run has it: a linked explanation follows it to the new run)
            self.revision += 1

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        part = self.trace.stack(self.stack)
        if not 0 <= proposal.value < part.n_layers:
            raise traitlets.TraitError(f"layer {proposal.value} is out of range: 0 to {part.n_layers - 1}")
        if proposal.value not in part.attention_layers:
            raise traitlets.TraitError(
                f"layer {proposal.value} has no attention (a linear-attention or state-space "
                f"layer of this hybrid model): pick one of {list(part.attention_layers)}"
            )
        return proposal.value

    @traitlets.validate("head")
    def _check_head(self, proposal):
        n_heads = self.trace.stack(self.stack).n_heads
        if not 0 <= proposal.value < n_heads:
            raise traitlets.TraitError(f"head {proposal.value} is out of range: 0 to {n_heads - 1}")
        return proposal.value

    @traitlets.validate("query")
    def _check_query(self, proposal):
        first, stop = self.trace.stack(self.stack).queries
        if not (proposal.value == -1 or first <= proposal.value < stop):
            raise traitlets.TraitError(f"query {proposal.value} is out of range: -1 (none) or {first} to {stop - 1}")
        return proposal.value

    @traitlets.validate("cell")
    def _check_cell(self, proposal):
        cell = list(proposal.value)
        (q0, q1), (k0, k1) = self.query_range, self.key_range
        if cell and (len(cell) != 2 or not q0 <= cell[0] < q1 or not (cell[1] == -1 or k0 <= cell[1] < k1)):
            raise traitlets.TraitError(
                f"cell must be [] or [query, key] with a query {q0} to {q1 - 1} and a key {k0} to {k1 - 1} (or -1: the "
                f"whole row); got {cell}"
            )
        return cell

    @traitlets.validate("zoom")
    def _check_zoom(self, proposal):
        zoom = list(proposal.value)
        if zoom:
            try:
                assert len(zoom) == 4
                part = self.trace.stack(self.stack)
                part.span((zoom[0], zoom[1]), "zoom queries")
                part.span((zoom[2], zoom[3]), "zoom keys")
            except (ValueError, AssertionError) as error:
                raise traitlets.TraitError(
                    f"zoom must be [] or [q0, q1, k0, k1] within the {len(self.trace)} tokens: {error}"
                ) from None
        return zoom

    # --- figures ---

    def figure(self) -> export.AttentionFigure:
        """What is on screen (head, zoom, query) as figure data."""
        zoom = [int(z) for z in self.zoom]
        region = {"queries": (zoom[0], zoom[1]), "keys": (zoom[2], zoom[3])} if zoom else {}
        return export.attention_figure(self.trace, self.layer, self.head, query=self.query, stack=self.stack, **region)

    def static_figure(self) -> bytes:
        return export.render(self.figure(), "png")

    def static_text(self) -> str:
        row = f", batch row {self.row} of {self.n_rows}" if self.n_rows > 1 else ""
        which = "" if self.stack == "self" else f" ({self.stack} attention)"
        return (
            f"{self.model_name}, layer {self.layer}, head {self.head}{which}{row}: {len(self.trace)} tokens\n"
            f"{self.trace.prompt_text}{self.trace.output_text}"
        )

    def save(self, path: str | Path) -> Path:
        """`view.save("fig.png" | "fig.svg" | "fig.html")`: the current selection as a file; returns its path.
        The HTML is standalone: data embedded, no kernel or network needed to open it."""
        return export.save(self.figure(), path)

    # --- what the front end asks for ---

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        """The reply to one request, as (message, buffers). Used by the front end and by tests."""
        what, stack, number = request.get("what"), self.stack, self.number
        if what == "overview":
            matrix = self.trace.attention_overview(
                number(request, "layer"), number(request, "head"), size=number(request, "size", OVERVIEW), stack=stack
            )
        elif what == "row":
            matrix = self.trace.attention(
                number(request, "layer"), number(request, "head"), queries=number(request, "query"), stack=stack
            )
        elif what == "tile":
            matrix = self.trace.attention_overview(
                number(request, "layer"),
                number(request, "head"),
                size=number(request, "size", OVERVIEW),
                queries=(number(request, "q0"), number(request, "q1")),
                keys=(number(request, "k0"), number(request, "k1")),
                stack=stack,
            )
        elif what == "heads":  # one query's row in every head of a layer, over every position: the head view's lines
            layer, query = number(request, "layer"), number(request, "query")
            part = self.trace.stack(stack)
            matrix = torch.zeros(part.n_heads, len(self.trace))
            matrix[:, part.keys[0] : part.keys[1]] = torch.cat(
                [part.attention(layer, head, queries=query) for head in range(part.n_heads)]
            )
        elif what == "grid":
            matrix = self.trace.attention_grid(number(request, "size", GRID_CELL), stack=stack)
        elif what == "export":
            fmt = str(request.get("format"))
            data = export.render(self.figure(), fmt)
            which = "" if self.stack == "self" else f"{self.stack}-"
            name = f"attention-{which}L{self.layer}-H{self.head}.{fmt}"
            return {"type": "file", "id": request.get("id"), "name": name, "format": fmt}, [data]
        else:
            raise InputError(
                f"unknown request {what!r}: ask for 'overview', 'tile', 'row', 'heads', 'grid' or 'export'"
            )
        meta, buffers = encode_rows_uint8(matrix)
        return {"type": "reply", "id": request.get("id"), "what": what, **meta}, buffers
