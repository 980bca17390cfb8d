"""The COCO-panoptic file format: id-encoded RGB PNGs plus a JSON of segment lists.

A pixel's segment id is R + 256*G + 256^2*B; id 0 is void. See
https://cocodataset.org/#format-data (panoptic segmentation).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .atomic import atomic_write_json
from .images import write_png

MAX_ID = 256**3 - 1


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Decode an [H, W, 3] uint8 RGB array into an int64 [H, W] segment-id map."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb2id: expected an [H, W, 3] array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb2id: expected dtype uint8, got {rgb.dtype}")
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Encode an integer [H, W] segment-id map (0 <= id < 256^3) as [H, W, 3] uint8 RGB."""
    id_map = np.asarray(id_map)
    if id_map.ndim != 2:
        raise ValueError(f"id2rgb: expected an [H, W] array, got shape {id_map.shape}")
    if not np.issubdtype(id_map.dtype, np.integer):
        raise ValueError(f"id2rgb: expected an integer array, got dtype {id_map.dtype}")
    if id_map.size and (id_map.min() < 0 or id_map.max() > MAX_ID):
        raise ValueError(
            f"id2rgb: ids must lie in [0, {MAX_ID}], got range [{id_map.min()}, {id_map.max()}]"
        )
    ids = id_map.astype(np.int64)
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // (256 * 256)
    return rgb


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a COCO-panoptic PNG into an int64 [H, W] segment-id map."""
    with Image.open(path) as im:
        # Other modes (palette, grey, RGBA) do not carry the 24-bit id encoding.
        if im.mode != "RGB":
            raise ValueError(f"{path}: panoptic PNG must be mode RGB, got mode {im.mode!r}")
        rgb = np.array(im, dtype=np.uint8)
    return rgb2id(rgb)


def write_panoptic_png(path: str | os.PathLike, id_map: np.ndarray) -> None:
    """Write an [H, W] segment-id map as a COCO-panoptic RGB PNG, atomically."""
    write_png(path, id2rgb(id_map))


def segment_areas_and_boxes(id_map: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """{segment id: (area, COCO box [x, y, width, height])} of every segment id > 0 in an id map."""
    id_map = np.asarray(id_map)
    ids, compact = np.unique(id_map, return_inverse=True)
    compact = compact.reshape(id_map.shape)
    areas = np.bincount(compact.ravel(), minlength=len(ids))
    out = {}
    for k, sl in enumerate(ndimage.find_objects(compact + 1)):  # labels 1..len(ids); 0 would be skipped
        if sl is None or ids[k] == 0:
            continue
        ys, xs = sl
        out[int(ids[k])] = (int(areas[k]), [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start])
    return out


def read_panoptic_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO-panoptic JSON and check the parts the evaluation relies on."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'annotations' list")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotations[{i}] is not an object")
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise ValueError(f"{path}: annotations[{i}] has no {key!r}")
        if not isinstance(ann["segments_info"], list):
            raise ValueError(f"{path}: annotations[{i}]['segments_info'] is not a list")
    if "categories" in data:
        if not isinstance(data["categories"], list):
            raise ValueError(f"{path}: 'categories' is not a list")
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or "id" not in cat:
                raise ValueError(f"{path}: categories[{i}] has no 'id'")
    return data


def write_panoptic_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a COCO-panoptic JSON dict, atomically."""
    if not isinstance(data, dict):
        raise ValueError(f"write_panoptic_json: expected a dict, got {type(data).__name__}")
    atomic_write_json(path, data, indent=None, sort_keys=False)
