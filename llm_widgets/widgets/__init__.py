"""Widgets: anywidget classes that show a model or a trace in the notebook."""

from .attention_editor import AttentionEditor
from .attention_view import AttentionView
from .attribution_view import AttributionView
from .model_card import ModelCard

__all__ = ["AttentionEditor", "AttentionView", "AttributionView", "ModelCard"]
