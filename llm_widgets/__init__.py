"""llm-widgets: Jupyter widgets for seeing inside language models and changing what they do.

    import llm_widgets as lw
    model = lw.load_model("smollm2-135m")
    lw.ModelCard(model)
"""

from .models import BUNDLED_MODELS, LanguageModel, ModelFacts, load_model

__version__ = "0.1.0"

_WIDGETS = {"ModelCard"}

__all__ = ["BUNDLED_MODELS", "LanguageModel", "ModelFacts", "load_model", "__version__", *sorted(_WIDGETS)]


def __getattr__(name: str):
    # Widgets load their built front end when their class is defined: import
    # them on first use, so the model and trace layers work without a JS build.
    if name in _WIDGETS:
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'llm_widgets' has no attribute {name!r}")
