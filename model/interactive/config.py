"""Inputs and results of `learn.learn_class` (no torch here: a GUI reads the defaults without loading it)."""

from dataclasses import dataclass, field

import numpy as np

from ..data.augment import AugmentConfig, scenes
from ..training.progress import RunState


@dataclass
class Example:
    """One painted image: `instances` holds 0 where nothing is said and k > 0 for instance k of the class."""

    image: np.ndarray  # [H,W], [H,W,3|4] or [3,H,W], uint8 or float in 0..255
    instances: np.ndarray  # [H,W] integers


@dataclass(frozen=True)
class LearnConfig:
    iterations: int = 100  # 3 images overfit: PQ on held-out scenes peaks early (benchmarks/learn_speed.py)
    batch_size: int = 4
    lr: float = 3e-3  # prompt tuning, as the scenes scenarios (benchmarks/learn_speed.py)
    num_prompts: int = 10
    augment_variants: int = 8
    num_points: int = 3136
    seed: int = 0
    augment: AugmentConfig = field(default_factory=scenes)  # light: scale, flip, mild colour jitter


@dataclass
class LearnResult:
    state: RunState  # DONE or CANCELLED (a failure raises)
    class_id: int | None
    delta: float | None
    seconds: float
    losses: list[float]
    old_pixels_unchanged: float | None  # outside the new class, share of pixels whose old prediction held
    delta_table: list[dict] = field(default_factory=list)
