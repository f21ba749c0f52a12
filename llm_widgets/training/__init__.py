"""Training instruments: per-group gradient health, alerts and steering, and the Trainer callback.

    monitor = GradientMonitor(model)
    loss.backward(); monitor.step(loss=loss); optimizer.step()
"""

from .alerts import GradientWarning, TrainingStopped
from .monitor import GradientMonitor

__all__ = ["GradientMonitor", "GradientWarning", "TrainingStopped"]
