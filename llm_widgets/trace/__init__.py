"""The trace engine: instrumented forward and generate runs (pure torch, no widget code).

tr = model.trace("The capital of France is", max_new_tokens=8, seed=0)
tr.attention(layer=3, head=2)          # probabilities, recomputed on demand
model.trace(prompt, edits=[ScaleAttention(4.0, keys=(0, 4), layers=[5])])
"""

from .batch import TraceBatch
from .direction import Direction
from .edits import AblateHead, AblateMLP, ScaleAttention, SteerResidual, edit_from_dict
from .record import make_record, replay
from .run import fidelity, prompt_ids, run_trace
from .trace import Trace

__all__ = [
    "AblateHead",
    "AblateMLP",
    "Direction",
    "ScaleAttention",
    "SteerResidual",
    "Trace",
    "TraceBatch",
    "edit_from_dict",
    "fidelity",
    "make_record",
    "prompt_ids",
    "replay",
    "run_trace",
]
