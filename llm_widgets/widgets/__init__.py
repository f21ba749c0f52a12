"""Widgets: one anywidget view per result object, answering the front end's requests."""

from .attention_editor import AttentionEditor
from .attention_view import AttentionView
from .attribution_view import AttributionView
from .gradient_monitor_view import GradientMonitorView
from .matrix_views import CompareView, LensView, PatchingView
from .model_card import ModelCard
from .profile_view import ProfileView

__all__ = [
    "AttentionEditor",
    "AttentionView",
    "AttributionView",
    "CompareView",
    "GradientMonitorView",
    "LensView",
    "ModelCard",
    "PatchingView",
    "ProfileView",
]
