"""ADEChallengeData2016 -> COCO-panoptic, as Mask2Former's `datasets/prepare_ade20k_pan_seg.py` does.

Per image (see `ade_image_to_panoptic`):
- stuff first: one segment per stuff class (isthing 0) present in `annotations/*.png`, all its pixels;
- then things: one segment per (instance category R, instance id G) of `annotations_instance/*.png` with
  G > 0, its category R mapped to the 150-class id through the instance mapping; things are pasted after
  stuff, so where they overlap the thing wins;
- everything else is void (0): pixel value 0, thing-class pixels of the semantic map no instance covers.

Deliberate differences from the Mask2Former script, documented here:
- category ids stay 1..150 (the script shifts them to 0..149);
- segment ids are 1, 2, 3, ... in paste order (stuff by class id, then things by (G, R)) instead of
  panopticapi's random colours, so a re-run gives identical files;
- area and bbox are measured on the final map, after things have overwritten stuff, and a segment left
  with no pixels is dropped (the script measures stuff before the things are pasted); the JSON agrees
  with the PNG, which `model.evaluation.metrics` checks;
- things are keyed by (R, G) rather than by G alone (the script asserts G is unique per image; on the
  real data both give the same segments).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.panoptic_format import segment_areas_and_boxes, write_panoptic_json, write_panoptic_png
from .categories import ade20k_categories

MAPPING_FILE = "ade20k_instance_catid_mapping.txt"
SPLITS = {"training": "train", "validation": "val"}
NUM_CLASSES = 150


# --------------------------------------------------------------------------- package data


def parse_instance_mapping(text: str, where: str) -> dict[int, int]:
    """{instance category id (PNG channel R): 150-class id} from the mapping file's text."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{where}: the instance mapping is empty")
    mapping: dict[int, int] = {}
    for n, line in enumerate(lines[1:], start=2):  # line 1 is the header
        parts = line.split()
        try:
            ins_id, sem_id = int(parts[0]), int(parts[1])
        except (IndexError, ValueError) as e:
            raise ValueError(f"{where}: line {n} is not 'instance_id sem_id full_id': {line!r}") from e
        if not 1 <= sem_id <= NUM_CLASSES:
            raise ValueError(f"{where}: line {n}: class id {sem_id} is not in 1..{NUM_CLASSES}")
        if mapping.setdefault(ins_id, sem_id) != sem_id:
            raise ValueError(f"{where}: instance id {ins_id} maps to both {mapping[ins_id]} and {sem_id}")
    return mapping


@functools.lru_cache(maxsize=1)
def ade20k_instance_mapping() -> dict[int, int]:
    """The ADE20K instance mapping carried in `model/data/categories/` (100 instance ids -> 100 thing classes)."""
    text = resources.files("model.data.categories").joinpath(MAPPING_FILE).read_text()
    return parse_instance_mapping(text, f"model/data/categories/{MAPPING_FILE}")


def panoptic_categories() -> list[dict[str, Any]]:
    """The JSON 'categories': [{id 1..150, name, isthing, color}] from the package data."""
    return [
        {"id": int(c["id"]), "name": c["name"].strip(), "isthing": int(c["isthing"]), "color": list(c["color"])}
        for c in ade20k_categories()
    ]


def _thing_ids() -> frozenset[int]:
    return frozenset(c["id"] for c in panoptic_categories() if c["isthing"])


# --------------------------------------------------------------------------- one image


