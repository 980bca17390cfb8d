"""What a run reports while it goes and how it ended (no torch here, so a GUI can use it unloaded)."""

from dataclasses import dataclass
from enum import StrEnum


class RunState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class Progress:
    """A typed update for the caller (terminal progress bar, napari widget)."""

    step: int
    iteration: int
    total: int
    loss: float
    lr: float
    seconds: float  # since the run started, including the time before a resume
    state: RunState
    message: str = ""

    @property
    def eta_seconds(self) -> float:
        done = max(self.iteration, 1)
        return self.seconds / done * (self.total - self.iteration)
