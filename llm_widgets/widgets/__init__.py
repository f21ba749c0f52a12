"""Widgets: one anywidget view per result object, answering the front end's requests.
(`llm_widgets` lists them in its `__all__` and imports them on first use.)"""

from .attention_editor import AttentionEditor as AttentionEditor
from .attention_view import AttentionView as AttentionView
from .attribution_view import AttributionView as AttributionView
from .debugger_view import DebuggerView as DebuggerView
from .explanation_view import ExplanationView as ExplanationView
from .gradient_monitor_view import GradientMonitorView as GradientMonitorView
from .matrix_views import CompareView as CompareView
from .matrix_views import DivergenceView as DivergenceView
from .matrix_views import LensView as LensView
from .matrix_views import PatchingView as PatchingView
from .model_card import ModelCard as ModelCard
from .profile_view import ProfileView as ProfileView
from .sample_tree_view import SampleTreeView as SampleTreeView
from .steering_search_view import SteeringSearchView as SteeringSearchView
