"""Checks and file helpers of `project.Project`: names, colours, images, instance maps, safe file
names, PNG files and the structure of the index (no napari, Qt or torch)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from model.io.panoptic_format import read_panoptic_png

VERSION = 1
PROJECT_FILE = "project.json"
MAX_INSTANCE_ID = 65535  # instance labels are stored as 16-bit PNGs


class ProjectError(ValueError):
    """A project folder or an input to it is invalid; nothing was written."""


def check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise ProjectError(f"{what} must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ProjectError(f"{what} must not be empty")


def check_color(color: Any) -> list[int]:
    values = list(color) if isinstance(color, (list, tuple, np.ndarray)) else []
    ok = len(values) == 3 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    )
    if not ok:
        raise ProjectError(f"color must be three integers in [0, 255], got {color!r}")
    return [int(v) for v in values]


def check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ProjectError(f"image must be uint8 (convert it first), got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ProjectError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ProjectError(f"image is empty (shape {image.shape})")
    return np.ascontiguousarray(image[..., :3] if image.ndim == 3 else image)


def check_instances(instances: Any, shape: tuple[int, ...]) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ProjectError(f"instances must be a 2-D label image, got shape {instances.shape}")
    if not np.issubdtype(instances.dtype, np.integer):
        raise ProjectError(f"instances must have an integer dtype, got {instances.dtype}")
    if instances.shape != tuple(shape):
        raise ProjectError(f"instances are {instances.shape} but the image is {tuple(shape)} (H, W)")
    if instances.size and instances.min() < 0:
        raise ProjectError(f"instance ids must be >= 0, got {instances.min()}")
    if instances.size and instances.max() > MAX_INSTANCE_ID:
        raise ProjectError(f"instance ids must be <= {MAX_INSTANCE_ID} (16-bit storage), got {instances.max()}")
    return instances


def check_background(background: Any, shape: tuple[int, ...]) -> np.ndarray:
    background = np.asarray(background)
    if background.shape != tuple(shape):
        raise ProjectError(f"the background mask is {background.shape} but the image is {tuple(shape)} (H, W)")
    if background.dtype != bool and not np.issubdtype(background.dtype, np.integer):
        raise ProjectError(f"the background mask must be boolean or integer, got {background.dtype}")
    return background.astype(bool)


def pixel_hash(image: np.ndarray) -> str:
    h = hashlib.sha256(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def safe_name(name: str, taken: set[str]) -> str:
    """An ASCII slug of `name` plus a hash of it, lengthened until its lower case is not in `taken`."""
    slug = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug).strip("._-")[:40].strip("._-") or "x"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    for n in range(10, len(digest) + 1):
        candidate = f"{slug}-{digest[:n]}"
        if candidate.lower() not in taken:
            return candidate
    raise ProjectError(f"no free file name for {name!r}")  # only with a full sha256 collision


def read_png(path: Path, dtype: type) -> np.ndarray:
    try:
        with Image.open(path) as im:
            array = np.array(im)
    except (OSError, ValueError) as e:
        raise ProjectError(f"{path}: cannot read ({e})") from e
    if array.dtype != dtype:
        raise ProjectError(f"{path}: expected {np.dtype(dtype).name} pixels, got {array.dtype}")
    return array


def same_panoptic(path: Path, id_map: np.ndarray) -> bool:
    """True when `path` already holds exactly `id_map` (saves a rewrite and fsync)."""
    if not path.is_file():
        return False
    try:
        old = read_panoptic_png(path)
    except (OSError, ValueError):
        return False
    return old.shape == id_map.shape and bool(np.array_equal(old, id_map))


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def check_rel_path(value: Any, folder: str, what: str) -> str:
    if not isinstance(value, str):
        raise ProjectError(f"{what}: 'file' must be a string")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or len(p.parts) < 2 or p.parts[0] != folder:
        raise ProjectError(f"{what}: file {value!r} is not a path under {folder}/")
    return value


def parse_index(data: Any) -> tuple[list[dict], list[dict], list[dict]]:
    """Check project.json's content; return (categories, images, annotations)."""
    if not isinstance(data, dict):
        raise ProjectError("expected a JSON object")
    if data.get("version") != VERSION:
        raise ProjectError(f"unsupported version {data.get('version')!r} (expected {VERSION})")
    for field in ("categories", "images", "annotations"):
        if not isinstance(data.get(field), list):
            raise ProjectError(f"{field!r} must be a list")

    categories = []
    for i, c in enumerate(data["categories"]):
        what = f"categories[{i}]"
        if not isinstance(c, dict):
            raise ProjectError(f"{what} is not an object")
        if c.get("id") != i + 1 or isinstance(c.get("id"), bool):
            raise ProjectError(f"{what}: id must be {i + 1}, got {c.get('id')!r}")
        check_name(c.get("name"), f"{what} name")
        if c.get("isthing") not in (0, 1) or isinstance(c.get("isthing"), bool):
            raise ProjectError(f"{what}: isthing must be 0 or 1, got {c.get('isthing')!r}")
        categories.append(
            {"id": c["id"], "name": c["name"], "isthing": c["isthing"], "color": check_color(c.get("color"))}
        )
    names = [c["name"] for c in categories]
    if len(set(names)) != len(names):
        raise ProjectError("duplicate category names")

    images = []
    for i, im in enumerate(data["images"]):
        what = f"images[{i}]"
        if not isinstance(im, dict):
            raise ProjectError(f"{what} is not an object")
        check_name(im.get("key"), f"{what} key")
        for field in ("id", "width", "height"):
            v = im.get(field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ProjectError(f"{what}: {field} must be a positive integer, got {v!r}")
        if not isinstance(im.get("sha256"), str):
            raise ProjectError(f"{what}: sha256 must be a string")
        check_rel_path(im.get("file"), "images", what)
        for field in ("name", "source"):  # optional: what the user called the image
            if field in im and not isinstance(im[field], str):
                raise ProjectError(f"{what}: {field} must be a string, got {im[field]!r}")
        images.append({k: im[k] for k in ("id", "key", "file", "width", "height", "sha256", "name", "source")
                       if k in im})
    for field in ("id", "key", "file"):
        values = [im[field] for im in images]
        if len(set(values)) != len(values):
            raise ProjectError(f"duplicate image {field}s")

    keys, entries, seen = {im["key"] for im in images}, [], set()
    for i, e in enumerate(data["annotations"]):
        what = f"annotations[{i}]"
        if not isinstance(e, dict):
            raise ProjectError(f"{what} is not an object")
        if e.get("image") not in keys:
            raise ProjectError(f"{what}: image {e.get('image')!r} is not in 'images'")
        if e.get("class") not in names:
            raise ProjectError(f"{what}: class {e.get('class')!r} is not in 'categories'")
        check_rel_path(e.get("file"), "masks", what)
        if "background" in e:
            check_rel_path(e.get("background"), "masks", what)
        if "complete" in e and not isinstance(e["complete"], bool):
            raise ProjectError(f"{what}: complete must be true or false, got {e['complete']!r}")
        pair = (e["image"], e["class"])
        if pair in seen:
            raise ProjectError(f"{what}: image {pair[0]!r} has two annotations of class {pair[1]!r}")
        seen.add(pair)
        entry = {k: e[k] for k in ("image", "class", "file", "background") if k in e}
        # Projects written before the flag existed: an image without painted background was taken as
        # painted completely, one with background as partly painted; they keep that meaning.
        entry["complete"] = bool(e.get("complete", "background" not in e))
        entries.append(entry)
    files = [e["file"] for e in entries] + [e["background"] for e in entries if "background" in e]
    if len(set(files)) != len(files):
        raise ProjectError("two annotations share a mask file")
    return categories, images, entries
