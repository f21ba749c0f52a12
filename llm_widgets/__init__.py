"""llm-widgets: Jupyter widgets for seeing inside language models and changing what they do.

    import llm_widgets as lw
    model = lw.load_model("smollm2-135m")
    lw.ModelCard(model)

The layers, bottom to top (each imports only those below it; ARCHITECTURE.md):
models, trace (the engine), analysis and training, export, widgets.
"""

from typing import TYPE_CHECKING

from . import export as export  # figures; also draws what results declare (Scaling.render)
from ._version import __version__
from .analysis import (
    AttentionExplanation,
    Attribution,
    Comparison,
    Determinism,
    Divergence,
    Estimate,
    LogitLens,
    Patching,
    Profile,
    SampleTree,
    Scaling,
    SteeringSearch,
    Sweep,
    ablation_sweep,
    compare,
    determinism,
    diverge,
    estimate,
    patch,
    profile,
    projections,
    residual_norm,
    sample_tree,
    scaling,
    search_steering,
    steering_vector,
    token_direction,
)
from .debug import At, Call, Debugger, NonFinite, NormJump, Overflow, Stats, TargetDrop, When, debug
from .errors import InputError, LLMWidgetsError, ModelBusyError, ReplayMismatchError, WrongTypeError
from .models import BUNDLED_MODELS, LanguageModel, ModelFacts, VocabTokenizer, load_model
from .trace import AblateHead, AblateMLP, Direction, ScaleAttention, SteerResidual, Trace, TraceBatch, replay
from .training import GradientMonitor, GradientWarning, Incident, StepProfile, StepReplay, TrainingStopped, profile_step

if TYPE_CHECKING:  # for type checkers and editors; at run time the widgets load on first use (__getattr__)
    from .widgets import (
        AttentionEditor,
        AttentionView,
        AttributionView,
        CompareView,
        DebuggerView,
        DivergenceView,
        ExplanationView,
        GradientMonitorView,
        LensView,
        ModelCard,
        PatchingView,
        ProfileView,
        SampleTreeView,
        SteeringSearchView,
    )

__all__ = [
    "InputError",
    "LLMWidgetsError",
    "ModelBusyError",
    "ReplayMismatchError",
    "WrongTypeError",
    "AblateHead",
    "AblateMLP",
    "At",
    "Attribution",
    "BUNDLED_MODELS",
    "Call",
    "Comparison",
    "Debugger",
    "Determinism",
    "Direction",
    "Divergence",
    "Estimate",
    "GradientMonitor",
    "GradientWarning",
    "Incident",
    "LanguageModel",
    "AttentionExplanation",
    "LogitLens",
    "ModelFacts",
    "NonFinite",
    "NormJump",
    "Overflow",
    "Patching",
    "Profile",
    "SampleTree",
    "ScaleAttention",
    "Scaling",
    "SteerResidual",
    "Stats",
    "SteeringSearch",
    "StepProfile",
    "StepReplay",
    "Sweep",
    "TargetDrop",
    "Trace",
    "TraceBatch",
    "TrainingStopped",
    "VocabTokenizer",
    "When",
    "ablation_sweep",
    "compare",
    "debug",
    "determinism",
    "diverge",
    "estimate",
    "load_model",
    "patch",
    "profile",
    "profile_step",
    "projections",
    "replay",
    "residual_norm",
    "sample_tree",
    "scaling",
    "search_steering",
    "steering_vector",
    "token_direction",
    "__version__",
    "AttentionEditor",
    "AttentionView",
    "AttributionView",
    "CompareView",
    "DebuggerView",
    "DivergenceView",
    "ExplanationView",
    "GradientMonitorView",
    "LensView",
    "ModelCard",
    "PatchingView",
    "ProfileView",
    "SampleTreeView",
    "SteeringSearchView",
]


def __getattr__(name: str):
    # Widgets load their built front end (and anywidget, ipywidgets, bokeh) when their
    # classes are defined: import them on first use, so the models, the engine and the
    # analyses start fast and work without a JS build.
    if name in __all__:  # public, and not imported yet: a widget
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'llm_widgets' has no attribute {name!r}")
