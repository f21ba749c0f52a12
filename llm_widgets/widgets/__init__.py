"""Widgets: anywidget classes that show a model or a trace in the notebook."""

from .model_card import ModelCard

__all__ = ["ModelCard"]
