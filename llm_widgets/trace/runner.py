"""What every traced run shares: the checked request, the model held for the run, and the
shape of a runner (one per family of model: decoder-only, encoder-decoder, plain PyTorch).

`run.py` puts them together: check the request, let the family's runner check what is
its own and build its run state, hold the model, instrument it, execute, and turn what
ran into traces. A runner holds only what differs between families.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..models import LanguageModel
from ..models.devices import check_runnable, input_device
from ..models.language_model import ModelFacts
from ..models.modes import model_mode
from .locking import exclusive
from .trace import Trace

# the keys of `Request.generation` that are ours; the rest go to the model's generate
OWN_SETTINGS = ("max_new_tokens", "do_sample", "seed", "decoder_prompt_ids")  # (not generate's own)


@contextmanager
def held(model: torch.nn.Module, *, seed: int | None = None, grad: bool = False) -> Iterator[None]:
    """The model held by this thread for one run: no other run of ours meanwhile (`exclusive`),
    other threads' forwards waiting at its gate, in eval mode, gradients off (on with `grad`: of the
    inputs, parameters untouched); with a `seed`, torch's random generator forked and seeded (only
    then: a run without one draws no random number, and a generator restored at its end would undo
    another thread's torch.manual_seed meanwhile). Everything restored after, on errors too."""
    check_runnable(model)
    device = input_device(model)
    with (
        exclusive(model),
        model_mode(model, training=False),
        torch.enable_grad() if grad else torch.no_grad(),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None),
    ):
        if seed is not None:
            torch.manual_seed(seed)
        yield
        if model.training:  # (eval was set above; model.train() called on another thread meanwhile)
            raise InputError(
                f"{type(model).__name__} was switched to training mode during this run (model.train() on "
                f"another thread?): its dropout may have changed the results, so they are not returned. Run it "
                f"again when the model's mode stays put."
            )


SAMPLING_SETTINGS = {"temperature", "top_k", "top_p", "min_p", "typical_p"}  # what a greedy run ignores


def refuse_unused_sampling(settings: dict, do_sample: bool) -> None:
    """Sampling settings on a greedy run would be ignored without a word: refused, saying why."""
    given = sorted(set(settings) & SAMPLING_SETTINGS)
    if given and not do_sample:
        raise InputError(
            f"{', '.join(given)} shape{'s' if len(given) == 1 else ''} sampling, and this run is greedy: add "
            f"do_sample=True, or leave {'it' if len(given) == 1 else 'them'} out"
        )


@dataclass(frozen=True)
class Request:
    """The checked arguments of one `model.trace` call."""

    lm: LanguageModel
    facts: ModelFacts  # asked once: the facts count every parameter
    rows: list[torch.Tensor]  # each prompt's token ids, 1-D
    is_batch: bool  # several prompts given (a TraceBatch comes back), not one
    generation: dict  # max_new_tokens, do_sample, seed and generate's settings: what the record keeps
    edits: Any  # as given: each runner validates them against its own stacks
    keep_logits: bool
    capture: bool
    capture_device: Any
    capture_dtype: torch.dtype | None
    profile: bool

    @property
    def max_new_tokens(self) -> int:
        return self.generation["max_new_tokens"]

    @property
    def settings(self) -> dict:
        """The generation settings that go to the model's generate."""
        return {k: v for k, v in self.generation.items() if k not in OWN_SETTINGS}


class Runner(ABC):
    """One family's traced run. The constructor checks what only this family refuses and
    builds the run state; `instrumented` installs the capture (removed on exit);
    `execute` runs the model (inside `held` and `instrumented`); `traces` makes the result."""

    padding_side = "right"  # where a batch's padding went, for TraceBatch
    run: Any  # the run state its constructor builds (capture.RunState, or plain.py's hooks)

    def __init__(self, request: Request):
        self.request = request
        self.lm = request.lm
        self.model = request.lm.model

    @abstractmethod
    def instrumented(self) -> AbstractContextManager[Any]: ...

    @abstractmethod
    def execute(self) -> None: ...

    @abstractmethod
    def traces(self) -> list[Trace]: ...

    @property
    def spared_rows(self) -> bool:
        """Whether factor-0 edits left some rows unedited (masks.warn_spared_rows says so): each
        runner's run state (`self.run`) counts them."""
        return self.run.fully_masked_rows
