"""`ModelCard`: a model's facts (architecture, layers, heads, context, dtype) inline."""

from __future__ import annotations

import anywidget
import traitlets

from ..errors import WrongTypeError
from ..models import LanguageModel
from ._frontend import StaticFallback, bundle


class ModelCard(StaticFallback, anywidget.AnyWidget):
    """Shows what `lw.load_model` returned: `lw.ModelCard(model)`."""

    _esm = bundle("model_card")
    _css = bundle("model_card", ".css")

    facts = traitlets.Dict(help="the model's facts (LanguageModel.facts as a dict)").tag(sync=True)
    source = traitlets.Dict(help="where the weights came from (name, path, revision, hash)").tag(sync=True)

    def __init__(self, model: LanguageModel, **kwargs):
        if not isinstance(model, LanguageModel):
            raise WrongTypeError(
                f"ModelCard takes a LanguageModel (from lw.load_model or lw.LanguageModel(model, tokenizer)), "
                f"got {type(model).__name__}."
            )
        source = {k: str(v) for k, v in model.source.items()}
        super().__init__(facts=model.facts.to_dict(), source=source, **kwargs)

    def static_text(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.facts.items()]
        return "\n".join(lines)
