"""Generated panoptic scenes: the CPU benchmark for continual panoptic segmentation.

A scene is 2-4 textured stuff regions with smooth random boundaries, then 2-8 things (procedural shapes
and objects cut from scikit-image's bundled images) pasted with random scale, rotation, colour and
occlusion. Instances left with too little visible area are removed before the image is painted, so what
remains visible there is what lies beneath. Occasional unlabelled clutter is void (id 0); rarely a
cluster of small things is one crowd segment (iscrowd 1).

    image, id_map, segments = generate_scene(index, seed=0, size=256)
    write_scenes("scenes", num_train=2000, num_val=200)   # COCO-panoptic files

A scene depends only on (index, seed, size); another size gives the same layout (up to pixel rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from ..io.images import write_png
from ..io.panoptic_format import segment_areas_and_boxes, write_panoptic_json, write_panoptic_png
from . import scene_assets as A

VAL_INDEX_OFFSET = 10_000_000  # val scenes use indices from here, train below: disjoint for any sizes
TUNE_SEED_OFFSET = 1_000  # the tuning split: val's indices under another seed (seed + this), other scenes
MIN_VISIBLE_FRACTION = 0.25  # a thing keeps its annotation only if this much of its in-frame shape shows
SEED_SALT = 0x5CE7E5


@dataclass(frozen=True)
class SceneClass:
    """One category: how it is drawn and how often it appears (relative weight)."""

    name: str
    isthing: bool
    color: tuple[int, int, int]
    weight: float
    palettes: tuple[str, ...] = ()  # procedural things: colour palettes
    fills: tuple[str, ...] = ()  # procedural things: fill patterns
    spin: float = 180.0  # things: max rotation, degrees
    prior: float = 0.0  # stuff: > 0 tends to the top of the image, < 0 to the bottom


IMAGE_THINGS = ("coin", "cat", "cup", "horse", "rocket")


def _t(name, color, rank, palettes=(), fills=(), spin=180.0):
    return SceneClass(name, True, color, rank**-0.7, tuple(palettes), tuple(fills), spin)


def _s(name, color, rank, prior):
    return SceneClass(name, False, color, rank**-0.6, prior=prior)


# Interleaved thing, thing, stuff: any prefix (base classes) and suffix (new classes) holds both kinds.
SCENE_CLASSES: tuple[SceneClass, ...] = (
    _t("disc", (220, 20, 60), 1, ("red", "blue", "yellow"), ("flat", "radial", "grain")),
    _t("star", (255, 200, 0), 5, ("yellow", "orange", "red"), ("flat", "stripes", "dots")),
    _s("sky", (70, 130, 180), 1, 1.6),
    _t("triangle", (0, 160, 80), 3, ("green", "blue", "orange"), ("flat", "checker", "stripes")),
    _t("coin", (184, 134, 11), 8),
    _s("grass", (107, 142, 35), 2, -0.6),
    _t("ring", (255, 105, 180), 10, ("yellow", "neutral", "purple"), ("flat", "grain", "stripes")),
    _t("cat", (255, 127, 80), 12, spin=30),
    _s("brick", (178, 34, 34), 5, 0.3),
    _t("frame", (0, 0, 230), 14, ("blue", "red", "brown"), ("flat", "stripes", "checker")),
    _t("hexagon", (148, 0, 211), 2, ("purple", "cyan", "yellow"), ("flat", "dots", "grain")),
    _s("water", (0, 105, 148), 3, -0.9),
    _t("cross", (255, 0, 0), 6, ("red", "green", "neutral"), ("flat", "checker", "dots")),
    _t("cup", (139, 69, 19), 11, spin=40),
    _s("gravel", (128, 128, 128), 4, -0.3),
    _t("ellipse", (0, 206, 209), 4, ("cyan", "orange", "green"), ("radial", "flat", "stripes")),
    _t("arrow", (255, 140, 0), 9, ("orange", "blue", "neutral"), ("flat", "stripes", "grain")),
    _s("sand", (238, 214, 175), 6, -0.8),
    _t("heart", (199, 21, 133), 15, ("red", "purple", "green"), ("radial", "flat", "dots")),
    _t("horse", (160, 82, 45), 7, spin=20),
    _s("wood", (133, 94, 66), 7, 0.0),
    _t("crescent", (240, 230, 140), 16, ("yellow", "cyan", "brown"), ("flat", "radial", "grain")),
    _t("rocket", (192, 192, 192), 13, spin=35),
    _s("moon", (105, 105, 105), 8, 0.2),
)
SCENE_CATEGORIES: list[dict] = [
    {"id": i, "name": c.name, "isthing": int(c.isthing), "color": list(c.color),
     "supercategory": "thing" if c.isthing else "stuff"}
    for i, c in enumerate(SCENE_CLASSES, start=1)
]  # fmt: skip


# ---------------------------------------------------------------- sprites


@dataclass
class Sprite:
    """A pasted layer: top-left corner in image pixels, colours [h, w, 3] (0..255) and its mask."""

    y0: int
    x0: int
    rgb: np.ndarray
    mask: np.ndarray

    def window(self, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """(image slices, sprite slices) of the part inside an [h, w] image, or None."""
        sh, sw = self.mask.shape
        y0, x0, y1, x1 = max(self.y0, 0), max(self.x0, 0), min(self.y0 + sh, h), min(self.x0 + sw, w)
        if y0 >= y1 or x0 >= x1:
            return None
        return (slice(y0, y1), slice(x0, x1)), (slice(y0 - self.y0, y1 - self.y0), slice(x0 - self.x0, x1 - self.x0))


@dataclass
class Item:
    """A thing instance, a crowd (several sprites, one segment) or void clutter (category 0)."""

    category_id: int
    sprites: list[Sprite]
    iscrowd: int = 0
    shape_area: int = 0


def procedural_sprite(rng, shape, fills, palettes, cx, cy, radius, angle) -> Sprite:
    """Rasterise a rotated, scaled procedural shape at (cx, cy) and paint it in its own frame."""
    polys, holes = shape if isinstance(shape, tuple) else A.shape_polygons(rng, shape)
    c, s = np.cos(angle), np.sin(angle)
    to_img = lambda p: (cx + radius * (p[:, 0] * c - p[:, 1] * s), cy + radius * (p[:, 0] * s + p[:, 1] * c))
    pts = [to_img(p) for p in polys]
    xs, ys = np.concatenate([np.stack(p) for p in pts], axis=1)
    x0, y0, x1, y1 = int(xs.min()) - 2, int(ys.min()) - 2, int(np.ceil(xs.max())) + 2, int(np.ceil(ys.max())) + 2
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    for (x, y), value in [(p, 1) for p in pts] + [(to_img(p), 0) for p in holes]:
        draw.polygon(list(zip((x - x0).tolist(), (y - y0).tolist())), fill=value)
    mask = np.asarray(canvas, bool)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u = ((xx - cx) * c + (yy - cy) * s) / radius
    v = (-(xx - cx) * s + (yy - cy) * c) / radius
    rgb = A.thing_fill(rng, fills[int(rng.integers(len(fills)))], palettes, u, v)
    shade = 1 - 0.15 * (yy - cy) / radius  # lit from above
    return Sprite(y0, x0, rgb * shade[..., None], mask)


def image_sprite(rng: A.Rng, name: str, cx: float, cy: float, radius: float, angle: float) -> Sprite:
    """An image thing, scaled so its long side is 2 * radius, rotated, centred at (cx, cy)."""
    rgb0, mask0 = A.image_thing(rng, name)
    if rng.random() < 0.5:
        rgb0, mask0 = rgb0[:, ::-1], mask0[:, ::-1]
    k = 2 * radius / max(mask0.shape)
    size = (max(2, round(mask0.shape[1] * k)), max(2, round(mask0.shape[0] * k)))
    deg = float(np.rad2deg(-angle))
    im = Image.fromarray(np.clip(rgb0, 0, 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    mk = Image.fromarray(mask0.astype(np.uint8) * 255).resize(size, Image.BILINEAR)
    rgb = np.asarray(im.rotate(deg, Image.BILINEAR, expand=True), np.float32)
    mask = np.asarray(mk.rotate(deg, Image.BILINEAR, expand=True)) >= 128
    return Sprite(round(cy - mask.shape[0] / 2), round(cx - mask.shape[1] / 2), rgb, mask)


def thing_sprite(rng: A.Rng, cls: SceneClass, cx: float, cy: float, radius: float) -> Sprite:
    angle = np.deg2rad(rng.uniform(-cls.spin, cls.spin))
    if cls.name in IMAGE_THINGS:
        return image_sprite(rng, cls.name, cx, cy, radius, angle)
    return procedural_sprite(rng, cls.name, cls.fills, cls.palettes, cx, cy, radius, angle)


def clutter_sprite(rng: A.Rng, cx: float, cy: float, radius: float) -> Sprite:
    """An unlabelled blob (void): a random star-convex polygon in a random fill."""
    n = int(rng.integers(7, 13))
    t, r = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.5, 1.0, n)
    blob = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    fill = ("flat", "grain", "stripes", "dots", "radial")[int(rng.integers(5))]
    return procedural_sprite(rng, ([blob], []), (fill,), tuple(A.PALETTES), cx, cy, radius, 0.0)


# ---------------------------------------------------------------- layout


THING_IDS = [i for i, c in enumerate(SCENE_CLASSES, start=1) if c.isthing]
STUFF_IDS = [i for i, c in enumerate(SCENE_CLASSES, start=1) if not c.isthing]
THING_P, STUFF_P = (np.array([SCENE_CLASSES[i - 1].weight for i in ids]) for ids in (THING_IDS, STUFF_IDS))
THING_P, STUFF_P = THING_P / THING_P.sum(), STUFF_P / STUFF_P.sum()


def stuff_layout(rng: A.Rng, h: int, w: int) -> tuple[list[int], np.ndarray]:
    """2-4 stuff category ids and a [h, w] map of indices into them (argmax of smooth random fields).

    A class that would cover under 3% of the image is left out (its field removed), so no stuff is a sliver.
    """
    k = int(rng.integers(2, 5))
    ids = [STUFF_IDS[i] for i in rng.choice(len(STUFF_IDS), size=k, replace=False, p=STUFF_P)]
    up = np.linspace(1, -1, h, dtype=np.float32)[:, None]
    fields = [
        A.fbm(rng, h, w, rng.uniform(0.8, 2.2), 2) + rng.normal(0, 0.4)
        + SCENE_CLASSES[i - 1].prior * rng.uniform(0.6, 2.0) * up
        for i in ids
    ]  # fmt: skip
    while True:
        layout = np.argmax(np.stack(fields), axis=0)
        counts = np.bincount(layout.ravel(), minlength=len(ids))
        small = int(np.argmin(counts))
        if len(ids) == 1 or counts[small] >= 0.03 * h * w:
            return ids, layout
        del ids[small], fields[small]


def scene_items(rng: A.Rng, h: int, w: int) -> list[Item]:
    """Things (2-8, Zipf-like class frequencies), maybe a crowd and void clutter, in paint order."""
    side = min(h, w)
    items = []
    for _ in range(int(rng.integers(2, 9))):
        cid = THING_IDS[int(rng.choice(len(THING_IDS), p=THING_P))]
        radius = side * np.exp(rng.uniform(np.log(0.08), np.log(0.40))) / 2
        sp = thing_sprite(rng, SCENE_CLASSES[cid - 1], rng.uniform(0, w), rng.uniform(0, h), radius)
        items.append(Item(cid, [sp]))
    if rng.random() < 0.06:
        cid = THING_IDS[int(rng.choice(len(THING_IDS), p=THING_P))]
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        sprites = [
            thing_sprite(rng, SCENE_CLASSES[cid - 1], cx + rng.normal(0, 0.07) * side, cy + rng.normal(0, 0.07) * side,
                         side * rng.uniform(0.03, 0.05))
            for _ in range(int(rng.integers(4, 9)))
        ]  # fmt: skip
        items.insert(int(rng.integers(len(items) + 1)), Item(cid, sprites, iscrowd=1))
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            sp = clutter_sprite(rng, rng.uniform(0, w), rng.uniform(0, h), side * rng.uniform(0.03, 0.08))
            items.insert(int(rng.integers(len(items) + 1)), Item(0, [sp]))
    return items


def paint_labels(base: np.ndarray, items: Sequence[Item], first: int) -> np.ndarray:
    """Label map: `base` where nothing is pasted, item k's pixels = first + k (void items: 0)."""
    labels = base.copy()
    h, w = labels.shape
    for k, item in enumerate(items):
        for sp in item.sprites:
            win = sp.window(h, w)
            if win is not None:
                labels[win[0]][sp.mask[win[1]]] = first + k if item.category_id else 0
    return labels


