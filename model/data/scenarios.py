"""Continual scenarios: class orders, step splits and the published training settings of each.

A Scenario maps between DATASET category ids (the ids in the files: ADE 1..150, COCO 1..200 with gaps,
scenes 1..K) and LEARNING ids (1-based in learning order, 0 = void), and splits the learning order into a
base step (t = 0) and `num_steps` continual steps of `increment` classes each.

Every step has exactly `increment` classes: num_base + num_steps * increment == len(class_order), with
num_steps >= 1. (A smaller last step is not allowed; every published split divides exactly, and the
scene builder `scene_scenario` drops trailing categories that do not fill a whole step instead.)
"""

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from ..settings import LossConfig
from .augment import AugmentConfig, ade_panoptic, ade_semantic, coco_panoptic, scenes
from .categories import COCO_83_ORDER, ade20k_categories, coco_panoptic_categories

DATASETS = ("ade20k", "coco", "scenes")
TASKS = ("panoptic", "semantic")
SCENE_CLASS_COUNT = 24  # scene categories the named "scenes-*" scenarios are defined for (ids 1..24)


@dataclass(frozen=True)
class Scenario:
    """One continual-learning protocol plus the paper's training settings for it: the one place where
    iterations, batch, learning rates, augmentation and losses of a scenario are set.

    `deltas` holds one logit-manipulation scale per query group: index 0 = base queries, index t = the
    prompt set of step t (so len(deltas) == num_steps + 1)."""

    name: str
    dataset: str
    task: str
    class_order: tuple[int, ...]
    num_base: int
    increment: int
    num_queries: int
    prompts_per_step: int
    iterations_base: int
    iterations_per_step: int
    batch_size: int
    base_lr: float
    step_lr: float
    backbone: str
    deltas: tuple[float, ...]
    augment: AugmentConfig = AugmentConfig()  # training augmentation of every step (the identity by default)
    loss: LossConfig = LossConfig()
    test_size: tuple[int, int] | None = None  # evaluation resize: (short side, max long side); None: native

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ sizes

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def num_steps(self) -> int:
        """Continual steps after the base step."""
        return (self.num_classes - self.num_base) // self.increment

    @property
    def metric(self) -> str:
        """"pq" for panoptic scenarios, "miou" for semantic ones."""
        return "pq" if self.task == "panoptic" else "miou"

    def first_steps(self, steps: int) -> "Scenario":
        """The same protocol stopped after `steps` continual steps (a quick check of a long scenario):
        later classes are left out, so their pixels are void when evaluating."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps:
            raise ValueError(f"{self.name}: the number of steps must be a positive int, got {steps!r}")
        if steps >= self.num_steps:
            return self
        used = self.num_base + steps * self.increment
        return replace(self, name=f"{self.name}-first{steps}", class_order=self.class_order[:used],
                       deltas=self.deltas[: steps + 1])

    # ------------------------------------------------------------------ steps

    def _check_step(self, step: int) -> None:
        if not isinstance(step, numbers.Integral) or not 0 <= step <= self.num_steps:
            raise ValueError(f"{self.name}: step must be an int in 0..{self.num_steps}, got {step!r}")

    def step_slice(self, step: int) -> slice:
        """Positions (0-based) in `class_order` of the classes of `step`."""
        self._check_step(step)
        if step == 0:
            return slice(0, self.num_base)
        start = self.num_base + (step - 1) * self.increment
        return slice(start, start + self.increment)

    def step_classes(self, step: int) -> tuple[int, ...]:
        """Dataset ids of the classes learned at `step` (0 = base), in learning order."""
        return self.class_order[self.step_slice(step)]

    def classes_up_to(self, step: int) -> int:
        """K_t: how many classes a model knows after `step`."""
        return self.step_slice(step).stop

    # ------------------------------------------------------------------ id maps

    @cached_property
    def _learning_by_dataset(self) -> dict[int, int]:
        return {d: i + 1 for i, d in enumerate(self.class_order)}

    @property
    def class_of(self) -> dict[int, int]:
        """A fresh dict: dataset id -> learning id."""
        return dict(self._learning_by_dataset)

    def learning_id(self, dataset_id: int) -> int:
        """1-based learning-order id of a dataset category id."""
        try:
            return self._learning_by_dataset[dataset_id]
        except KeyError:
            raise ValueError(f"{self.name}: dataset category id {dataset_id!r} is not in this scenario") from None

    def _check_learning_id(self, learning_id: int) -> None:
        if not isinstance(learning_id, numbers.Integral) or not 1 <= learning_id <= self.num_classes:
            raise ValueError(f"{self.name}: learning id must be in 1..{self.num_classes}, got {learning_id!r}")

    def dataset_id(self, learning_id: int) -> int:
        """Dataset category id of a 1-based learning id."""
        self._check_learning_id(learning_id)
        return self.class_order[learning_id - 1]


def _validate(s: Scenario) -> None:
    """Raises ValueError naming the scenario and the broken rule."""
    where = f"scenario {s.name!r}"
    if not s.name:
        raise ValueError("a scenario needs a non-empty name")
    if s.dataset not in DATASETS:
        raise ValueError(f"{where}: dataset must be one of {DATASETS}, got {s.dataset!r}")
    if s.task not in TASKS:
        raise ValueError(f"{where}: task must be one of {TASKS}, got {s.task!r}")
    if not isinstance(s.class_order, tuple):
        raise TypeError(f"{where}: class_order must be a tuple, got {type(s.class_order).__name__}")
    bad = [c for c in s.class_order if isinstance(c, bool) or not isinstance(c, int) or c < 1]
    if bad:
        raise ValueError(f"{where}: class ids must be positive ints (0 is void), got {bad[:5]}")
    seen: set[int] = set()
    dupes = sorted({c for c in s.class_order if c in seen or seen.add(c)})
    if dupes:
        raise ValueError(f"{where}: class_order repeats ids {dupes[:10]}")
    for field_name in ("num_base", "increment", "num_queries", "prompts_per_step", "iterations_base",
                       "iterations_per_step", "batch_size"):
        value = getattr(s, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {field_name} must be a positive int, got {value!r}")
    if not (s.base_lr > 0 and s.step_lr > 0):
        raise ValueError(f"{where}: learning rates must be > 0, got {s.base_lr}, {s.step_lr}")
    rest = len(s.class_order) - s.num_base
    if rest < s.increment or rest % s.increment:
        raise ValueError(
            f"{where}: {len(s.class_order)} classes do not split into {s.num_base} base classes plus "
            f"k >= 1 steps of {s.increment} (num_base + k * increment must equal the class count)"
        )
    steps = rest // s.increment
    if not isinstance(s.deltas, tuple) or len(s.deltas) != steps + 1:
        raise ValueError(f"{where}: deltas must be a tuple of {steps + 1} values (base + {steps} steps), "
                         f"got {s.deltas!r}")


# ---------------------------------------------------------------------- step data


def _category_id(segment: Mapping[str, Any]) -> int:
    return int(segment["category_id"])


def step_keep_ids(scenario: Scenario, step: int) -> frozenset[int]:
    """Dataset ids whose segments are kept as targets at `step` (its own classes only); every other
    segment is deleted: neither background nor ignore, its pixels just have no target."""
    return frozenset(scenario.step_classes(step))


def select_step_images(
    annotations: Mapping[Any, Sequence[Mapping[str, Any]]], scenario: Scenario, step: int
) -> list:
    """"Overlap" mode: ids of every image with at least one non-crowd segment of a step-`step` class
    (old and future classes may be present too). Order follows `annotations`."""
    keep = step_keep_ids(scenario, step)
    return [
        image_id
        for image_id, segments in annotations.items()
        if any(_category_id(seg) in keep and not seg.get("iscrowd", 0) for seg in segments)
    ]


CLASS_ORDERS = ("given", "random", "descending")


def reorder_classes(scenario: Scenario, how: str, annotations: Mapping[Any, Sequence[Mapping[str, Any]]],
                    seed: int = 0) -> Scenario:
    """The scenario with its classes learned in another order (the step sizes unchanged): "given" (as
    published), "random" (a permutation drawn from `seed`), or "descending" (the classes in more
    training images first, as SimCIS orders them to test robustness; ties keep the given order).
    `annotations`: image id -> segments of the training set. A new order changes the base classes,
    so it needs its own base model."""
    order = list(scenario.class_order)
    if how == "given":
        return scenario
    if how == "random":
        order = [order[i] for i in np.random.default_rng([seed, 4242]).permutation(len(order))]
        label = f"random{seed}"
    elif how == "descending":
        images = {c: 0 for c in order}
        for segments in annotations.values():
            for c in {_category_id(seg) for seg in segments if not seg.get("iscrowd", 0)}:
                if c in images:
                    images[c] += 1
        order = sorted(order, key=lambda c: -images[c])  # stable: ties keep the given order
        label = "descending"
    else:
        raise ValueError(f"unknown class order {how!r}; choose from {list(CLASS_ORDERS)}")
    return replace(scenario, name=f"{scenario.name}-{label}", class_order=tuple(order))


def eval_groups(scenario: Scenario, up_to_step: int | None = None) -> dict[str, list[int]]:
    """Learning ids for the PQ / mIoU summary after `up_to_step` (default: the last step):
    old = base classes, new = classes of steps 1..t, all = both."""
    step = scenario.num_steps if up_to_step is None else up_to_step
    known = scenario.classes_up_to(step)
    old = list(range(1, scenario.num_base + 1))
    new = list(range(scenario.num_base + 1, known + 1))
    return {"old": old, "new": new, "all": old + new}


# ---------------------------------------------------------------------- named scenarios


def _ade_order() -> tuple[int, ...]:
    return tuple(int(c["id"]) for c in ade20k_categories())


def _coco_order() -> tuple[int, ...]:
    """The 83-x order of contiguous ids, as COCO file category ids."""
    file_id = {int(c["contiguous_id"]): int(c["id"]) for c in coco_panoptic_categories()}
    return tuple(file_id[c] for c in COCO_83_ORDER)


def _deltas(first: float, rest: float, steps: int, explicit: tuple | None = None) -> tuple[float, ...]:
    return tuple(explicit) if explicit is not None else (first,) + (rest,) * steps


def _paper(name, dataset, task, order, base, inc, *, queries, prompts, it_base, it_step, batch, step_lr,
           backbone, deltas, augment, test_size) -> Scenario:
    return Scenario(name=name, dataset=dataset, task=task, class_order=order, num_base=base, increment=inc,
                    num_queries=queries, prompts_per_step=prompts, iterations_base=it_base,
                    iterations_per_step=it_step, batch_size=batch, base_lr=1e-4, step_lr=step_lr,
                    backbone=backbone, deltas=deltas, augment=augment, loss=LossConfig(), test_size=test_size)


def _scene_ids_from_module() -> tuple[int, ...]:
    """Category ids of `model.data.scenes.SCENE_CATEGORIES`, or 1..24 when that is not available."""
    try:
        # Lazy: scenes.py may import this module, and this module must import without it.
        from .scenes import SCENE_CATEGORIES
    except ImportError:
        return tuple(range(1, SCENE_CLASS_COUNT + 1))
    ids = []
    for index, cat in enumerate(SCENE_CATEGORIES):
        if isinstance(cat, Mapping) and "id" in cat:
            ids.append(int(cat["id"]))
        elif hasattr(cat, "id"):
            ids.append(int(cat.id))
        else:
            ids.append(index + 1)
    return tuple(ids)


def scene_scenario(
    num_base: int,
    increment: int,
    category_ids: Sequence[int] | None = None,
    num_steps: int | None = None,
    name: str | None = None,
    prompts_per_step: int | None = None,
) -> Scenario:
    """A scenario over generated-scene categories (identity order). `category_ids` default: the ids of
    `scenes.SCENE_CATEGORIES` (fallback 1..24). `num_steps` default: as many whole steps as fit; the
    trailing categories that do not fill a step are left out of the scenario.
    Training settings are ours (not published), sized for a laptop CPU at 256x256: 2,500 base iterations,
    300 per step, batch 4, lr 5e-4 for the whole network (base, fine-tuning, joint) and 3e-3 for prompt
    tuning (the paper also tunes prompts at a higher lr than the base; a sweep on scenes-16-8 at 300
    iterations gave new/old PQ 18.4/64.8 at 2e-3, 23.9/64.9 at 3e-3, 23.1/62.6 at 5e-3); the fixed deltas
    follow the paper's common ADE choice (0.4 base, 0.5 steps). Augmentation: scale jitter, crop/pad back
    to the native size, flip, mild colour (`augment.scenes`); losses on 3,136 points per mask (64x64 mask
    logits) with a 0.1 weight on unmatched queries' no-object target (like Mask2Former's eos_coef), for
    short CPU schedules where most queries otherwise stay on the no-object prior."""
    ids = tuple(category_ids) if category_ids is not None else _scene_ids_from_module()
    if num_steps is None:
        num_steps = (len(ids) - num_base) // increment if increment > 0 else 0
    used = num_base + num_steps * increment
    if num_steps < 1 or used > len(ids):
        raise ValueError(f"scenes {num_base}-{increment}: {len(ids)} categories do not hold {num_base} base "
                         f"classes plus {max(num_steps, 1)} step(s) of {increment}")
    return Scenario(
        name=name or f"scenes-{num_base}-{increment}", dataset="scenes", task="panoptic",
        class_order=ids[:used], num_base=num_base, increment=increment, num_queries=50,
        prompts_per_step=prompts_per_step or 10, iterations_base=2500, iterations_per_step=300,
        batch_size=4, base_lr=5e-4, step_lr=3e-3, backbone="efficientnet_lite0",
        deltas=(0.4,) + (0.5,) * num_steps, augment=scenes(), loss=LossConfig(num_points=3136, no_object_weight=0.1),
    )


def _build_scenarios() -> dict[str, Scenario]:
    ade, coco = _ade_order(), _coco_order()
    out: list[Scenario] = []
    # ADE20K panoptic, R50, batch 8, step LR 5e-4; the deltas are the published final values.
    for base, inc, queries, prompts, it_base, it_step, deltas in (
        (100, 5, 100, 10, 160_000, 12_000, _deltas(0.4, 0.6, 10)),
        (100, 10, 100, 10, 160_000, 16_000, _deltas(0.4, 0.5, 5)),
        (100, 50, 100, 50, 160_000, 80_000, (-0.4, -0.6)),
        (50, 10, 50, 10, 80_000, 24_000, _deltas(0.4, 0.5, 10)),
        (50, 20, 50, 20, 80_000, 32_000, _deltas(0.4, 0.5, 5)),
        (50, 50, 50, 50, 80_000, 120_000, (0.5, -0.4, -0.4)),
    ):
        out.append(_paper(f"ade-panoptic-{base}-{inc}", "ade20k", "panoptic", ade, base, inc, queries=queries,
                          prompts=prompts, it_base=it_base, it_step=it_step, batch=8, step_lr=5e-4,
                          backbone="resnet50", deltas=deltas, augment=ade_panoptic(),
                          test_size=(640, 2560)))
    # ADE20K semantic, R101, batch 16, step LR 1e-3, mIoU.
    for inc, prompts, it_step, deltas in (
        (5, 5, 12_000, _deltas(0.1, 0.8, 10)),
        (10, 10, 24_000, _deltas(0.1, 0.7, 5)),
        (50, 50, 120_000, (0.0, -0.1)),
    ):
        out.append(_paper(f"ade-semantic-100-{inc}", "ade20k", "semantic", ade, 100, inc, queries=100,
                          prompts=prompts, it_base=160_000, it_step=it_step, batch=16, step_lr=1e-3,
                          backbone="resnet101", deltas=deltas, augment=ade_semantic(),
                          test_size=(512, 2048)))
    # COCO panoptic 83-x, R50, batch 16.
    for inc, it_step in ((5, 8_000), (10, 32_000)):
        steps = 50 // inc
        out.append(_paper(f"coco-panoptic-83-{inc}", "coco", "panoptic", coco, 83, inc, queries=100, prompts=10,
                          it_base=240_000, it_step=it_step, batch=16, step_lr=5e-4, backbone="resnet50",
                          deltas=_deltas(0.5, 0.6, steps), augment=coco_panoptic(),
                          test_size=(800, 1333)))
    # Generated scenes over categories 1..24 (fixed here so importing this module never imports scenes.py).
    scene_ids = tuple(range(1, SCENE_CLASS_COUNT + 1))
    for base, inc in ((16, 2), (16, 8), (20, 4)):
        out.append(scene_scenario(base, inc, category_ids=scene_ids))
    return {s.name: s for s in out}


SCENARIOS: dict[str, Scenario] = _build_scenarios()
DEFAULT_SCENE_SCENARIO = "scenes-16-8"  # shares its 16 base classes with scenes-16-2 (one shipped base)

# Short names: "100-5" is ADE panoptic (semantic needs its full name), "83-5" COCO, "16-2" scenes.
ALIASES: dict[str, str] = {
    "-".join(name.split("-")[-2:]): name for name in SCENARIOS if not name.startswith("ade-semantic-")
}


def get_scenario(name: str) -> Scenario:
    """A named scenario, by full name or short alias (case-insensitive)."""
    key = str(name).strip().lower()
    if key in SCENARIOS:
        return SCENARIOS[key]
    if key in ALIASES:
        return SCENARIOS[ALIASES[key]]
    raise ValueError(
        f"unknown scenario {name!r}; valid names: {', '.join(SCENARIOS)}; "
        f"short aliases: {', '.join(f'{a}={n}' for a, n in ALIASES.items())}"
    )


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def scenario_table() -> str:
    """A text table of every named scenario (for the CLI's --list)."""
    header = ("name", "dataset", "task", "base", "inc", "steps", "N", "P", "it base", "it/step", "backbone")
    rows = [header] + [
        (s.name, s.dataset, s.task, str(s.num_base), str(s.increment), str(s.num_steps), str(s.num_queries),
         str(s.prompts_per_step), _k(s.iterations_base), _k(s.iterations_per_step), s.backbone)
        for s in SCENARIOS.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
