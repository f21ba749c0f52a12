"""Analyses on top of the trace engine, one module per job.

    trace.attribute(" Paris", contrast=" London")   # attribution.py: which input tokens drove an output
"""

from .attribution import METHODS, Attribution, attribute

__all__ = ["METHODS", "Attribution", "attribute"]