def drop_hidden(base: np.ndarray, items: list[Item], first: int, min_pixels: int) -> tuple[list[Item], np.ndarray]:
    """Remove things that show less than MIN_VISIBLE_FRACTION of their in-frame shape (or < min_pixels)."""
    for item in items:
        item.shape_area = int((paint_labels(np.zeros_like(base), [item], 1) > 0).sum()) if item.category_id else 0
    while True:
        labels = paint_labels(base, items, first)
        counts = np.bincount(labels.ravel(), minlength=first + len(items))
        keep = [
            it for k, it in enumerate(items)
            if not it.category_id or counts[first + k] >= max(min_pixels, MIN_VISIBLE_FRACTION * it.shape_area)
        ]  # fmt: skip
        if len(keep) == len(items):
            return items, labels
        items = keep


# ---------------------------------------------------------------- rendering


def cast_shadow(img: np.ndarray, sp: Sprite, dy: int, dx: int, strength: float) -> None:
    """Darken, in place, a blurred copy of the sprite's mask shifted by (dy, dx)."""
    pad = 3
    shadow = ndimage.uniform_filter(np.pad(sp.mask.astype(np.float32), pad), size=5)
    win = Sprite(sp.y0 - pad + dy, sp.x0 - pad + dx, shadow, shadow).window(*img.shape[:2])
    if win is not None:
        img[win[0]] *= (1 - strength * shadow[win[1]])[..., None]


