"""The cases of benchmarks/learn_quality.py: what is painted, what is held out, what must not change.

Every case teaches one step (one class, or several) from painted examples (as a user would paint them
in napari), and gives held-out images with each class's true instances, unrelated images that hold no
instance of the classes (where the old classes' output must stay as it was), and, where there are
enough labelled images, a larger training set for the upper bound. Two splits draw different images:
"heldout" (reported) and "tuning" (where settings are chosen), so nothing reported was tuned on.

How each case is painted (`Case.painting`): "complete" (every instance on the painted image, the rest
marked as background by the complete flag), "partial" (a few instances and a few background strokes)
or "few" (a few instances and nothing else: what people do first; unpainted pixels are unknown).

Real cases: scikit-image's `coins` photo (24 coins), `immunohistochemistry` (stained tissue: stromal
nuclei as a thing class and the stained epithelium, "gland", as a stuff class, one step of two
classes) and `retina` (the vessels, a thin stuff class), with labels made and checked by hand
(tests/data/*/README.md; scripts/make_real_labels.py).
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
DATA = ROOT / "tests" / "data"  # labels made and checked by hand: the READMEs there
SCENE_THINGS = ("horse", "heart", "arrow", "rocket", "crescent")
SCENE_STUFF = ("sand", "wood")
# Scenes the shipped model never saw (it was trained on seed 0), per split: (painted, evaluated).
SCENE_SEEDS = {"heldout": (101, 102), "tuning": (201, 202)}
CROWDED = {"heldout": (1000, range(2000, 2010), range(1100, 1110)),  # painted image, held out, upper bound
           "tuning": (1001, range(3000, 3010), range(1200, 1210))}
COINS_SPLIT_ROW = 156  # rows 0..155 hold the top two rows of coins, the rest the bottom two
IHC_SPLIT_COLUMN = 256  # the left half (45 stromal nuclei) and the right half (86)
RETINA_WINDOWS = ((200, 500), (760, 500))  # two 512x512 windows inside the fundus (top and bottom)
RETINA_SIDE = 512
PAINTINGS = ("complete", "partial", "few")


@dataclass
class Case:
    name: str
    classes: list[tuple[str, bool]]  # (name, is_thing) of each class of the step
    painted: list[list[Example]]  # per class, its painted examples (instances of that class)
    heldout: list[tuple[np.ndarray, list[np.ndarray]]]  # (image, per class its true instances)
    unrelated: list[np.ndarray]  # images without the classes
    upper: list[list[Example]] = field(default_factory=list)  # many labelled images per class (empty: none)
    context: list[np.ndarray] = field(default_factory=list)  # other images the user has open, unpainted
    painting: str = "complete"  # one of PAINTINGS
    note: str = ""
    real: bool = False

    @property
    def class_names(self) -> list[str]:
        return [c for c, _ in self.classes]


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
    examples = [Example(image, inst, complete=True) for image, inst in _scenes(train_seed, class_id, painted, True)]
    # Other scenes open beside the painted ones, unpainted (some show the class).
    context = [generate_scene(index, seed=train_seed)[0] for index in range(40_000, 40_010)]
    upper = [Example(image, inst, complete=True) for image, inst in _scenes(train_seed, class_id, 30, True, start=20_000)]
    heldout = [(image, [inst]) for image, inst in _scenes(eval_seed, class_id, evaluated, True)]
    if unrelated is None:
        unrelated = [img for img, _ in _scenes(eval_seed, class_id, 20, False, start=9000)] + photos()
    return Case(f"scenes {name}", [(name, thing)], [examples], heldout, unrelated, [upper], context, "complete",
                f"{painted} painted scenes (seed {train_seed}), {evaluated} held out (seed {eval_seed}), "
                "10 unpainted scenes open beside them")


def _few(instances: np.ndarray, count: int, spread: bool = False) -> np.ndarray:
    """`count` instances of an instance map, the others unpainted: the first ones by label, or (`spread`)
    labels evenly spaced over all of them (labels run in raster order, so these lie apart, as a user
    paints a few examples across an image)."""
    ids = np.unique(instances)[1:]
    keep = ids[np.linspace(0, len(ids) - 1, count).round().astype(int)] if spread else ids[:count]
    return np.where(np.isin(instances, keep), instances, 0)


def crowded_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    painted, held, upper = CROWDED[split]
    image, instances = crowded_scene(painted)
    heldout = [(img, [inst]) for img, inst in (crowded_scene(i) for i in held)]
    upper_examples = [Example(*crowded_scene(i), complete=True) for i in upper]
    few = _few(instances, 5)
    strokes = background_strokes(instances, count=5, seed=painted)
    context = [crowded_scene(i)[0] for i in range(painted + 100, painted + 103)]  # open, unpainted
    classes = [(CROWDED_CLASS, True)]
    return [
        Case("crowded", classes, [[Example(image, instances, complete=True)]], heldout, unrelated, [upper_examples],
             context, "complete", f"one image painted completely ({instances.max()} instances), {len(heldout)} "
             "held out, 3 unpainted crowded images open beside it"),
        Case("crowded partial", classes, [[Example(image, few, strokes)]], heldout, unrelated, [upper_examples],
             context, "partial", "5 instances + 5 background strokes on one image, 3 unpainted open"),
    ]


def _three_paintings(name: str, classes, painted_image, complete: list[np.ndarray], few: list[np.ndarray],
                     strokes: np.ndarray, heldout, unrelated, note: str) -> list[Case]:
    """The complete, partial (few + strokes) and few (no background) cases of one real image."""
    def examples(maps, background=None, full=False):
        return [[Example(painted_image, m, background, complete=full)] for m in maps]

    return [
        Case(name, classes, examples(complete, full=True), heldout, unrelated, painting="complete", real=True,
             note=f"{note}; every instance painted"),
        Case(f"{name} partial", classes, examples(few, strokes), heldout, unrelated, painting="partial", real=True,
             note=f"{note}; a few instances + {int(_count(strokes))} background strokes"),
        Case(f"{name} few", classes, examples(few), heldout, unrelated, painting="few", real=True,
             note=f"{note}; a few instances, no background"),
    ]


def _count(mask: np.ndarray) -> int:
    from scipy import ndimage

    return ndimage.label(mask)[1]


def coins_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    from skimage import data

    image = data.coins()
    labels = read_image(DATA / "coins" / "instances.png").astype(np.int32)
    top = (image[:COINS_SPLIT_ROW], labels[:COINS_SPLIT_ROW])
    bottom = (image[COINS_SPLIT_ROW:], labels[COINS_SPLIT_ROW:])
    (painted_image, painted), held = (top, bottom) if split == "heldout" else (bottom, top)
    strokes = background_strokes(painted, count=4, seed=3)
    side = "top" if split == "heldout" else "bottom"
    return _three_paintings("coins", [("real coin", True)], painted_image, [painted], [_few(painted, 4)], strokes,
                            [(held[0], [held[1]])], unrelated,
                            f"the {side} two rows of coins painted ({len(np.unique(painted)) - 1} coins), the other "
                            "two held out; few = 4 coins")


def ihc_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    """Stained tissue, one step of two classes: stromal nuclei (thing) and the stained epithelium (stuff)."""
    from skimage import data

    image = data.immunohistochemistry()
    nuclei = read_image(DATA / "ihc" / "nuclei.png").astype(np.int32)
    gland = (read_image(DATA / "ihc" / "gland.png") > 0).astype(np.int32)
    c = IHC_SPLIT_COLUMN
    left = (image[:, :c], nuclei[:, :c], gland[:, :c])
    right = (image[:, c:], nuclei[:, c:], gland[:, c:])
    (painted_image, n, g), (held_image, hn, hg) = (left, right) if split == "heldout" else (right, left)
    few_nuclei = _few(n, 6, spread=True)
    few_gland = _gland_patch(g)
    strokes = background_strokes(np.maximum(n, g), count=6, seed=5)
    side = "left" if split == "heldout" else "right"
    return _three_paintings(
        "ihc", [("stromal nucleus", True), ("gland", False)], painted_image, [n, g], [few_nuclei, few_gland], strokes,
        [(held_image, [hn, hg])], unrelated,
        f"the {side} half painted ({n.max()} nuclei, gland {100 * g.mean():.0f}% of it), the other half held out; "
        "few = 6 nuclei + one disc of gland")


def _gland_patch(gland: np.ndarray, radius: int = 24) -> np.ndarray:
    """A disc of stained epithelium, as a user paints a part of a stuff region: centred where the
    epithelium is deepest."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(gland > 0, 1))[1:-1, 1:-1]  # the image's edge bounds it too
    cy, cx = np.unravel_index(np.argmax(depth), depth.shape)
    yy, xx = np.mgrid[: gland.shape[0], : gland.shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (gland > 0)).astype(np.int32)


