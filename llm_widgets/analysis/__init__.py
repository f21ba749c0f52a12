"""Analyses on top of the trace engine, one module per job.

trace.attribute(" Paris", contrast=" London")     # attribution.py: which input tokens drove an output
trace.logit_lens(k=5, target=" Paris")             # lens.py: what each layer would predict
patch(model, clean, corrupted, " Mary", " John")   # patching.py: which layer, position, head makes it
ablation_sweep(trace, " Mary", " John")            # patching.py: every head removed in turn
compare(trace_a, trace_b)                          # compare.py: two runs side by side
diverge(model_a, model_b, prompt)                  # diverge.py: where two models part, and which layer
sample_tree(model, prompt, n=32)                   # samples.py: all the answers sampling gives, as a tree
determinism(model, prompt)                         # determinism.py: the same run again, batched, eager, float32
profile(model, prompt, max_new_tokens=8)           # profile.py: time and memory per module
scaling(model, lengths=[256, 512, 1024])           # scaling.py: how cost grows with length
steering_vector(model, positive, negative, layer=6)  # steering.py: directions to add to the residual stream
search_steering(model, prompt, " blue", " red")    # steering_search.py: the edit that makes it answer so
estimate(patch, model, clean, corrupted, " Mary")    # cost.py: what an expensive call will cost, before it runs
"""

from .attribution import METHODS, Attribution, attribute
from .compare import Comparison, compare
from .cost import Estimate, estimate
from .determinism import Determinism, determinism
from .diverge import Divergence, diverge
from .explain import AttentionExplanation, explain_attention
from .lens import LogitLens, logit_lens
from .patching import SITES, Patching, Sweep, ablation_sweep, patch
from .profile import Profile, profile
from .samples import Node, Samples, SampleTree, sample_tree
from .scaling import Scaling, scaling
from .steering import projections, residual_norm, steering_vector, token_direction
from .steering_search import SteeringSearch, search_steering

__all__ = [
    "METHODS",
    "SITES",
    "AttentionExplanation",
    "Attribution",
    "Comparison",
    "Determinism",
    "Divergence",
    "Estimate",
    "LogitLens",
    "Patching",
    "Node",
    "Profile",
    "SampleTree",
    "Samples",
    "Scaling",
    "SteeringSearch",
    "Sweep",
    "ablation_sweep",
    "attribute",
    "compare",
    "determinism",
    "diverge",
    "estimate",
    "explain_attention",
    "logit_lens",
    "patch",
    "profile",
    "projections",
    "residual_norm",
    "sample_tree",
    "scaling",
    "search_steering",
    "steering_vector",
    "token_direction",
]
