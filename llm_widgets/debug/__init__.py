"""The debugger: run a model to the call where something goes wrong, stop there, step back and
forth through its module calls and look at any tensor (`lw.debug`)."""

from .breakpoints import At, Breakpoint, NonFinite, NormJump, Overflow, TargetDrop, When
from .debugger import Debugger, debug
from .timeline import Call, Stats

__all__ = [
    "At",
    "Breakpoint",
    "Call",
    "Debugger",
    "NonFinite",
    "NormJump",
    "Overflow",
    "Stats",
    "TargetDrop",
    "When",
    "debug",
]
