"""`lw.DebuggerView(dbg)`: the debugger on screen. The call stack down to the current call, a
timeline strip of every call coloured by a statistic (breakpoint hits and non-finite outputs
marked; click to travel), a layers x steps grid of the blocks' outputs, the calls around the
current one, step / over / out / continue / back, the breakpoints (added and removed from the
view), and an inspector for the current call's tensor (statistics, histogram, a 2-D slice as a
heatmap, a residual's top tokens). The front end is js/debugger_view.ts; text is set as text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets

from ..debug import At, Call, Debugger, NonFinite, NormJump, Overflow, TargetDrop
from ..debug.timeline import stats_of
from ..errors import InputError, WrongTypeError
from ..export import matrix as export
from ..models.anatomy import anatomy
from ..text import printable
from ._frontend import Answers, StaticFallback, bundle

AROUND = 12  # calls listed before and after the current one
HEAT = (48, 64)  # the inspector's heatmap: at most this many rows x columns (max-pooled)
BINS = 32
STATISTICS = ("rms", "max", "nonfinite", "beyond_float16")
MOVES = ("step", "over", "out", "continue", "back", "goto")
PARTS = ("output", "input", "weight", "attention")


def _statistic(call: Call, name: str) -> float:
    """log10(1 + x) of a call's statistic (the strip's colour), -1 where it has none yet."""
    s = call.stats
    if s is None:
        return -1.0
    value = {
        "rms": s.rms if math.isfinite(s.rms) else max(abs(s.min), abs(s.max)),
        "max": max(abs(s.min), abs(s.max)),
        "nonfinite": float(s.nan + s.inf),
        "beyond_float16": float(s.beyond_float16),
    }[name]
    return math.log10(1.0 + value) if math.isfinite(value) else -1.0


def _mark(call: Call, hits: set[int]) -> int:
    """Bits: 1 a non-finite output, 2 values beyond float16, 4 a breakpoint hit there."""
    s = call.stats
    return (
        (1 if s is not None and not s.finite else 0)
        | (2 if s is not None and s.beyond_float16 else 0)
        | (4 if call.call in hits else 0)
    )


class DebuggerView(Answers, StaticFallback, anywidget.AnyWidget):
    """`lw.DebuggerView(lw.debug(model, prompt, breakpoints=[lw.NonFinite()]))`."""

    _esm = bundle("debugger_view")
    _css = bundle("debugger_view", ".css")

    title = traitlets.Unicode(help="the view's title").tag(sync=True)
    status = traitlets.List(traitlets.Unicode(), help="where it stopped and why").tag(sync=True)
    stack = traitlets.List(traitlets.Dict(), help="the call stack: {call, label}, the model first").tag(sync=True)
    position = traitlets.Int(0, help="the current call").tag(sync=True)
    statistic = traitlets.Unicode("rms", help="what colours the strip: " + ", ".join(STATISTICS)).tag(sync=True)
    strip = traitlets.List(traitlets.Float(), help="log10(1 + statistic) per call, -1: not known").tag(sync=True)
    marks = traitlets.List(traitlets.Int(), help="per call: 1 non-finite, 2 beyond float16, 4 a hit").tag(sync=True)
    grid = traitlets.List(traitlets.List(traitlets.Float()), help="[layer][step] of the blocks' outputs").tag(sync=True)
    calls = traitlets.List(traitlets.Dict(), help="the calls around the current one").tag(sync=True)
    breakpoints = traitlets.List(traitlets.Unicode(), help="the breakpoints, in words").tag(sync=True)
    inspector = traitlets.Dict(help="the inspected tensor: shape, statistics, histogram, heatmap, tokens").tag(
        sync=True
    )
    error = traitlets.Unicode(help="why the last request failed ('' when it did not)").tag(sync=True)

    def __init__(self, debugger: Debugger, **kwargs: Any):
        if not isinstance(debugger, Debugger):
            raise WrongTypeError(f"DebuggerView takes an lw.debug(...) result; got {type(debugger).__name__}")
        self.debugger = debugger
        super().__init__(title=f"debugger: {printable(debugger.lm.name)}", **kwargs)
        self._refresh()
        self.observe(lambda _change: self._refresh(), names="statistic")

    @traitlets.validate("statistic")
    def _check_statistic(self, proposal):
        if proposal.value not in STATISTICS:
            raise traitlets.TraitError(f"statistic must be one of {', '.join(STATISTICS)}; got {proposal.value!r}")
        return proposal.value

    # --- state for the front end ---

    def _refresh(self) -> None:
        dbg = self.debugger
        hits = {h.call for h in dbg.hits}
        with self.hold_sync():
            self.status = self._status()
            self.stack = [{"call": c.call, "label": printable(c.module or "<model>")} for c in dbg.stack]
            self.position = dbg.position
            self.strip = [_statistic(c, self.statistic) for c in dbg.calls]
            self.marks = [_mark(c, hits) for c in dbg.calls]
            self.grid = self._grid().tolist()
            low, high = max(0, dbg.position - AROUND), min(len(dbg.calls), dbg.position + AROUND + 1)
            self.calls = [self._row(c, hits) for c in dbg.calls[low:high]]
            self.breakpoints = [printable(repr(b)) for b in dbg.breakpoints]

    def _status(self) -> list[str]:
        dbg, lines = self.debugger, []
        if dbg.stopped_at is not None:
            lines.append(f"stopped at call {dbg.stopped_at.call}: {printable(dbg.stopped_at.module or '<model>')}")
            lines.append(printable(dbg.reason))
        else:
            lines.append("no breakpoint hit" + (" (the run finished)" if dbg.finished else ""))
        if dbg.operation is not None:
            lines.append(f"made by {printable(str(dbg.operation))}")
        lines.append(f"at call {dbg.position} of {len(dbg.calls)}: {printable(repr(dbg.current))}")
        return lines

    def _grid(self) -> np.ndarray:
        """The blocks' outputs, layers x steps, as the strip's statistic (-1: not run yet)."""
        dbg = self.debugger
        blocks = [c for c in dbg.calls if c.kind == "block" and c.layer is not None and c.phase == "forward"]
        steps = 1 + max((c.step for c in blocks), default=0)
        grid = np.full((dbg.recorder.n_layers, steps), -1.0)
        for c in blocks:
            if c.layer is not None and c.layer < grid.shape[0]:
                grid[c.layer, c.step] = _statistic(c, self.statistic)
        return grid

    @staticmethod
    def _row(c: Call, hits: set[int]) -> dict:
        numbers = c.stats.brief(3) if c.stats is not None else "running"
        return {
            "call": c.call,
            "depth": c.depth,
            "module": printable(_short(c.module)),
            "path": printable(c.module or "<model>"),
            "kind": c.kind + (" (backward)" if c.phase == "backward" else ""),
            "where": (f"L{c.layer} " if c.layer is not None else "") + f"step {c.step}",
            "shape": "x".join(map(str, c.output_shape)) if c.output_shape is not None else "",
            "numbers": numbers,
            "hit": c.call in hits,
        }

    # --- requests ---

    def answer(self, request: dict) -> tuple[dict, list[bytes]]:
        what = request.get("what")
        if what == "export":
            fmt = str(request.get("format"))
            if fmt == "csv":
                return {"type": "file", "name": "timeline.csv", "format": "csv"}, [
                    self.debugger.to_dataframe().to_csv(index=False).encode()
                ]
            return {"type": "file", "name": f"timeline.{fmt}", "format": fmt}, [export.render(self.figure(), fmt)]
        try:
            if what == "move":
                self._move(str(request.get("how")), request)
            elif what == "inspect":
                self.inspector = self._inspect(str(request.get("part", "output")))
            elif what == "breakpoint":
                self._add_breakpoint(str(request.get("kind")), str(request.get("arg", "")))
            elif what == "unbreak":
                index = self.number(request, "index")
                points = list(self.debugger.breakpoints)
                if not 0 <= index < len(points):
                    raise InputError(f"no breakpoint {index}: there are {len(points)}")
                self.debugger.set_breakpoints(points[:index] + points[index + 1 :])
            else:
                raise InputError(
                    f"unknown request {what!r}: ask for 'move', 'inspect', 'breakpoint', 'unbreak' or 'export'"
                )
        except InputError as error:
            self.error = str(error)
            raise
        self.error = ""
        self._refresh()
        return {"type": "ok"}, []

    def _move(self, how: str, request: dict) -> None:
        if how not in MOVES:
            raise InputError(f"the 'move' request's how must be one of {', '.join(MOVES)}; got {how!r}")
        dbg = self.debugger
        {
            "step": dbg.step,
            "over": dbg.step_over,
            "out": dbg.step_out,
            "continue": dbg.continue_,
            "back": dbg.back,
            "goto": lambda: dbg.goto(self.number(request, "call")),
        }[how]()
        self.inspector = {}

    def _add_breakpoint(self, kind: str, arg: str) -> None:
        arg = arg.strip()
        makers = {
            "NonFinite": lambda: NonFinite(),
            "Overflow": lambda: Overflow(arg or "float16"),
            "NormJump": lambda: NormJump(_float(arg or "10", "NormJump's factor")),
            "TargetDrop": lambda: TargetDrop(arg, 0.1),
            "At": lambda: At(module=arg),
        }
        if kind not in makers:
            raise InputError(f"a breakpoint from the view is one of {', '.join(makers)}; got {kind!r}")
        self.debugger.set_breakpoints([*self.debugger.breakpoints, makers[kind]()])

    def _inspect(self, part: str) -> dict:
        if part not in PARTS:
            raise InputError(f"the 'inspect' request's part must be one of {', '.join(PARTS)}; got {part!r}")
        tensor = self.debugger.inspect(part)
        if not isinstance(tensor, torch.Tensor):
            tensor = next((t for t in _tensors(tensor)), None)
            if tensor is None:
                raise InputError(f"call {self.debugger.position}'s {part} holds no tensor")
        return summary(tensor, part, self._top_tokens(tensor) if part == "output" else [])

    def _top_tokens(self, tensor: torch.Tensor) -> list[str]:
        """A block's output is a residual stream: the tokens it predicts at the last position."""
        dbg = self.debugger
        call = dbg.current
        if dbg.lm.plain or call.kind != "block" or tensor.dim() != 3:
            return []
        parts = anatomy(dbg.recorder.model, dbg.recorder.n_layers)
        if parts.unembedding is None:
            return []
        with torch.no_grad():
            dtype = next(parts.unembedding.parameters()).dtype
            probs = torch.softmax(parts.logits(tensor[0, -1].to(dtype)).float(), -1)
        top = probs.topk(5)
        return [
            f"{printable(dbg.lm.tokenizer.decode([int(i)]))!r} {float(p):.3f}"
            for p, i in zip(top.values, top.indices, strict=True)
        ]

    # --- what stays where no front end runs, and files ---

    def figure(self) -> export.MatrixFigure:
        dbg = self.debugger
        grid = self._grid()
        hits = [f"hit at call {h.call} ({dbg.calls[h.call].module}): {h.reason}" for h in dbg.hits[:5]]
        return export.MatrixFigure(
            title=f"{dbg.lm.name}: the blocks' outputs, log10(1 + {self.statistic})",
            values=np.where(grid < 0, 0.0, grid),
            row_labels=[f"layer {i}" for i in range(grid.shape[0])],
            column_labels=[f"step {j}" for j in range(grid.shape[1])],
            scale="sequential",
            vmax=float(max(grid.max(), 1e-9)),
            notes=self._status()[:3] + hits,
            data={"kind": "debugger", "statistic": self.statistic},
        )

    def static_figure(self) -> bytes:
        return export.render(self.figure(), "png")

    def static_text(self) -> str:
        return "\n".join([self.title, *self._status()])

    def save(self, path: str | Path) -> Path:
        """The blocks' grid as .png, .svg or standalone .html."""
        return export.save(self.figure(), path)


