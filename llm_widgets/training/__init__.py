"""Training instruments: per-group gradient health, alerts and steering, the flight recorder's
incidents and their replays, and the Trainer callback.

monitor = GradientMonitor(model)
loss.backward(); monitor.step(loss=loss); optimizer.step()
"""

from .alerts import GradientWarning, TrainingStopped
from .flight import Incident
from .monitor import GradientMonitor
from .replay import StepReplay
from .step_profile import StepProfile, profile_step

__all__ = [
    "GradientMonitor",
    "GradientWarning",
    "Incident",
    "StepProfile",
    "StepReplay",
    "TrainingStopped",
    "profile_step",
]
