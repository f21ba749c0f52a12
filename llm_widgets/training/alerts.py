"""What the gradient monitor raises and warns with."""

KINDS = ("nonfinite", "exploding", "vanishing")


class GradientWarning(UserWarning):
    """A gradient alert: vanishing, exploding or not finite, naming the group and the step."""


class TrainingStopped(RuntimeError):
    """Raised by `monitor.step()` when an alert kind listed in `stop_on` fires."""
