"""The cases of benchmarks/learn_quality.py: what is painted, what is held out, what must not change.

Every case gives painted examples (as a user would paint them in napari), held-out images with the
class's true instances, unrelated images that hold no instance of it (where the old classes' output
must stay as it was), and, where there are enough labelled images, a larger training set for the
upper bound. Two splits draw different images: "heldout" (reported) and "tuning" (where settings are
chosen), so nothing reported was tuned on.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.data.crowded import CLASS_NAME as CROWDED_CLASS
from model.data.crowded import background_strokes, crowded_scene
from model.data.scenes import SCENE_CLASSES, generate_scene
from model.interactive.config import Example
from model.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
COINS_LABELS = ROOT / "tests" / "data" / "coins" / "instances.png"  # made and checked by hand: its README
SCENE_THINGS = ("horse", "heart", "arrow", "rocket", "crescent")
SCENE_STUFF = ("sand", "wood")
# Scenes the shipped model never saw (it was trained on seed 0), per split: (painted, evaluated).
SCENE_SEEDS = {"heldout": (101, 102), "tuning": (201, 202)}
CROWDED = {"heldout": (1000, range(2000, 2010), range(1100, 1110)),  # painted image, held out, upper bound
           "tuning": (1001, range(3000, 3010), range(1200, 1210))}
COINS_SPLIT_ROW = 156  # rows 0..155 hold the top two rows of coins, the rest the bottom two


@dataclass
class Case:
    name: str
    class_name: str
    is_thing: bool
    examples: list[Example]
    heldout: list[tuple[np.ndarray, np.ndarray]]  # (image, true instances of the class)
    unrelated: list[np.ndarray]  # images without the class
    upper: list[Example] = field(default_factory=list)  # many labelled images (empty: no upper bound)
    context: list[np.ndarray] = field(default_factory=list)  # other images the user has open, unpainted
    note: str = ""


def _scene_class(name: str) -> int:
    return next(i for i, c in enumerate(SCENE_CLASSES, start=1) if c.name == name)


def _instances(ids: np.ndarray, segments: list[dict], class_id: int) -> np.ndarray:
    out = np.zeros(ids.shape, np.int32)
    for k, s in enumerate([s for s in segments if s["category_id"] == class_id and not s["iscrowd"]], 1):
        out[ids == s["id"]] = k
    return out


def _scenes(seed: int, class_id: int, count: int, with_class: bool, min_area: int = 600, start: int = 0):
    """The first `count` scenes of `seed` that show the class (at least `min_area` pixels of single
    instances, and no crowd segment of it: a cluster of tiny ones is neither an instance to paint nor to
    find) or do not show it at all; returns (image, instances of the class)."""
    out, index = [], start
    while len(out) < count:
        image, ids, segments = generate_scene(index, seed=seed)
        mine = [s for s in segments if s["category_id"] == class_id]
        area = sum(s["area"] for s in mine if not s["iscrowd"])
        crowd = any(s["iscrowd"] for s in mine)
        if (with_class and area >= min_area and not crowd) or (not with_class and not mine):
            out.append((image, _instances(ids, segments, class_id)))
        index += 1
    return out


def unrelated_images(split: str, count: int = 20) -> list[np.ndarray]:
    """Scenes without any of the classes the scene cases teach, and real photos."""
    seed = SCENE_SEEDS[split][1]
    scenes = []
    index = 5000
    taught = {_scene_class(n) for n in SCENE_THINGS + SCENE_STUFF}
    while len(scenes) < count:
        image, ids, segments = generate_scene(index, seed=seed)
        if not {s["category_id"] for s in segments} & taught:
            scenes.append(image)
        index += 1
    return scenes + photos()


def photos() -> list[np.ndarray]:
    """Real photos that show none of the taught classes (scikit-image's bundled ones)."""
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]


def scene_case(name: str, split: str, painted: int = 3, evaluated: int = 40, unrelated=None) -> Case:
    class_id = _scene_class(name)
    thing = SCENE_CLASSES[class_id - 1].isthing
    train_seed, eval_seed = SCENE_SEEDS[split]
    examples = [Example(image, inst) for image, inst in _scenes(train_seed, class_id, painted, True)]
    # Other scenes open beside the painted ones, unpainted (some show the class).
    context = [generate_scene(index, seed=train_seed)[0] for index in range(40_000, 40_010)]
    upper = [Example(image, inst) for image, inst in _scenes(train_seed, class_id, 30, True, start=20_000)]
    heldout = _scenes(eval_seed, class_id, evaluated, True)
    if unrelated is None:
        unrelated = [img for img, _ in _scenes(eval_seed, class_id, 20, False, start=9000)] + photos()
    return Case(f"scenes {name}", name, thing, examples, heldout, unrelated, upper, context,
                f"{painted} painted scenes (seed {train_seed}), {evaluated} held out (seed {eval_seed}), "
                "10 unpainted scenes open beside them")


def crowded_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    painted, held, upper = CROWDED[split]
    image, instances = crowded_scene(painted)
    heldout = [crowded_scene(i) for i in held]
    upper_examples = [Example(*crowded_scene(i)) for i in upper]
    keep = np.unique(instances)[1:6]  # five instances, as a user paints a few
    few = np.where(np.isin(instances, keep), instances, 0)
    strokes = background_strokes(instances, count=5, seed=painted)
    context = [crowded_scene(i)[0] for i in range(painted + 100, painted + 103)]  # open, unpainted
    return [
        Case("crowded", CROWDED_CLASS, True, [Example(image, instances)], heldout, unrelated, upper_examples,
             context, f"one image painted completely ({instances.max()} instances), {len(heldout)} held out, "
             "3 unpainted crowded images open beside it"),
        Case("crowded partial", CROWDED_CLASS, True, [Example(image, few, strokes)], heldout, unrelated,
             upper_examples, context, "5 instances + 5 background strokes on one image, 3 unpainted open"),
    ]


def coins_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    from skimage import data

    image = data.coins()
    labels = read_image(COINS_LABELS).astype(np.int32)
    top = (image[:COINS_SPLIT_ROW], labels[:COINS_SPLIT_ROW])
    bottom = (image[COINS_SPLIT_ROW:], labels[COINS_SPLIT_ROW:])
    (painted_image, painted), held = (top, bottom) if split == "heldout" else (bottom, top)
    keep = np.unique(painted)[1:5]
    few = np.where(np.isin(painted, keep), painted, 0)
    strokes = background_strokes(painted, count=4, seed=3)
    side = "top" if split == "heldout" else "bottom"
    return [
        Case("coins", "real coin", True, [Example(painted_image, painted)], [held], unrelated, [], [],
             f"the {side} two rows of coins painted ({len(np.unique(painted)) - 1} coins), the other two held out"),
        Case("coins partial", "real coin", True, [Example(painted_image, few, strokes)], [held], unrelated, [], [],
             "4 coins + 4 background strokes"),
    ]


CASE_NAMES = tuple(f"scenes {n}" for n in SCENE_THINGS + SCENE_STUFF) + ("crowded", "crowded partial", "coins",
                                                                         "coins partial")


def build_cases(split: str, names=CASE_NAMES) -> list[Case]:
    unknown = sorted(set(names) - set(CASE_NAMES))
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASE_NAMES)}")
    unrelated = unrelated_images(split)
    cases = [scene_case(n.split(" ", 1)[1], split) for n in names if n.startswith("scenes ")]
    if any(n.startswith("crowded") for n in names):
        cases += crowded_cases(split, unrelated)
    if any(n.startswith("coins") for n in names):
        cases += coins_cases(split, unrelated)
    return [c for c in cases if c.name in names]
