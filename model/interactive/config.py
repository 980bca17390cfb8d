"""Inputs and results of `learn.learn_class` (no torch here: a GUI reads the defaults without loading it)."""

from dataclasses import dataclass, field

import numpy as np

from ..data.augment import AugmentConfig, learn, scenes
from ..training.progress import RunState


@dataclass
class Example:
    """One painted image: `instances` holds k > 0 on instance k of the class and 0 elsewhere.

    What the unpainted pixels are: with `complete` (every instance of the step's classes on this image
    is painted), none of the step's classes. Otherwise (the default: people paint a few instances
    first) they are unknown, except what is known to be background: the `background` the user
    painted ("not this class"), a thin band around each painted thing instance (the user painted the
    instance whole, so just outside it is not that instance; `examples.known_background`), and what
    the model already holds confidently for an old class.
    """

    image: np.ndarray  # [H,W], [H,W,3|4] or [3,H,W], uint8 or float in 0..255
    instances: np.ndarray  # [H,W] integers
    background: np.ndarray | None = None  # [H,W] bool, or None
    # For a step of several classes: instance id -> index of its class in the step (None: all the first).
    instance_classes: dict[int, int] | None = None
    complete: bool = False  # every instance on the image is painted: the rest is background

    @property
    def partial(self) -> bool:
        """Unpainted pixels are unknown (but for the known background)."""
        return not self.complete


@dataclass
class NewClass:
    """One class of a step to learn, with its painted examples."""

    name: str
    is_thing: bool
    examples: list[Example]
    color: tuple[int, int, int] | None = None  # None: a colour unlike every class the model has


LEARNERS = ("dense", "prompts", "adaptive")