def _short(path: str) -> str:
    """A call's name in the list: its last part, with its parent's for a numbered block ("h.2")."""
    if not path:
        return "<model>"
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{name} must be a number; got {text!r}") from None


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def summary(tensor: torch.Tensor, part: str, tokens: list[str]) -> dict:
    """What the inspector shows of a tensor: shape, dtype, statistics, a histogram of its finite
    values, its last two dimensions (first index of the others) max-pooled to at most HEAT."""
    x = tensor.detach().float().cpu()
    s = stats_of(x)
    finite = x[torch.isfinite(x)]
    counts, edges = (
        np.histogram(finite.numpy(), bins=BINS) if finite.numel() else (np.zeros(BINS, dtype=int), np.zeros(BINS + 1))
    )
    plane = (
        x.reshape(-1, x.shape[-1])
        if x.dim() == 2
        else x.reshape(-1, *x.shape[-2:])[0]
        if x.dim() > 2
        else x.reshape(1, -1)
    )
    plane = torch.nan_to_num(plane, nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = min(HEAT[0], plane.shape[0]), min(HEAT[1], plane.shape[1])
    pooled = torch.nn.functional.adaptive_max_pool2d(plane.abs()[None, None], (rows, cols))[0, 0]
    return {
        "part": part,
        "shape": list(x.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "lines": [
            f"min {s.min:.4g}  max {s.max:.4g}  mean {s.mean:.4g}  rms {s.rms:.4g}",
            f"NaN {s.nan}  Inf {s.inf}  beyond float16 {s.beyond_float16}  of {s.numel}",
        ],
        "histogram": counts.tolist(),
        "edges": [float(edges[0]), float(edges[-1])],
        "heat": pooled.tolist(),
        "heat_label": f"|x| of the last two dimensions {list(plane.shape)}, max-pooled to {rows}x{cols}",
        "tokens": tokens,
    }