def paste(img: np.ndarray, sp: Sprite) -> None:
    """Alpha-blend a sprite in place; edges are softened inside the mask only, so nothing leaks out."""
    win = sp.window(*img.shape[:2])
    if win is None:
        return
    m = sp.mask[win[1]]
    alpha = np.where(m, ndimage.uniform_filter(m.astype(np.float32), size=3), 0)[..., None]
    img[win[0]] += alpha * (sp.rgb[win[1]] - img[win[0]])


def render(rng: A.Rng, stuff_ids: list[int], layout: np.ndarray, items: list[Item]) -> np.ndarray:
    """Paint stuff, things (with optional drop shadows), lighting and sensor noise: uint8 [h, w, 3]."""
    h, w = layout.shape
    img = np.empty((h, w, 3), np.float32)
    for k, cid in enumerate(stuff_ids):
        tex = A.STUFF_RENDERERS[SCENE_CLASSES[cid - 1].name](rng, h, w)
        np.copyto(img, tex, where=(layout == k)[..., None])
    shadows = rng.random() < 0.6
    light = rng.uniform(0, 2 * np.pi)
    for item in items:
        for sp in item.sprites:
            if shadows:
                d = 0.08 * max(sp.mask.shape)
                cast_shadow(img, sp, round(d * np.sin(light)), round(d * np.cos(light)), 0.4)
            paste(img, sp)
    img *= (1 + 0.12 * A.fbm(rng, h, w, 1.5, 1))[..., None]
    sigma = np.float32(rng.uniform(1.5, 6.0) * np.sqrt(12))  # uniform sensor noise of this std
    img += (rng.random((h, w, 3), dtype=np.float32) - np.float32(0.5)) * sigma
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9))))
    return out


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise ValueError(f"scene size must be at least 16x16, got {h}x{w}")
    return int(h), int(w)


