"""A COCO-panoptic dataset on disk (images + id-encoded PNGs + one JSON) and its training targets.

The JSON is read and its segment lists checked once, at construction, so `annotation()` (used to pick a
continual step's images) never touches pixels. Pixels are read and cross-checked per sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io.panoptic_format import read_panoptic_json, read_panoptic_png, segment_areas_and_boxes

# Tried in this order when the "images" entry's file_name is not there as written (converters
# sometimes store PNG images under a .jpg name or the reverse).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class PanopticSample:
    """One image with its panoptic annotation; category ids are the dataset's own."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    id_map: np.ndarray  # int64 [H, W], 0 = void
    segments: list[dict[str, Any]]  # {id, category_id, iscrowd, area, bbox}
    image_id: Any
    file_name: str = ""


@dataclass
class _Index:
    """The parsed JSON, shared (read-only) by a dataset and its subsets."""

    json_path: str
    image_dir: Path
    panoptic_dir: Path
    categories: list[dict[str, Any]]
    images: dict[Any, dict[str, Any]]  # image_id -> "images" entry
    annotations: dict[Any, dict[str, Any]]  # image_id -> annotation (segments normalised)
    order: list[Any] = field(default_factory=list)  # image ids in "images" file order


def _as_int(value: Any, what: str) -> int:
    # bool is an int subclass; a JSON true/false in an id field is a broken file, not 1/0.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _normalise_segments(ann: dict[str, Any], known_categories: set[int], where: str) -> list[dict[str, Any]]:
    """Check one annotation's segments_info and return copies with iscrowd defaulted to 0."""
    segments, seen = [], set()
    for j, seg in enumerate(ann["segments_info"]):
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise ValueError(f"{where}: segments_info[{j}] needs 'id' and 'category_id', got {seg!r}")
        sid = _as_int(seg["id"], f"{where}: segments_info[{j}] id")
        cat = _as_int(seg["category_id"], f"{where}: segments_info[{j}] category_id")
        if sid <= 0:
            raise ValueError(f"{where}: segment id {sid} is not positive (0 is void)")
        if sid in seen:
            raise ValueError(f"{where}: segment id {sid} is listed twice")
        if cat not in known_categories:
            raise ValueError(f"{where}: segment {sid} has unknown category_id {cat}")
        seen.add(sid)
        out = dict(seg)
        out["id"], out["category_id"] = sid, cat
        out["iscrowd"] = int(seg.get("iscrowd", 0))
        segments.append(out)
    return segments