@dataclass(frozen=True)
class LearnConfig:
    """How Learn trains. learner "dense": a dense step (a per-pixel head on the frozen features; finds any
    number of instances and learns from partial painting); "prompts": the published ECLIPSE prompt step;
    "adaptive": a prompt step whose queries start, per image, at the peaks of a per-step scorer
    (`model.network.adaptive_queries`)."""

    learner: str = "dense"
    iterations: int = 300
    batch_size: int = 2
    lr: float = 3e-3
    clip_norm: float = 1.0
    num_prompts: int = 10  # prompts only
    num_points: int = 3136  # prompts and adaptive: points per mask in the losses
    adaptive_queries: int = 100  # adaptive only: queries per image (the most instances it can find)
    # prompts and adaptive: the set losses on every decoder layer's prediction (else the last only)
    deep_supervision: bool = True
    # prompts and adaptive: old query groups keep their own no-object verdict under logit manipulation
    # (`manipulate_logits`), so queries the base model rejected stay rejected; False: as published.
    # Tuning split (coins, crowded, scenes horse, ihc): PQ the same or higher, and the adaptive step on
    # coins kept 95.5% of unrelated images' old-class pixels (worst image 51.9%) against 90.8% (31.6%).
    old_groups_keep_no_object: bool = True
    # prompts and adaptive: the step's segments are laid over what the model predicted before it, which
    # stays as it was elsewhere, taking old pixels by the dense step's claim rule (`foreign_ceiling`;
    # `QueryGroup.lays_over_previous`). False: merged with the old queries as published, where a step's
    # class head firing on old queries removes their segments even where the step puts none (held-out
    # ihc painted few, adaptive: 1.3% of one unrelated image's old-class pixels kept while the step
    # claimed 0.0% of the pixels).
    lay_over_previous: bool = True
    dense_hidden: int = 32  # dense only: channels of the head at stride 4
    # Dense only: channels of the head's full-resolution path (0 = none: the stride-4 logits, upsampled).
    # Measured on the tuning split over 3 seeds, 16 channels with the image's filter bank gave the same PQ
    # (coins 96.4 both, retina 81.2 vs 81.7, crowded 51.0 vs 55.4) at 1.8x the training time: off.
    dense_fine: int = 0
    dense_crop: int = 128  # dense only: each sample trains on a random window of this side (0 = whole)
    dense_filters: bool = True  # dense only: the full-resolution path reads a filter bank of the image
    # Dense only: trees of the pixel stage, a random forest fitted after the head on the pixels' filter bank
    # and the head's outputs (0 = none; see model.network.pixel_stage). Chosen on the tuning split.
    dense_forest_trees: int = 100
    # Dense only: pixels the pixel stage's forest is fitted on, at most, per image: of each class, and of the
    # known background. 2500 / 5000 was measured against these (tuning split): seed 0 coins 95.1 / 85.7 /
    # 89.0 -> 96.4 / 96.2 / 96.5 (full / partial / few), but seed 1 coins 95.5 -> 86.1, ihc partial nuclei
    # 32.0 -> 15.5 (ihc few 57.2 -> 65.0, retina 92.7 -> 94.6): within the seeds' spread, not kept.
    dense_forest_positives: int = 1000
    dense_forest_negatives: int = 2000
    # Dense only: of each of those samples, the share drawn within 3 pixels of another known label, where
    # a forest's boundary errors are (a uniform sample holds few such pixels); the forest's share of the
    # blend is judged on the uniform rest. Tuning split, 3 seeds (scenes 2), 0 -> 0.5: SQ coins 95.4 ->
    # 96.3, ihc nuclei 86.9 -> 87.7, retina IoU 93.1 -> 93.8; PQ summed over 18 classes +5.9, lower on
    # coins partial 93.6 -> 91.6 and ihc partial nuclei 39.3 -> 37.7 (docs/learn_experiments.md).
    dense_forest_boundary: float = 0.5
    # Dense only: the forest's share of the blend for stuff classes where the base model recognises
    # little of the painted images (holds at most `dense_stuff_share_below` of their pixels), set
    # rather than chosen on the painting (None: always chosen, as things' shares are). There the frozen
    # features say little and the head learns a stuff class painted as one region as that region: it
    # predicts even squares of it held out of its training as if known, so the painting cannot judge it,
    # while on other images the forest was better in every tuning run (ihc gland painted in part: head
    # 57.8-74.6, forest 88.9-90.8; retina partial 0.0 vs 51.5). Where the base knows the images (the
    # scenes) the head generalises: sand 86.1 chosen vs 71.2 forest alone (README: Learn, measured).
    dense_stuff_share: float | None = 1.0
    dense_stuff_share_below: float = 0.15
    # Dense only: the frozen maps the head reads (see model.network.dense_head.DENSE_INPUTS).
    dense_inputs: tuple[str, ...] = ("res2", "res3", "res4", "res5", "mask", "mem32", "mem16", "mem8")
    max_context: int = 4  # context images used as negatives (of those given), evenly spread
    # Dense only, post-processing (see InstanceRule; chosen on the tuning split of learn_quality.py):
    foreign_ceiling: float = 0.35
    snap_iou: float = 0.5
    # dense and adaptive: segments below this share of the smallest painted instance go
    min_area_fraction: float = 0.5
    # A thing region above `weak_detect` is cut at `weak_relative` x its own peak probability (between
    # `weak_detect` and the foreground threshold, which with 0.5 it never reaches): instances unlike the
    # painted ones come out less sure (InstanceRule.detect; 1.0 = off). Tuning split, one run each: ihc
    # partial nuclei 43.7 -> 63.9, scene things mean 19.4 -> 22.3, ihc nuclei 64.9 -> 62.1, ihc few
    # nuclei 58.7 -> 55.2, the other cases within 0.5.
    weak_detect: float = 0.3
    weak_relative: float = 0.5
    augment_variants: int = 4
    # Painted images larger than this (either side) train as crops of this size around the painting.
    max_side: int = 512
    seed: int = 0
    augment: AugmentConfig = field(default_factory=learn)  # scale, every rotation and flip, mild colour jitter

    def __post_init__(self) -> None:
        if self.learner not in LEARNERS:
            raise ValueError(f"unknown learner {self.learner!r}; choose from {list(LEARNERS)}")
        if not (0.0 < self.weak_detect <= 1.0 and 0.0 < self.weak_relative <= 1.0):
            raise ValueError(f"weak_detect and weak_relative must lie in (0, 1], got {self.weak_detect}, "
                             f"{self.weak_relative}")
        if self.dense_forest_positives < 1 or self.dense_forest_negatives < 1:
            raise ValueError(f"the pixel stage needs at least one pixel of each kind, got {self.dense_forest_positives}"
                             f" and {self.dense_forest_negatives}")
        if not 0.0 <= self.dense_forest_boundary <= 1.0:
            raise ValueError(f"dense_forest_boundary is a share of the sample, in [0, 1], got {self.dense_forest_boundary}")
        if self.dense_stuff_share is not None and not 0.0 <= self.dense_stuff_share <= 1.0:
            raise ValueError(f"dense_stuff_share must lie in [0, 1] or be None, got {self.dense_stuff_share}")
        if not 0.0 <= self.dense_stuff_share_below <= 1.0:
            raise ValueError(f"dense_stuff_share_below must lie in [0, 1], got {self.dense_stuff_share_below}")
        if self.adaptive_queries < 1:
            raise ValueError(f"adaptive_queries must be at least 1, got {self.adaptive_queries}")
        if self.dense_crop < 0 or self.dense_crop % 32:
            raise ValueError(f"dense_crop must be 0 or a positive multiple of 32, got {self.dense_crop}")

    @staticmethod
    def for_learner(learner: str, **changes) -> "LearnConfig":
        """The settings measured for a learner (`LEARNERS`), with `changes`."""
        if learner not in LEARNERS:
            raise ValueError(f"unknown learner {learner!r}; choose from {list(LEARNERS)}")
        if learner == "prompts":
            return LearnConfig.prompts(**changes)
        return LearnConfig.adaptive(**changes) if learner == "adaptive" else LearnConfig(**changes)

    @staticmethod
    def prompts(**changes) -> "LearnConfig":
        """The published prompt step with the settings measured for it (benchmarks/learn_speed.py: three
        images overfit, so PQ peaks early): 100 iterations of batch 4 at lr 3e-3, clipping at 0.01, the
        scenes' augmentation."""
        settings = dict(learner="prompts", iterations=100, batch_size=4, lr=3e-3, clip_norm=0.01, augment=scenes())
        return LearnConfig(**(settings | changes))

    @staticmethod
    def adaptive(**changes) -> "LearnConfig":
        """The adaptive prompt step: the prompt step's settings, but 200 iterations with the set losses on
        the last decoder layer only (tuning split, coins: 72.1 PQ in 95 s, against 60.9 in 236 s with every
        layer's losses and 26.4 after 100 iterations; 400 iterations: 51.0, duplicates kept)."""
        settings = {"learner": "adaptive", "iterations": 200, "deep_supervision": False}
        return LearnConfig.prompts(**(settings | changes))


