"""`lw.debug(model, prompt, breakpoints=[...])`: run a model to the call where something goes
wrong, stop there, step forward and back through its module calls, and look at any tensor.

Time travel by replay: a run is repeatable (greedy, or sampled with its seed), so the debugger
keeps only the timeline (statistics of every call) and recomputes any call's tensors by running
again up to that call and copying only it. Each run holds the model as every traced run does
(`held()`), through the trace engine (fast attention kept); hooks are removed after each run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from .. import checks
from ..analysis.cost import Plan, Work, kv_bytes, plans
from ..errors import InputError, WrongTypeError
from ..models import LanguageModel
from ..models.plain import input_embedding, logits_of
from ..models.structure import modules_of
from ..trace import Trace
from ..trace.run import SEED_MAX, prompt_ids
from ..trace.runner import held
from .breakpoints import Breakpoint, checked_breakpoints
from .ops import Operation
from .recorder import Captured, Hit, Recorder
from .timeline import STAT_NAMES, Call


def _watches(watch: Any) -> list[tuple[str, str, Callable]]:
    """watch=[("model.layers.*", fn), ...] or {name: (pattern, fn)}: (name, pattern, fn) each."""
    if watch is None:
        return []
    items = (
        list(watch.items())
        if isinstance(watch, dict)
        else [(None, w) for w in watch]
        if isinstance(watch, (list, tuple))
        else None
    )
    out = []
    for name, pair in items or [(None, None)]:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str) and callable(pair[1])):
            raise InputError(
                f"watch must be a list of (module pattern, fn) pairs, e.g. [('model.layers.*', lambda x: x.norm())], "
                f"or a dict name -> pair; got {watch!r:.80}"
            )
        out.append((name or getattr(pair[1], "__name__", "") or f"watch{len(out)}", pair[0], pair[1]))
    return out


class Debugger:
    """A debugged run. `stopped_at` is the call where it stopped (a breakpoint's hit, or the call
    that raised), `position` the call looked at now (`step`, `back`, `goto`, ... move it);
    `calls` is the timeline so far, `hits` the breakpoint hits found, `inspect` gives tensors."""

    def __init__(self, lm: LanguageModel, ids: torch.Tensor, generation: dict, breakpoints, watches, backward):
        self.lm, self.ids, self.generation, self.backward = lm, ids, generation, backward
        self.recorder = Recorder(lm, breakpoints, watches)
        self.calls: list[Call] = []
        self.hits: list[Hit] = []
        self.finished = False
        self.error: BaseException | None = None
        self.traceback = ""
        self.operation: Operation | None = None
        self.reason = ""
        self.stopped_at: Call | None = None
        self._captured: tuple[int, Captured] | None = None
        self._versions = self._weights_version()
        self._replay(stop_after=-1)
        self.position = self.stopped_at.call if self.stopped_at is not None else 0

    # --- running ---

    def _execute(self) -> Any:
        if self.backward is not None:
            return self._forward_backward()
        return self.lm.trace(self.ids, capture=False, **self.generation)

    def _weights_version(self) -> int:
        """Counts every in-place change of the model's weights and buffers (torch's version counters)."""
        model = self.recorder.model
        return sum(t._version for t in (*model.parameters(), *model.buffers()))

    def _replay(self, *, stop_after: int | None, capture: int | None = None) -> Recorder:
        """One run from the start, stopped as asked; the timeline keeps what it learnt."""
        if self._weights_version() != self._versions:
            raise InputError(
                f"{self.lm.name}'s weights changed since this run was recorded (an in-place change: a fix, a "
                f"training step): replaying it would show another run. Run lw.debug again on the model as it is "
                f"now (or debug a copy, copy.deepcopy(model.model), to keep this one)"
            )
        rec = self.recorder
        with held(self.lm.model, seed=self.generation.get("seed"), grad=self.backward is not None):
            rec.record(self._execute, stop_after=stop_after, capture=capture, grad=self.backward is not None)
        for old, new in zip(self.calls, rec.calls):  # the same run: only calls that had not returned change
            if old.stats is None and new.stats is not None:
                self.calls[old.call] = new
        self.calls.extend(rec.calls[len(self.calls) :])
        known = {(h.call, h.reason) for h in self.hits}
        self.hits += [h for h in rec.hits if (h.call, h.reason) not in known]
        self.finished = self.finished or rec.finished
        if rec.error is not None:
            self.error, self.traceback, self.finished = rec.error, rec.error_text, True
        if rec.stopped is not None and capture is None:
            self.stopped_at, self.reason, self.operation = self.calls[rec.stopped.call], rec.reason, rec.operation
        return rec

    def _forward_backward(self) -> None:
        """The prompt's forward with gradients of the token embeddings only (the parameters' .grad
        untouched), then the loss's gradient: every module's output gradient enters the timeline."""
        model, lm = self.recorder.model, self.lm
        embedding = input_embedding(model, len(lm.tokenizer)) if lm.plain else model.get_input_embeddings()
        leaves: list[torch.Tensor] = []

        def leaf(_module, _args, out):
            leaves.append(out.detach().requires_grad_())
            return leaves[-1]

        handle = embedding.register_forward_hook(leaf)
        try:
            ids = self.ids[None].to(embedding.weight.device)
            logits = logits_of(model(ids)) if lm.plain else model(input_ids=ids).logits
        finally:
            handle.remove()
        loss = self._loss(logits)
        if not loss.requires_grad:
            raise InputError("backward: the loss does not depend on the model's inputs, so it has no gradient")
        torch.autograd.grad(loss, leaves)

    def _loss(self, logits: torch.Tensor) -> torch.Tensor:
        if callable(self.backward):
            loss = self.backward(logits)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise InputError(f"backward=fn(logits) must return one number (a 1-element tensor); got {loss!r:.60}")
            return loss.reshape(())
        target = self.backward
        return -torch.log_softmax(logits[0, -1].float(), -1)[target]

    @property
    def breakpoints(self) -> tuple[Breakpoint, ...]:
        return self.recorder.breakpoints

    def set_breakpoints(self, breakpoints: Any) -> None:
        """Replace the breakpoints (checked against the model first; on an error they stay as they
        were). Hits found so far are forgotten; `continue_` finds the new ones."""
        checked = checked_breakpoints(breakpoints)
        for point in checked:
            point.bind(self.recorder)
        self.recorder.breakpoints = checked
        self.hits = []

    # --- where we are ---

    @property
    def current(self) -> Call:
        return self.calls[self.position]

    @property
    def stack(self) -> list[Call]:
        """The call stack at the current call: the model first, the current call last."""
        chain, call = [], self.current
        while True:
            chain.append(call)
            if call.parent is None:
                return chain[::-1]
            call = self.calls[call.parent]

    def goto(self, call: int) -> Call:
        """Travel to call number `call` (entry order). Past what is recorded, the rest of the run is
        recorded once (without stopping at hits); after that, moving is free."""
        checks.integer(call, "call", low=0)
        unknown = call >= len(self.calls) or self.calls[call].exit_order is None
        if unknown and not self.finished:
            self._replay(stop_after=None)
        if call >= len(self.calls):
            raise InputError(
                f"call {call} is past the end: this run has {len(self.calls)} calls (0 to {len(self.calls) - 1})"
            )
        self.position = call
        return self.current

    def step(self) -> Call:
        """The next call (into the current one's children first)."""
        return self.goto(self.position + 1)

    def back(self) -> Call:
        """The call before the current one."""
        if self.position == 0:
            raise InputError("back: already at the first call of the run")
        return self.goto(self.position - 1)

    def step_over(self) -> Call:
        """The next call that is not inside the current one."""
        depth = self.current.depth
        after = next((c.call for c in self.calls[self.position + 1 :] if c.depth <= depth), None)
        if after is None and not self.finished:
            self._replay(stop_after=None)
            after = next((c.call for c in self.calls[self.position + 1 :] if c.depth <= depth), None)
        if after is None:
            raise InputError("step_over: the current call is the last of the run")
        return self.goto(after)

    def step_out(self) -> Call:
        """The call the current one runs inside."""
        parent = self.current.parent
        if parent is None:
            raise InputError("step_out: the current call is the model's own, inside nothing")
        return self.goto(parent)

    def continue_(self) -> Call | None:
        """Run on to the next breakpoint hit after the current call (or the call that raises); None,
        at the last call, when the run ends first."""
        here = self.current.exit_order
        if here is None:  # an open call (the one that raised, or a parent): after everything recorded
            here = max((c.exit_order for c in self.calls if c.exit_order is not None), default=-1)
        if self.error is not None and self.stopped_at is not None and self.position == self.stopped_at.call:
            raise InputError(f"continue_: the run raises at this call ({self.reason}); nothing runs after it")
        rec = self._replay(stop_after=here)
        if rec.stopped is None:
            self.position = len(self.calls) - 1
            return None
        self.position = rec.stopped.call
        return self.current

    # --- looking ---

    def inspect(self, what: str = "output") -> Any:
        """A tensor at the current call, recomputed by running up to it: "output", "input" (the first
        tensor argument), "inputs" (all, by name), "weight" (the module's), "parameters", or
        "attention" (an attention module's maps [heads, queries, keys] at this call's step)."""
        checks.choice(what, "inspect's what", ("output", "input", "inputs", "weight", "parameters", "attention"))
        call = self.current
        if what in ("weight", "parameters"):
            return self._parameters(call, what)
        if what == "attention":
            return self._attention(call)
        captured = self._capture(call)
        if what == "output":
            if captured.output is None:
                raise InputError(f"call {call.call} ({call.module}) raised before it returned: it has no output")
            return captured.output
        named = [(str(i), a) for i, a in enumerate(captured.args)] + list(captured.kwargs.items())
        tensors = {name: v for name, v in named if isinstance(v, torch.Tensor)}
        if what == "inputs":
            return tensors
        if not tensors:
            raise InputError(f"call {call.call} ({call.module}) took no tensor input")
        return next(iter(tensors.values()))

    def _capture(self, call: Call) -> Captured:
        if call.phase == "backward":
            raise InputError("inspect looks at forward calls; a backward call's gradient statistics are in call.stats")
        if self._captured is None or self._captured[0] != call.call:
            rec = self._replay(stop_after=None, capture=call.call)
            if rec.captured is None:
                raise InputError(f"call {call.call} was not reached when the run was repeated")
            self._captured = (call.call, rec.captured)
        return self._captured[1]

    def _module(self, call: Call) -> torch.nn.Module:
        return self.recorder.model.get_submodule(call.module) if call.module else self.recorder.model

    def _parameters(self, call: Call, what: str) -> Any:
        module = self._module(call)
        own = {name: p.detach() for name, p in module.named_parameters(recurse=False)}
        if what == "parameters":
            return own
        if "weight" not in own:
            raise InputError(
                f"{call.module or 'the model'} has no weight of its own; its parameters: {sorted(own) or 'none'}"
            )
        return own["weight"]

    def _attention(self, call: Call) -> torch.Tensor:
        if call.kind != "attention" or call.layer is None:
            raise InputError(
                f"call {call.call} is {call.kind} {call.module!r}: attention is inspected at an attention call"
            )
        trace = self.lm.trace(self.ids, **self.generation)
        assert isinstance(trace, Trace)  # one prompt: one trace
        n = trace.n_prompt
        queries = (0, n) if call.step == 0 else n + call.step - 1
        stack = trace.stack(None)
        maps = [stack.attention(call.layer, head, queries, None) for head in range(stack.n_heads)]
        return torch.stack(maps)

    def watch(self, pattern: str, fn: Callable[[torch.Tensor], Any]):
        """A series over the run: `fn(output)` at every call whose module path matches `pattern`
        ("model.layers.*"), as a table (pandas DataFrame: call, step, layer, module, value)."""
        if not isinstance(pattern, str) or not self.recorder.modules.matching(pattern):
            raise InputError(
                f"watch({pattern!r}) names no module of {self.lm.name}: e.g. {self.recorder.example_paths()}"
            )
        if not callable(fn):
            raise WrongTypeError(f"watch's fn must be a function of a tensor; got {type(fn).__name__}")
        saved = self.recorder.watches
        self.recorder.watches = [("value", pattern, fn)]
        try:
            rec = self._replay(stop_after=None)
            rows = [(c.call, c.step, c.layer, c.module, c.watched["value"]) for c in rec.calls if "value" in c.watched]
        finally:
            self.recorder.watches = saved
        import pandas as pd

        return pd.DataFrame(rows, columns=["call", "step", "layer", "module", "value"])

    def to_dataframe(self):
        """The timeline as a table: one row per call, its place, shape and statistics, watched values
        and the breakpoint that hit there."""
        import pandas as pd

        hit = {h.call: h.reason for h in self.hits}
        rows = []
        for c in self.calls:
            numbers = [getattr(c.stats, n) for n in STAT_NAMES] if c.stats is not None else [None] * len(STAT_NAMES)
            rows.append(
                {
                    "call": c.call,
                    "phase": c.phase,
                    "step": c.step,
                    "layer": c.layer,
                    "depth": c.depth,
                    "module": c.module,
                    "kind": c.kind,
                    "shape": c.output_shape,
                    "dtype": c.output_dtype,
                    **dict(zip(STAT_NAMES, numbers, strict=True)),
                    **c.watched,
                    "hit": hit.get(c.call),
                }
            )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        state = "raised" if self.error is not None else "finished" if self.finished else "stopped"
        where = (
            f"; stopped at {self.stopped_at!r}: {self.reason}" if self.stopped_at is not None else "; no breakpoint hit"
        )
        op = f"; made by {self.operation}" if self.operation is not None else ""
        return f"Debugger({self.lm.name}, {len(self.calls)} calls recorded, {state}{where}{op})"


def debug(
    model: LanguageModel,
    prompt: Any,
    max_new_tokens: int = 0,
    *,
    breakpoints: Any = None,
    watch: Any = None,
    backward: Any = None,
    seed: int | None = None,
    do_sample: bool = False,
    **generation_kwargs: Any,
) -> Debugger:
    """Run `model` on `prompt` (generating `max_new_tokens`) and stop at the first call where a
    breakpoint holds, or where the forward raises (post-mortem: the error is kept, not raised).
    `watch` records values per call as it goes; `backward` (a target token, or fn(logits) -> loss)
    adds the backward pass's gradients per module."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(
            "debug takes an lw.LanguageModel (lw.load_model(...) or lw.LanguageModel(module, tokenizer)); "
            f"got {type(model).__name__}"
        )
    ids = prompt_ids(model, prompt)
    if ids.dim() != 1:
        raise InputError("debug runs one prompt: give a string, a chat message list or one list of token ids")
    checks.integer(max_new_tokens, "max_new_tokens", low=0)
    checks.flag(do_sample, "do_sample")
    if seed is None and do_sample:  # drawn once: every replay of the run samples the same tokens
        seed = random.SystemRandom().randint(0, SEED_MAX)
    generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, **generation_kwargs}
    if backward is not None:
        if max_new_tokens:
            raise InputError("backward runs on the prompt's forward: leave max_new_tokens at 0")
        if not callable(backward):
            from ..analysis.targets import first_token_id

            backward = first_token_id(model.tokenizer, backward, "backward's target", [], model.facts.vocab_size)
    return Debugger(model, ids, generation, checked_breakpoints(breakpoints), _watches(watch), backward)


__all__ = ["Breakpoint", "Debugger", "debug"]


# A module call's recording: its hook, the output's statistics and checks, the timeline entry
# (benchmarks/bench_debug.py: 396 calls add about 0.07 s to SmolLM2's 256-token forward on 2 cores)
RECORD_CALL_S = 150e-6
# and per output element read by the statistics
RECORD_ELEMENT_S = 0.3e-9


@plans(debug)
def plan_debug(
    model,
    prompt,
    max_new_tokens=0,
    *,
    breakpoints=None,
    watch=None,
    backward=None,
    seed=None,
    do_sample=False,
    **generation_kwargs,
) -> Plan:
    """lw.debug's work: the recording run (the prompt, then one token a step), every module call
    timed and its output's statistics kept, with the backward's calls too when asked."""
    if not isinstance(model, LanguageModel):
        raise WrongTypeError(f"debug takes an lw.LanguageModel; got {type(model).__name__}")
    T = len(prompt_ids(model, prompt))
    calls = len(modules_of(model.model))
    per_token = calls * model.facts.hidden_size * RECORD_ELEMENT_S
    work = [
        Work("the prompt, recorded", 1, 1, T, grad=backward is not None, extra_s=calls * RECORD_CALL_S + per_token * T)
    ]
    if max_new_tokens > 1:
        steps = calls * RECORD_CALL_S + per_token
        work.append(
            Work("one token a step, recorded", max_new_tokens - 1, 1, 1, past=T + max_new_tokens // 2, extra_s=steps)
        )
    return Plan(model, work, kept_bytes=kv_bytes(model) * (T + max_new_tokens) if max_new_tokens else 0)