def _read_index(json_path: str | os.PathLike, image_dir, panoptic_dir) -> _Index:
    data = read_panoptic_json(json_path)
    where = str(json_path)
    categories = data.get("categories")
    images = data.get("images")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{where}: needs a non-empty 'categories' list")
    if not isinstance(images, list):
        raise ValueError(f"{where}: needs an 'images' list")
    cat_ids = [_as_int(c["id"], f"{where}: category id") for c in categories]
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{where}: duplicate category ids")
    known = set(cat_ids)

    by_id: dict[Any, dict[str, Any]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{where}: images[{i}] needs 'id' and 'file_name'")
        if im["id"] in by_id:
            raise ValueError(f"{where}: image id {im['id']!r} is listed twice in 'images'")
        by_id[im["id"]] = im

    annotations: dict[Any, dict[str, Any]] = {}
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        ann_where = f"{where}: image {image_id!r} ({ann['file_name']})"
        if image_id not in by_id:
            raise ValueError(f"{ann_where}: annotation has no entry in 'images'")
        if image_id in annotations:
            raise ValueError(f"{ann_where}: image has two annotations")
        annotations[image_id] = {
            "image_id": image_id,
            "file_name": ann["file_name"],
            "segments_info": _normalise_segments(ann, known, ann_where),
        }
    missing = [i for i in by_id if i not in annotations]
    if missing:
        raise ValueError(f"{where}: {len(missing)} image(s) have no annotation, e.g. image {missing[0]!r}")
    return _Index(
        json_path=where,
        image_dir=Path(image_dir),
        panoptic_dir=Path(panoptic_dir),
        categories=list(categories),
        images=by_id,
        annotations=annotations,
        order=list(by_id),
    )


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        # Grey, palette, RGBA, CMYK all become plain RGB; alpha is dropped, not composited.
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        return np.array(rgb, dtype=np.uint8)


class PanopticDataset(torch.utils.data.Dataset):
    """COCO-panoptic images: `ds[i]` is a PanopticSample for `ds.image_ids[i]`."""

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike,
        panoptic_dir: str | os.PathLike,
        image_ids: Iterable[Any] | None = None,
    ) -> None:
        self._index = _read_index(json_path, image_dir, panoptic_dir)
        self._ids = self._check_ids(image_ids)

    def _check_ids(self, image_ids: Iterable[Any] | None) -> list[Any]:
        if image_ids is None:
            return list(self._index.order)
        ids = list(image_ids)
        unknown = [i for i in ids if i not in self._index.annotations]
        if unknown:
            raise ValueError(f"{self._index.json_path}: unknown image id(s) {unknown[:5]!r}")
        return ids

    @property
    def categories(self) -> list[dict[str, Any]]:
        """The JSON's category dicts, in file order."""
        return self._index.categories

    @property
    def image_ids(self) -> list[Any]:
        return list(self._ids)

    def annotation(self, image_id: Any) -> list[dict[str, Any]]:
        """The image's segments_info (checked, iscrowd defaulted), without reading any pixels."""
        try:
            segments = self._index.annotations[image_id]["segments_info"]
        except KeyError:
            raise ValueError(f"{self._index.json_path}: unknown image id {image_id!r}") from None
        return [dict(s) for s in segments]

    def subset(self, image_ids: Iterable[Any]) -> PanopticDataset:
        """The same files restricted to (and ordered as) `image_ids`; the JSON is not read again."""
        sub = object.__new__(PanopticDataset)
        sub._index = self._index
        sub._ids = self._check_ids(image_ids)
        return sub

    def __len__(self) -> int:
        return len(self._ids)

    def image_path(self, image_id: Any) -> Path:
        """The image file for `image_id`: its file_name as written, else the same stem as jpg/png."""
        name = self._index.images[image_id]["file_name"]
        path = self._index.image_dir / name
        if path.is_file():
            return path
        for suffix in IMAGE_SUFFIXES:
            alt = path.with_suffix(suffix)
            if alt.is_file():
                return alt
        raise ValueError(f"image {image_id!r}: {path} not found (also tried {', '.join(IMAGE_SUFFIXES)})")

    def __getitem__(self, i: int) -> PanopticSample:
        image_id = self._ids[i]
        ann = self._index.annotations[image_id]
        entry = self._index.images[image_id]
        image_path = self.image_path(image_id)
        png_path = self._index.panoptic_dir / ann["file_name"]
        if not png_path.is_file():
            raise ValueError(f"image {image_id!r}: panoptic PNG {png_path} not found")
        image = _read_rgb(image_path)
        id_map = read_panoptic_png(png_path)
        where = f"image {image_id!r} ({image_path.name}, {png_path.name})"
        if image.shape[:2] != id_map.shape:
            raise ValueError(f"{where}: image is {image.shape[:2]} but its panoptic PNG is {id_map.shape}")
        if "height" in entry and "width" in entry and (entry["height"], entry["width"]) != id_map.shape:
            raise ValueError(
                f"{where}: JSON says {entry['height']}x{entry['width']} but the files are "
                f"{id_map.shape[0]}x{id_map.shape[1]}"
            )
        segments = [dict(s) for s in ann["segments_info"]]
        self._check_ids_match(id_map, segments, where)
        # Converters sometimes omit area/bbox; fill them from the pixels so samples are complete.
        if any("area" not in seg or "bbox" not in seg for seg in segments):
            boxes = segment_areas_and_boxes(id_map)
            for seg in segments:
                if "area" not in seg or "bbox" not in seg:
                    seg["area"], seg["bbox"] = boxes.get(seg["id"], (0, [0, 0, 0, 0]))
        return PanopticSample(image, id_map, segments, image_id, str(entry["file_name"]))

    @staticmethod
    def _check_ids_match(id_map: np.ndarray, segments: list[dict[str, Any]], where: str) -> None:
        in_png = set(np.unique(id_map).tolist()) - {0}
        listed = {s["id"] for s in segments}
        unlisted = sorted(in_png - listed)
        absent = sorted(listed - in_png)
        if unlisted:
            raise ValueError(f"{where}: PNG has segment id(s) {unlisted[:10]} not listed in segments_info")
        if absent:
            raise ValueError(f"{where}: segments_info lists id(s) {absent[:10]} that do not occur in the PNG")


def build_targets(
    sample: PanopticSample,
    class_of: dict[int, int],
    keep: set[int] | frozenset[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The training target {"labels": int64 [M] (learning-order ids), "masks": bool [M, H, W]}.

    Crowd segments are dropped. Segments whose dataset category is not in `keep` (None = all) are
    deleted, not turned into background or ignore: ECLIPSE trains step k on step-k labels only, and
    the other pixels simply have no target.
    """
    h, w = sample.id_map.shape
    labels, masks = [], []
    for seg in sample.segments:
        cat = seg["category_id"]
        if seg.get("iscrowd", 0) or (keep is not None and cat not in keep):
            continue
        if cat not in class_of:
            raise ValueError(f"image {sample.image_id!r}: category_id {cat} has no class in class_of")
        label = int(class_of[cat])
        if label < 1:
            raise ValueError(f"class_of[{cat}] = {label}: learning-order class ids start at 1 (0 is void)")
        mask = sample.id_map == seg["id"]
        if mask.any():  # a listed segment with no pixels gives no useful target
            labels.append(label)
            masks.append(mask)
    if not masks:
        return {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, h, w, dtype=torch.bool)}
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)),
    }
