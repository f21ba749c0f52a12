"""Figures as files (PNG, SVG, standalone HTML) from the data the widgets show."""

from .attention import AttentionFigure, attention_figure, render, save

__all__ = ["AttentionFigure", "attention_figure", "render", "save"]
