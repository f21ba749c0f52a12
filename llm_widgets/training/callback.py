"""The GradientMonitor as a transformers TrainerCallback (imported only when asked for)."""

from __future__ import annotations

from transformers import TrainerCallback

from .alerts import TrainingStopped


class MonitorCallback(TrainerCallback):
    """Reads gradients in `on_pre_optimizer_step` (after the Trainer's own clipping, if
    max_grad_norm is set: use max_grad_norm=0 and monitor.steer(..., clip=...) to see and
    clip them per group), the update in `on_optimizer_step`, loss and lr in `on_log`."""

    def __init__(self, monitor):  # a GradientMonitor (monitor.py imports this module, not the reverse)
        self.monitor = monitor

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        lr = optimizer.param_groups[0].get("lr") if optimizer is not None else None
        try:
            self.monitor.step(lr=lr)
        except TrainingStopped:
            control.should_training_stop = True
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.monitor.after_optimizer_step()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.monitor.log(loss=logs["loss"], lr=logs.get("learning_rate"))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.monitor.flush()
        return control
