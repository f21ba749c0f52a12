"""Figures as files (PNG, SVG, standalone HTML) from the data the widgets show.

One module per kind of figure, each with `render(figure, fmt) -> bytes` and
`save(figure, path) -> Path`: `attention` (a head's heatmap), `attribution`,
`matrix` (lens, patching, sweeps, comparisons), `profile`, `monitor` (the gradient
monitor's charts), `sample_tree`, `steering` (a steering search) and `scaling` (`Scaling.render`,
declared on the result); `files` picks the format from a suffix, `text` makes token text safe in SVG and HTML.
"""

from . import attention, attribution, files, matrix, monitor, profile, sample_tree, scaling, steering, text
from .attention import AttentionFigure, attention_figure

__all__ = [
    "AttentionFigure",
    "attention",
    "attention_figure",
    "attribution",
    "files",
    "matrix",
    "monitor",
    "profile",
    "sample_tree",
    "scaling",
    "steering",
    "text",
]