@dataclass
class LearnResult:
    state: RunState  # DONE or CANCELLED (a failure raises)
    class_id: int | None  # the step's first class
    delta: float | None
    seconds: float
    losses: list[float]
    painted: "PaintedImages | None"  # what the step changed on the painted images, outside the painting
    delta_table: list[dict] = field(default_factory=list)
    others: "OtherImages | None" = None  # what the step changed on the other open images given as context
    class_ids: list[int] = field(default_factory=list)  # every class of the step
    refined: bool = False  # the newest step retrained (warm start), not a new step
    # A dense step's pixel stage: per class, the forest's share of the blend with the head (empty: no stage;
    # all zero: the head alone, no forest kept).
    forest_share: list[float] = field(default_factory=list)
    # The model's results, after the step, of the images Learn read (painted and context, as read), keyed
    # by `examples.image_digest`: made anyway for the thresholds and reports, so a viewer need not
    # predict those images again.
    predictions: dict = field(default_factory=dict, repr=False)
    learner: str = "dense"  # how the step was learned (`LearnConfig.learner`)


@dataclass(frozen=True)
class PaintedImages:
    """What a step changed on the images it was taught on, outside the painted instances (where the
    painting itself says what should be there)."""

    images: int
    kept: float  # share of those pixels whose label held (a pixel the new classes took counts as changed)
    claimed: float  # share of those pixels the new classes took


@dataclass(frozen=True)
class OtherImages:
    """What a step changed on images that were not painted (they may show the new class)."""

    images: int
    kept: float  # of the pixels an old class held, the share that still holds the same class
    claimed: float  # share of all pixels the new classes took