def retina_cases(split: str, unrelated: list[np.ndarray]) -> list[Case]:
    """The vessels of a fundus photo, a thin stuff class: one 512x512 window painted, another held out."""
    from skimage import data

    image = data.retina()
    vessels = (read_image(DATA / "retina" / "vessels.png") > 0).astype(np.int32)
    windows = [(image[y : y + RETINA_SIDE, x : x + RETINA_SIDE], vessels[y : y + RETINA_SIDE, x : x + RETINA_SIDE])
               for y, x in RETINA_WINDOWS]
    (painted_image, v), (held_image, hv) = windows if split == "heldout" else windows[::-1]
    few = _vessel_stretches(v)
    strokes = background_strokes(v, count=6, seed=7)
    side = "upper" if split == "heldout" else "lower"
    return _three_paintings("retina", [("vessel", False)], painted_image, [v], [few], strokes, [(held_image, [hv])],
                            unrelated, f"the {side} 512x512 window painted, the other held out; few = the vessels "
                            "inside 3 squares of 96 pixels")


def _vessel_stretches(vessels: np.ndarray, count: int = 3, side: int = 96) -> np.ndarray:
    """The vessels inside `count` squares where the vessels are densest: a few stretches painted."""
    from scipy import ndimage

    density = ndimage.uniform_filter(vessels.astype(float), side)
    out = np.zeros_like(vessels)
    for _ in range(count):
        cy, cx = np.unravel_index(np.argmax(density), density.shape)
        y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
        out[y0 : y0 + side, x0 : x0 + side] = vessels[y0 : y0 + side, x0 : x0 + side]
        density[max(0, cy - side) : cy + side, max(0, cx - side) : cx + side] = 0  # the next elsewhere
    return out


REAL = ("coins", "ihc", "retina")
CASE_NAMES = (tuple(f"scenes {n}" for n in SCENE_THINGS + SCENE_STUFF) + ("crowded", "crowded partial")
              + tuple(f"{r}{s}" for r in REAL for s in ("", " partial", " few")))


def build_cases(split: str, names=CASE_NAMES) -> list[Case]:
    unknown = sorted(set(names) - set(CASE_NAMES))
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASE_NAMES)}")
    unrelated = unrelated_images(split)
    cases = [scene_case(n.split(" ", 1)[1], split) for n in names if n.startswith("scenes ")]
    builders = {"crowded": crowded_cases, "coins": coins_cases, "ihc": ihc_cases, "retina": retina_cases}
    for prefix, build in builders.items():
        if any(n.split(" ")[0] == prefix for n in names):
            cases += build(split, unrelated)
    return [c for c in cases if c.name in names]