def generate_scene(index: int, seed: int = 0, size: int | Sequence[int] = 256) -> tuple[np.ndarray, np.ndarray, list]:
    """One scene: (image uint8 [H, W, 3], id_map int32 [H, W], segments); size is S or (H, W).

    Segments are COCO-panoptic segments_info dicts (id, category_id, iscrowd, area, bbox [x, y, w, h]) plus
    "shape_area": the in-frame pixels of the whole instance before occlusion (== area for stuff).
    Ids are 1..N (stuff first, then things in paint order); 0 is void.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got {index}, {seed}")
    h, w = _hw(size)
    rng = np.random.default_rng(np.random.SeedSequence([SEED_SALT, int(seed), int(index)]))
    stuff_ids, layout = stuff_layout(rng, h, w)
    first = len(stuff_ids) + 1
    items, labels = drop_hidden(layout.astype(np.int32) + 1, scene_items(rng, h, w), first, max(16, h * w // 1024))
    image = render(rng, stuff_ids, layout, items)
    # (label in `labels`, category, iscrowd, shape area) for every labelled region, in id order.
    regions = [(1 + k, cid, 0, 0) for k, cid in enumerate(stuff_ids)]
    regions += [(first + k, it.category_id, it.iscrowd, it.shape_area) for k, it in enumerate(items) if it.category_id]
    counts = np.bincount(labels.ravel(), minlength=first + len(items))
    regions = [r for r in regions if counts[r[0]] > 0]
    lut = np.zeros(first + len(items), np.int32)
    lut[[r[0] for r in regions]] = np.arange(1, len(regions) + 1)
    id_map = lut[labels]
    boxes = segment_areas_and_boxes(id_map)
    segments = []
    for seg_id, (label, cid, crowd, shape_area) in enumerate(regions, 1):
        area, bbox = boxes[seg_id]
        segments.append({"id": seg_id, "category_id": cid, "iscrowd": crowd, "area": area, "bbox": bbox,
                         "shape_area": shape_area or area})  # fmt: skip
    return image, id_map, segments


# ---------------------------------------------------------------- COCO-panoptic files

COCO_SEGMENT_KEYS = ("id", "category_id", "iscrowd", "area", "bbox")


def _write_one(task: tuple[str, str, int, int, int | tuple[int, int]]) -> tuple[dict, dict]:
    """Generate and write one scene's RGB and panoptic PNGs; return its (images entry, annotation)."""
    out, split, index, seed, size = task
    image, id_map, segments = generate_scene(index, seed, size)
    name = f"{index:08d}.png"
    write_png(Path(out) / f"images_{split}" / name, image)
    write_panoptic_png(Path(out) / f"scenes_{split}" / name, id_map)
    entry = {"id": index, "file_name": name, "height": image.shape[0], "width": image.shape[1]}
    info = [{k: s[k] for k in COCO_SEGMENT_KEYS} for s in segments]
    return entry, {"image_id": index, "file_name": name, "segments_info": info}


