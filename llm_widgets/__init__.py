"""llm-widgets: Jupyter widgets for seeing inside language models and changing what they do.

    import llm_widgets as lw
    model = lw.load_model("smollm2-135m")
    lw.ModelCard(model)
"""

__version__ = "0.1.0"  # before the imports: the run records read it

from .models import BUNDLED_MODELS, LanguageModel, ModelFacts, load_model
from .trace import AblateHead, GradientMonitor, GradientWarning, ScaleAttention, Trace, TrainingStopped, replay

_WIDGETS = {"AttentionEditor", "AttentionView", "AttributionView", "ModelCard"}

__all__ = ["AblateHead", "BUNDLED_MODELS", "GradientMonitor", "GradientWarning", "LanguageModel", "ModelFacts",
           "ScaleAttention", "Trace", "TrainingStopped", "load_model", "replay", "__version__", *sorted(_WIDGETS)]


def __getattr__(name: str):
    # Widgets load their built front end when their class is defined: import
    # them on first use, so the model and trace layers work without a JS build.
    if name in _WIDGETS:
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'llm_widgets' has no attribute {name!r}")