def _check_inputs(semantic: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    semantic, instance = np.asarray(semantic), np.asarray(instance)
    if semantic.ndim != 2:
        raise ValueError(f"semantic map must be [H, W], got shape {semantic.shape}")
    if instance.ndim != 3 or instance.shape[2] < 2:
        raise ValueError(f"instance map must be [H, W, 3], got shape {instance.shape}")
    if instance.shape[:2] != semantic.shape:
        raise ValueError(f"instance map is {instance.shape[:2]} but the semantic map is {semantic.shape}")
    for name, a in (("semantic", semantic), ("instance", instance)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} map must be an integer array, got dtype {a.dtype}")
    return semantic.astype(np.int64), instance[..., :2].astype(np.int64)


def _stuff_layers(semantic: np.ndarray, thing_ids: frozenset[int]) -> list[tuple[int, np.ndarray]]:
    """[(class id, mask)] for each stuff class in the semantic map, by class id."""
    present = np.unique(semantic)
    bad = present[(present < 0) | (present > NUM_CLASSES)]
    if bad.size:
        raise ValueError(f"semantic values {bad.tolist()} are not in 0..{NUM_CLASSES}")
    return [(int(c), semantic == c) for c in present if c != 0 and int(c) not in thing_ids]


def _thing_layers(
    cat: np.ndarray, ins: np.ndarray, mapping: dict[int, int], thing_ids: frozenset[int]
) -> list[tuple[int, np.ndarray]]:
    """[(class id, mask)] for each (R, G) instance with G > 0, by (G, R); non-thing classes skipped."""
    keyed = ins * 65536 + cat  # sorts by instance id, then instance category
    layers = []
    for key in np.unique(keyed[ins > 0]):
        g, r = divmod(int(key), 65536)
        if r not in mapping:
            raise ValueError(f"instance {g} has instance category {r}, which is not in the ADE instance mapping")
        if mapping[r] in thing_ids:
            layers.append((mapping[r], keyed == key))
    return layers


def ade_image_to_panoptic(
    semantic: np.ndarray,
    instance: np.ndarray,
    mapping: dict[int, int] | None = None,
    thing_ids: frozenset[int] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One ADE image: semantic [H, W] (0..150) + instance [H, W, 3] (R category, G id) -> panoptic.

    Returns (id_map int64 [H, W], 0 = void; segments_info [{id, category_id, area, bbox, iscrowd}]).
    Stuff is pasted first, things after (they win on overlap); ids are 1..n in paste order.
    """
    mapping = ade20k_instance_mapping() if mapping is None else mapping
    thing_ids = _thing_ids() if thing_ids is None else thing_ids
    semantic, instance = _check_inputs(semantic, instance)
    layers = _stuff_layers(semantic, thing_ids)
    layers += _thing_layers(instance[..., 0], instance[..., 1], mapping, thing_ids)

    layer_map = np.zeros(semantic.shape, dtype=np.int64)  # 1-based layer index, 0 = void
    for i, (_, mask) in enumerate(layers, start=1):
        layer_map[mask] = i
    areas = np.bincount(layer_map.ravel(), minlength=len(layers) + 1)

    # Layers entirely covered by things get no segment; the others are numbered 1..n in paste order.
    visible = [i for i in range(1, len(layers) + 1) if areas[i] > 0]
    lut = np.zeros(len(layers) + 1, dtype=np.int64)
    lut[visible] = np.arange(1, len(visible) + 1)
    id_map = lut[layer_map]
    boxes = segment_areas_and_boxes(id_map)
    segments: list[dict[str, Any]] = []
    for seg_id, i in enumerate(visible, start=1):
        area, bbox = boxes[seg_id]
        segments.append({"id": seg_id, "category_id": layers[i - 1][0], "area": area, "bbox": bbox, "iscrowd": 0})
    return id_map, segments


# --------------------------------------------------------------------------- files


def _read_label_png(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the PNG ({e})") from e
    if a.ndim != ndim or a.dtype != np.uint8 or (ndim == 3 and a.shape[2] < 3):
        want = "[H, W] uint8 labels" if ndim == 2 else "[H, W, 3] uint8 RGB"
        raise ValueError(f"{path}: expected {want}, got shape {a.shape} dtype {a.dtype}")
    return a


def read_label_png(path: Path) -> np.ndarray:
    """An ADE20K semantic annotation (annotations/*.png): uint8 [H, W] class ids 0..150, 0 = void."""
    return _read_label_png(Path(path), 2)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image, from its header."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except OSError as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e
    return height, width


def _convert_one(
    stem: str, dirs: dict[str, Path], mapping: dict[int, int], thing_ids: frozenset[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert one image and write its PNG; returns its (image record, annotation record)."""
    image_path = dirs["images"] / f"{stem}.jpg"
    sem_path = dirs["semantic"] / f"{stem}.png"
    ins_path = dirs["instance"] / f"{stem}.png"
    height, width = _image_size(image_path)
    semantic = _read_label_png(sem_path, 2)
    instance = _read_label_png(ins_path, 3)
    for path, shape in ((sem_path, semantic.shape[:2]), (ins_path, instance.shape[:2])):
        if shape != (height, width):
            raise ValueError(f"{path}: size {shape} differs from the image's {(height, width)} ({image_path})")
    try:
        id_map, segments = ade_image_to_panoptic(semantic, instance, mapping, thing_ids)
    except ValueError as e:
        raise ValueError(f"{sem_path} / {ins_path}: {e}") from e
    write_panoptic_png(dirs["out"] / f"{stem}.png", id_map)
    image = {"id": stem, "file_name": image_path.name, "height": height, "width": width}
    return image, {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments}


def split_dirs(root: str | os.PathLike, out: str | os.PathLike, split: str) -> dict[str, Path]:
    """Input and output folders of one split; raises FileNotFoundError for a missing input folder."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root, out = Path(root), Path(out)
    dirs = {
        "images": root / "images" / split,
        "semantic": root / "annotations" / split,
        "instance": root / "annotations_instance" / split,
    }
    for path in dirs.values():
        if not path.is_dir():
            raise FileNotFoundError(f"ADE20K folder not found: {path}")
    dirs["out"] = out / f"ade20k_panoptic_{SPLITS[split]}"
    dirs["json"] = out / f"ade20k_panoptic_{SPLITS[split]}.json"
    return dirs


def _progress_printer(split: str, total: int) -> Callable[[int], None]:
    """Prints 'split: done/total' about every 5% (and at the end) to stderr."""
    every = max(1, total // 20)

    def report(done: int) -> None:
        if done % every == 0 or done == total:
            print(f"{split}: {done}/{total} images", file=sys.stderr, flush=True)

    return report


def convert_ade20k_panoptic(
    root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "training",
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Convert ROOT/{images,annotations,annotations_instance}/SPLIT into OUT/ade20k_panoptic_{train,val}.

    Writes one PNG per image (atomically) with a Pool of `workers` processes, then the JSON, last and
    atomically: a run that stops half-way leaves no JSON and can simply be re-run. The JSON's image
    file_name is the jpg's name inside ROOT/images/SPLIT. Returns the JSON path.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dirs = split_dirs(root, out, split)
    stems = sorted(p.stem for p in dirs["images"].glob("*.jpg"))
    if not stems:
        raise ValueError(f"no .jpg images in {dirs['images']}")
    dirs["out"].mkdir(parents=True, exist_ok=True)

    job = functools.partial(_convert_one, dirs=dirs, mapping=ade20k_instance_mapping(), thing_ids=_thing_ids())
    report = _progress_printer(split, len(stems)) if progress else (lambda done: None)
    records = []
    if workers == 1:
        for stem in stems:
            records.append(job(stem))
            report(len(records))
    else:
        chunk = max(1, min(32, len(stems) // (4 * workers)))
        with multiprocessing.Pool(min(workers, len(stems))) as pool:
            for record in pool.imap(job, stems, chunksize=chunk):  # keeps the sorted order
                records.append(record)
                report(len(records))

    data = {
        "images": [image for image, _ in records],
        "annotations": [ann for _, ann in records],
        "categories": panoptic_categories(),
    }
    write_panoptic_json(dirs["json"], data)
    return dirs["json"]