def write_scenes(
    out: str | Path, num_train: int, num_val: int, seed: int = 0, size: int | Sequence[int] = 256, workers: int = 1,
    num_tune: int = 0, splits: Sequence[str] = ("train", "val", "tune"),
) -> dict[str, Path]:
    """Write train, val and tune scenes in COCO-panoptic format under `out`; returns their paths.

    out/scenes_{split}.json, out/scenes_{split}/*.png (panoptic), out/images_{split}/*.png (RGB). Train
    uses indices 0..num_train-1 and val VAL_INDEX_OFFSET.., so val does not change with num_train. The
    tuning split (settings are chosen on it, tables report val) uses val's indices under the seed
    seed + TUNE_SEED_OFFSET: scenes of their own. `splits`: which of the three to write (num 0: none).
    """
    if not 0 <= num_train <= VAL_INDEX_OFFSET or num_val < 0:
        raise ValueError(f"need 0 <= num_train <= {VAL_INDEX_OFFSET} and num_val >= 0, got {num_train}, {num_val}")
    size = _hw(size)[0] if isinstance(size, (int, np.integer)) else _hw(size)
    out = Path(out)
    paths: dict[str, Path] = {}
    if num_tune < 0:
        raise ValueError(f"need num_tune >= 0, got {num_tune}")
    for split, start, count, split_seed in (("train", 0, num_train, seed), ("val", VAL_INDEX_OFFSET, num_val, seed),
                                            ("tune", VAL_INDEX_OFFSET, num_tune, seed + TUNE_SEED_OFFSET)):
        if split not in splits or (split == "tune" and not count):
            continue
        for sub in ("images", "scenes"):
            (out / f"{sub}_{split}").mkdir(parents=True, exist_ok=True)
        tasks = [(str(out), split, start + i, int(split_seed), size) for i in range(count)]
        results = _run(tasks, workers)
        info = {"description": f"generated panoptic scenes ({split}, seed {split_seed}, size {size})"}
        data = {"info": info, "licenses": [], "images": [r[0] for r in results],
                "annotations": [r[1] for r in results], "categories": SCENE_CATEGORIES}  # fmt: skip
        write_panoptic_json(out / f"scenes_{split}.json", data)
        paths |= {f"{split}_json": out / f"scenes_{split}.json", f"{split}_panoptic": out / f"scenes_{split}",
                  f"{split}_images": out / f"images_{split}"}  # fmt: skip
    return paths


def _run(tasks: list, workers: int) -> list[tuple[dict, dict]]:
    if workers <= 1 or len(tasks) < 2:
        return [_write_one(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # safe even when the caller holds threads (torch)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_write_one, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
