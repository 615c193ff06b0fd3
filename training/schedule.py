"""The paper's learning-rate schedule with early stopping (Wang et al. 2020), with a state to save and resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PlateauSchedule:
    """The paper's learning-rate drops and early stopping on validation accuracy (Wang et al. 2020).

    ``update(acc)`` after every epoch: the epoch improves when ``acc > best + min_delta``; after ``patience``
    epochs in a row without improvement the rate is multiplied by ``factor`` and the count restarts; training
    stops as soon as the rate reaches ``min_lr_ratio`` times the initial one (1e-4 -> 1e-5 -> stop at 1e-6).
    The authors' code instead trains on at 1e-6 until one more plateau (and, by float rounding, at 1e-7).
    """

    initial_lr: float
    patience: int = 5
    min_delta: float = 0.001
    factor: float = 0.1
    min_lr_ratio: float = 0.01
    lr: float = field(init=False)
    best: float | None = None
    bad_epochs: int = 0
    stopped: bool = False

    def __post_init__(self) -> None:
        self.lr = self.initial_lr

    def update(self, accuracy: float) -> bool:
        """Record one epoch's validation accuracy; True when it improved."""
        if self.stopped:
            raise RuntimeError("the schedule has stopped")
        if self.best is None or accuracy > self.best + self.min_delta:
            self.best = accuracy
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.lr *= self.factor
            self.bad_epochs = 0
            # Relative slack: 1e-4 * 0.1 * 0.1 is 1.0000000000000002e-06 in floating point.
            if self.lr <= self.initial_lr * self.min_lr_ratio * (1 + 1e-9):
                self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_lr": self.initial_lr,
            "lr": self.lr,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(state["initial_lr"] - self.initial_lr) > 1e-12 * self.initial_lr:
            raise ValueError(f"saved schedule starts at lr {state['initial_lr']}, this run at {self.initial_lr}")
        self.lr, self.best = float(state["lr"]), state["best"]
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])
