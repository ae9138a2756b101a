"""Learning-rate schedules: change an optimizer's `lr` between epochs (call `step()` once per epoch).

Both work with any object that has an `lr` attribute (the `nn.optim`
optimizers) and save their own position with `state_dict()`.
"""
import math

__all__ = ["StepDecay", "ReduceOnPlateau"]


class StepDecay:
    """Multiply the learning rate by `gamma` every `step_size` epochs.

    lr(epoch) = base_lr * gamma ** (epoch // step_size), where `step()` is
    called at the end of each epoch (epoch counts from 0).
    """

    def __init__(self, optimizer, step_size, gamma=0.5):
        if int(step_size) < 1:
            raise ValueError(f"StepDecay: step_size must be >= 1, got {step_size}")
        if not 0 < gamma <= 1:
            raise ValueError(f"StepDecay: gamma must be in (0, 1], got {gamma}")
        self.optimizer = optimizer
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self):
        """End of an epoch: set and return the learning rate for the next one."""
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)
        return self.optimizer.lr

    def state_dict(self):
        return {"base_lr": self.base_lr, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.base_lr = float(state["base_lr"])
        self.epoch = int(state["epoch"])


class ReduceOnPlateau:
    """Multiply the learning rate by `factor` when a metric stops improving.

    mode "max" for a score such as BLEU (higher is better), "min" for a loss.
    A value improves on the best so far when it beats it by more than
    `threshold` (absolute). After `patience` epochs in a row without
    improvement the rate is reduced (never below `min_lr`) and the count
    starts again.
    """

    def __init__(self, optimizer, factor=0.5, patience=2, mode="max", threshold=0.0, min_lr=0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"ReduceOnPlateau: mode must be 'max' or 'min', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"ReduceOnPlateau: factor must be in (0, 1), got {factor}")
        if int(patience) < 0:
            raise ValueError(f"ReduceOnPlateau: patience must be >= 0, got {patience}")
        self.optimizer = optimizer
        self.factor = float(factor)
        self.patience = int(patience)
        self.mode = mode
        self.threshold = float(threshold)
        self.min_lr = float(min_lr)
        self.best = None
        self.bad_epochs = 0

    def is_better(self, value):
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.threshold
        return value < self.best - self.threshold

    def step(self, value):
        """Record this epoch's metric; returns True when the rate was reduced."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"ReduceOnPlateau: metric must be finite, got {value}")
        if self.is_better(value):
            self.best = value
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return False
        self.bad_epochs = 0
        new_lr = max(self.optimizer.lr * self.factor, self.min_lr)
        reduced = new_lr < self.optimizer.lr
        self.optimizer.lr = new_lr
        return reduced

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
