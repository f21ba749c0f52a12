"""Training instruments: per-group gradient health, alerts and steering, and the Trainer callback.

monitor = GradientMonitor(model)
loss.backward(); monitor.step(loss=loss); optimizer.step()
"""

from .alerts import GradientWarning, TrainingStopped
from .monitor import GradientMonitor
from .step_profile import StepProfile, profile_step

__all__ = ["GradientMonitor", "GradientWarning", "StepProfile", "TrainingStopped", "profile_step"]
