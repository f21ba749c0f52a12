"""Edits on a model's blocks at run time: a forward hook on each steered block adds strength x
direction to the residual stream it outputs (SteerResidual; for a search, each batch row its own),
and one on an MLP zeroes its output (AblateMLP), at the edits' positions; every hook is removed
after the run, on errors and interrupts too.

Positions are the trace's (an encoder-decoder's decoder positions follow its source's). A block
sees a pass's positions from where the model's cache ends: a hook before the model (or the
decoder) reads the cache's length as the pass starts; a pass without a cache starts at 0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch

from ..errors import InputError
from ..models.anatomy import block_output, with_block_output
from .edits import AblateMLP, SteerResidual, steered_stack


class ResidualSteering:
    """The SteerResidual (every row's, or each row's own) and AblateMLP edits of one run, on the
    blocks of each residual stream.

    blocks: {"self": [...]} or an encoder-decoder's {"encoder": [...], "decoder": [...]};
    offsets: where each stream's positions start in the trace; n_prompt: the trace's first
    generated position ("prompt" and "generated" positions); seq_dims: each stream's sequence
    axis in a block's output (-2: [batch, positions, width]; -3: torch's [positions, batch, width])."""

    def __init__(
        self,
        edits: Sequence[Any],
        blocks: Mapping[str, Sequence[torch.nn.Module]],
        *,
        offsets: Mapping[str, int] | None = None,
        n_prompt: int,
        seq_dims: Mapping[str, int] | None = None,
        row_edits: Sequence[Sequence[Any]] | None = None,
        mlps: Sequence[torch.nn.Module | None] | None = None,
    ):
        self.blocks, self.n_prompt = blocks, n_prompt
        # AblateMLP edits (a decoder-only model's): each block's MLP, its output zeroed at the edit's positions
        self.mlps = mlps or []
        self.ablated: dict[int, list[AblateMLP]] = {}
        for edit in edits:
            if isinstance(edit, AblateMLP):
                self.ablated.setdefault(edit.layer, []).append(edit)
        self.offsets = dict(offsets or {})
        self.seq_dims = dict(seq_dims or {})
        self.at: dict[tuple[str, int], list[SteerResidual]] = {}
        for edit in edits:
            if isinstance(edit, SteerResidual) and edit.strength != 0:  # strength 0: nothing to add, no hook
                for layer in edit.layers:
                    self.at.setdefault((steered_stack(edit, blocks), layer), []).append(edit)
        # each batch row's own edits (row_edits): (block) -> [(row, edit), ...]
        self.rows_at: dict[tuple[str, int], list[tuple[int, SteerResidual]]] = {}
        for row, row_edits_of in enumerate(row_edits or ()):
            for edit in row_edits_of:
                if isinstance(edit, SteerResidual) and edit.strength != 0:
                    for layer in edit.layers:
                        self.rows_at.setdefault((steered_stack(edit, blocks), layer), []).append((row, edit))
        self.starts: dict[str, int] = {}  # where each stream's current pass starts (its cache's length)
        self.thread = threading.get_ident()
        self._vectors: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.at) or bool(self.rows_at) or bool(self.ablated)

    @contextmanager
    def installed(self, starters: Mapping[str, torch.nn.Module] | None = None) -> Iterator[None]:
        """The hooks on the steered blocks (and on each stream's `starters`: the module whose call
        begins a pass, told its cache), removed after."""
        with ExitStack() as stack:
            for (name, layer), edits in self.at.items():
                handle = self.blocks[name][layer].register_forward_hook(self._adder(name, edits))
                stack.callback(handle.remove)
            for (name, layer), pairs in self.rows_at.items():
                handle = self.blocks[name][layer].register_forward_hook(self._row_adder(name, pairs))
                stack.callback(handle.remove)
            for layer, edits in self.ablated.items():
                mlp = self.mlps[layer] if layer < len(self.mlps) else None
                if mlp is None:
                    raise InputError(f"{edits[0]!r}: block {layer} has no MLP found (mlp, feed_forward, ...)")
                handle = mlp.register_forward_hook(self._zeroer(edits))
                stack.callback(handle.remove)
            for name, module in (starters or {}).items():
                handle = module.register_forward_pre_hook(self._starter(name), with_kwargs=True)
                stack.callback(handle.remove)
            yield

    def _starter(self, name: str):
        def hook(_module, _args, kwargs):
            if threading.get_ident() == self.thread:
                cache = kwargs.get("past_key_values", kwargs.get("cache"))
                self.starts[name] = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0

        return hook

    def _adder(self, name: str, edits: list[SteerResidual]):
        seq_dim = self.seq_dims.get(name, -2)

        def hook(_module, _args, output):
            if threading.get_ident() != self.thread:  # another thread's forward: not this run's
                return None
            hidden = block_output(output)
            first = self.offsets.get(name, 0) + self.starts.get(name, 0)
            n = hidden.shape[seq_dim]
            for edit in edits:
                rows = steered_rows(edit, first, n, self.n_prompt)
                if rows is False:
                    continue
                added = hidden + self._vector(edit, hidden)
                if rows is None:
                    hidden = added
                else:
                    shape = [n] + [1] * (-seq_dim - 1)  # along the sequence axis, broadcast over the rest
                    hidden = torch.where(rows.to(hidden.device).view(shape), added, hidden)
            return with_block_output(output, hidden)

        return hook

    def _zeroer(self, edits: list[AblateMLP]):
        """A hook zeroing an MLP's output at the edits' positions (a decoder-only model's stream)."""

        def hook(_module, _args, output):
            if threading.get_ident() != self.thread:
                return None
            out = block_output(output)
            first = self.starts.get("self", 0)
            for edit in edits:
                rows = _in(edit.positions, first, out.shape[-2])
                if rows is False:
                    continue
                out = torch.zeros_like(out) if rows is None else torch.where(rows.to(out.device)[:, None], 0.0, out)
            return with_block_output(output, out)

        return hook

    def _row_adder(self, name: str, pairs: list[tuple[int, SteerResidual]]):
        """A hook adding each row's own edits (batch first: [rows, positions, width])."""

        def hook(_module, _args, output):
            if threading.get_ident() != self.thread:
                return None
            hidden = block_output(output)
            first = self.offsets.get(name, 0) + self.starts.get(name, 0)
            delta = torch.zeros_like(hidden)
            for row, edit in pairs:
                rows = steered_rows(edit, first, hidden.shape[1], self.n_prompt)
                if rows is False:
                    continue
                at = slice(None) if rows is None else rows.to(hidden.device)
                delta[row, at] += self._vector(edit, hidden)
            hidden = hidden + delta
            return with_block_output(output, hidden)

        return hook

    def _vector(self, edit: SteerResidual, hidden: torch.Tensor) -> torch.Tensor:
        """strength x direction in float32, as the residual's dtype on its device (made once a run)."""
        key = (id(edit), hidden.device, hidden.dtype)
        if key not in self._vectors:
            vector = edit.direction.vector
            if vector.numel() != hidden.shape[-1]:
                raise InputError(
                    f"{edit!r}: its direction has {vector.numel()} numbers, and this residual stream has "
                    f"{hidden.shape[-1]}: make the direction from this model"
                )
            self._vectors[key] = (edit.strength * vector).to(hidden.device, hidden.dtype)
        return self._vectors[key]


def steered_rows(edit: SteerResidual, first: int, n: int, n_prompt: int) -> torch.Tensor | None | Literal[False]:
    """Which of a pass's n positions (from `first` on) the edit steers: None for all of them,
    False for none, else a bool tensor. n_prompt: the run's first generated position."""
    positions = edit.positions
    if positions is None:
        return None
    if positions == "prompt":
        spans: Any = ((0, n_prompt),)
    elif positions == "generated":
        spans = ((n_prompt, first + n),)
    else:
        spans = positions
    return _in(spans, first, n)


def _in(spans: Any, first: int, n: int) -> torch.Tensor | None | Literal[False]:
    """Which of n positions from `first` on fall in `spans`: None for all (or spans None), False for none."""
    if spans is None:
        return None
    at = torch.arange(first, first + n)
    rows = torch.zeros(n, dtype=torch.bool)
    for start, stop in spans:
        rows |= (at >= start) & (at < stop)
    if bool(rows.all()):
        return None
    return rows if bool(rows.any()) else False


def added_by(edits: Sequence[Any], layer: int, n: int, n_prompt: int) -> torch.Tensor | None:
    """What a decoder-only run's SteerResidual edits add after block `layer` over positions 0 to
    n - 1 ([n, width] float32), or None where they add nothing."""
    total = None
    for edit in edits:
        if isinstance(edit, SteerResidual) and edit.strength and layer in edit.layers:
            rows = steered_rows(edit, 0, n, n_prompt)
            if rows is False:
                continue
            part = (edit.strength * edit.direction.vector).expand(n, -1)
            part = part if rows is None else part * rows[:, None]
            total = part if total is None else total + part
    return total


def enclosing_blocks(root: torch.nn.Module, members: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """The blocks that hold `members` (one attention module each, in order): the entries of the
    ModuleList under `root` whose every entry holds exactly one of them."""
    wanted = [id(m) for m in members]
    for module in root.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) != len(members):
            continue
        held = [[id(m) for m in block.modules() if id(m) in set(wanted)] for block in module]
        if all(len(ids) == 1 for ids in held) and [ids[0] for ids in held] == wanted:
            return list(module)
    raise InputError(
        f"{type(root).__name__}: no list of blocks holds its {len(members)} attention modules one each, so its "
        f"residual stream cannot be steered (SteerResidual)"
    )
