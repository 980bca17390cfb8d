"""A project folder: the user's painted annotations, saved continuously, plus COCO exports.

Every file is written atomically (temp file, fsync, rename; see `model.io.atomic`), so a crash or a
closed viewer never leaves a half-written file. Layout of a project folder `root`:

- ``project.json``: the index and source of truth::

      {"version": 1,
       "categories": [{"id": 1, "name": "cell", "isthing": 1, "color": [r, g, b]}, ...],
       "images": [{"id": 1, "key": "<image key>", "file": "images/<stem>.png", "width": W, "height": H,
                   "sha256": "<hash of the pixels>",
                   "name": "<layer name [plane]>", "source": "<file it came from>"}, ...],  # both optional
       "annotations": [{"image": "<image key>", "class": "<class name>",
                        "file": "masks/<class dir>/<stem>.png",
                        "background": "masks/<class dir>/<stem>.background.png",  # optional
                        "complete": false}, ...]}

  Category ids are 1-based and project-local, in order of first use. Annotations are listed in save
  order (the last saved is last); image keys and class names are stored verbatim here only. The plugin
  keys an image by the identity of its pixels (`annotations.plane_identity`), not by its layer name, so
  annotations follow renames and never land on another picture; "name" and "source" are what the
  user saw (layer name, file path) when it was last saved.
- ``images/<stem>.png``: the image, uint8 grey (L) or RGB; rewritten only when its pixels change.
- ``masks/<class dir>/<stem>.png``: one class's instance labels on one image, a lossless 16-bit grey
  PNG (0 = unlabelled, k > 0 = instance k). This is what `Project.annotations()` reads back.
- ``masks/<class dir>/<stem>.background.png``: where the user painted "not this class" (8-bit, 255 =
  background). An image may hold only background (an example without the class).
- ``complete``: the user marked every instance of the class on that image as painted, so every
  unpainted pixel is "not this class"; otherwise unpainted pixels are unknown to Learn (except the
  painted background and a thin band around painted instances). Entries of projects written before
  the flag existed read as complete where no background was painted (what they meant then).
- Exports, regenerated after every change (never read back by this module):

  - ``panoptic.json`` + ``panoptic/<stem>.png``: COCO panoptic (pixel id = R + 256 G + 256^2 B). One PNG
    per image combines every class annotated on it; where classes overlap the later-saved one wins. A
    stuff class is one segment per image, each instance of a thing class is one segment. Image
    ``file_name`` is relative to ``images/``, annotation ``file_name`` to ``panoptic/``.
  - ``instances.json``: COCO instances with RLE masks (uncompressed by overlaps): one annotation per
    thing instance and one per stuff class region, iscrowd 0.

``<stem>`` and ``<class dir>`` are file-system-safe: an ASCII slug of the name plus a hash of it, so keys
with spaces, slashes or any unicode work and never clash. One `Project` object should own a folder
at a time. This module never imports napari, Qt or torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from model.io.atomic import atomic_write_json
from model.io.images import write_png
from model.io.panoptic_format import segment_areas_and_boxes, write_panoptic_json, write_panoptic_png
from model.network.classes import default_color

from .project_files import (
    PROJECT_FILE,
    VERSION,
    ProjectError,
    check_background,
    check_color,
    check_image,
    check_instances,
    check_name,
    parse_index,
    pixel_hash,
    read_png,
    safe_name,
    same_panoptic,
    unlink,
)


@dataclass
class Annotation:
    """One class's instance labels on one image."""

    image_key: str
    class_name: str
    image: np.ndarray  # uint8 [H, W] or [H, W, 3]
    instances: np.ndarray  # int32 [H, W]; 0 = unlabelled, k > 0 = instance k
    background: np.ndarray | None = None  # bool [H, W]: painted "not this class"; None = none painted
    image_name: str | None = None  # the layer name (and plane) it was last saved from, if recorded
    complete: bool = False  # every instance on the image is painted: the rest is "not this class"


class Project:
    """The annotations stored in one project folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._categories: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []
        self._entries: list[dict[str, str]] = []  # save order
        # image key -> (panoptic segments_info, instance annotations without ids); None = rebuild all.
        self._export_cache: dict[str, tuple[list[dict], list[dict]]] | None = None
        path = self.root / PROJECT_FILE
        if path.exists():
            self._load(path)

    # ------------------------------------------------------------------ public API

    @property
    def categories(self) -> list[dict]:
        """[{"id", "name", "isthing", "color"}] in id order (copies)."""
        return [{**c, "color": list(c["color"])} for c in self._categories]

    def ensure_category(self, name: str, is_thing: bool, color: tuple[int, int, int] | None = None) -> int:
        """Return the id of class `name`, adding it if new; a given `color` replaces the stored one."""
        check_name(name, "class name")
        isthing = int(bool(is_thing))
        rgb = None if color is None else check_color(color)
        cat = self._category(name)
        if cat is not None:
            if cat["isthing"] != isthing:
                kinds = ("stuff", "thing")
                raise ProjectError(
                    f"class {name!r} is already a {kinds[cat['isthing']]} class; cannot use it as {kinds[isthing]}"
                )
            if rgb is None or rgb == cat["color"]:
                return cat["id"]
            categories = [dict(c, color=rgb) if c is cat else c for c in self._categories]
            self._commit(categories, self._images, self._entries)
            return cat["id"]
        cid = len(self._categories) + 1
        new = {"id": cid, "name": name, "isthing": isthing, "color": rgb or list(default_color(cid - 1))}
        self._commit([*self._categories, new], self._images, self._entries)
        return cid

    def save_annotation(self, image_key: str, image: np.ndarray, instances: np.ndarray, class_name: str,
                        background: np.ndarray | None = None, *, name: str | None = None,
                        source: str | None = None, complete: bool = False) -> None:
        """Store `instances` of `class_name` on `image`, with the painted background ("not this class")
        if any; `complete`: every instance on the image is painted (an image marked complete with
        nothing painted is an example without the class). Nothing painted and not complete removes the
        entry instead. `name`, `source`: what the user calls the image (layer name, file), recorded."""
        check_name(image_key, "image key")
        check_name(class_name, "class name")
        if self._category(class_name) is None:
            raise ProjectError(f"unknown class {class_name!r}: call ensure_category() first")
        image = check_image(image)
        instances = check_instances(instances, image.shape[:2])
        background = None if background is None else check_background(background, image.shape[:2])
        if background is not None:
            background = background & (instances == 0)  # an instance painted over background wins
            background = background if background.any() else None
        if not instances.any() and background is None and not complete:
            self.remove_annotation(image_key, class_name)
            return

        entry = self._entry(image_key, class_name)
        info = self._image_info(image_key)
        others = [e for e in self._entries if e["image"] == image_key and e["class"] != class_name]
        if info is not None and others and (info["height"], info["width"]) != image.shape[:2]:
            raise ProjectError(
                f"image {image_key!r} is {info['height']}x{info['width']} in this project (annotated for "
                f"{others[0]['class']!r}), but the new image is {image.shape[0]}x{image.shape[1]}"
            )

        digest = pixel_hash(image)
        images = list(self._images)
        if info is None:
            stem = safe_name(image_key, {Path(i["file"]).stem.lower() for i in self._images})
            info = {
                "id": max((i["id"] for i in self._images), default=0) + 1,
                "key": image_key,
                "file": f"images/{stem}.png",
            }
            images.append(info)
        stem = Path(info["file"]).stem
        labels = {k: v for k, v in (("name", name), ("source", source)) if v is not None}
        if info.get("sha256") != digest or not (self.root / info["file"]).is_file():
            new_info = {**info, "width": int(image.shape[1]), "height": int(image.shape[0]), "sha256": digest,
                        **labels}
            images = [new_info if i is info else i for i in images]
            write_png(self.root / info["file"], image)
        elif any(info.get(k) != v for k, v in labels.items()):
            images = [{**info, **labels} if i is info else i for i in images]

        mask_file = entry["file"] if entry else f"masks/{self._class_dir(class_name)}/{stem}.png"
        write_png(self.root / mask_file, instances.astype("<u2"))
        new_entry = {"image": image_key, "class": class_name, "file": mask_file}
        stale_background = entry.get("background") if entry else None
        if background is not None:
            new_entry["background"] = mask_file[: -len(".png")] + ".background.png"
            write_png(self.root / new_entry["background"], background.astype(np.uint8) * 255)
            stale_background = None
        new_entry["complete"] = bool(complete)
        entries = [e for e in self._entries if e is not entry]
        entries.append(new_entry)
        self._commit(self._categories, images, entries, changed=image_key)
        if stale_background:  # the index no longer refers to it
            unlink(self.root / stale_background)

    def remove_annotation(self, image_key: str, class_name: str) -> None:
        """Delete the stored annotation of `class_name` on `image_key` (no-op when there is none)."""
        check_name(image_key, "image key")
        check_name(class_name, "class name")
        entry = self._entry(image_key, class_name)
        if entry is None:
            return
        entries = [e for e in self._entries if e is not entry]
        images = self._images
        orphan = None
        if not any(e["image"] == image_key for e in entries):
            orphan = self._image_info(image_key)
            images = [i for i in self._images if i is not orphan]
        self._commit(self._categories, images, entries, changed=image_key)
        # The index no longer refers to these files; a crash before this point only leaves orphans.
        unlink(self.root / entry["file"])
        if entry.get("background"):
            unlink(self.root / entry["background"])
        if orphan is not None:
            unlink(self.root / orphan["file"])
            unlink(self.root / "panoptic" / f"{Path(orphan['file']).stem}.png")

    def rekey_image(self, old_key: str, new_key: str, name: str | None = None) -> None:
        """Gives a stored image (and its annotations) another key, e.g. its pixel identity instead of
        the layer name projects were keyed by before; refused if `new_key` is taken."""
        check_name(new_key, "image key")
        info = self._image_info(old_key)
        if info is None:
            raise ProjectError(f"no image {old_key!r} in this project")
        if self._image_info(new_key) is not None:
            raise ProjectError(f"image key {new_key!r} is already used")
        new_info = {**info, "key": new_key, **({"name": name} if name is not None else {})}
        images = [new_info if i is info else i for i in self._images]
        entries = [{**e, "image": new_key} if e["image"] == old_key else e for e in self._entries]
        self._export_cache = None
        self._commit(self._categories, images, entries)

    def image_names(self) -> dict[str, str]:
        """Image key -> the name recorded with it (the layer name; for old projects the key itself)."""
        return {i["key"]: i.get("name", i["key"]) for i in self._images}

    def annotations(self) -> list[Annotation]:
        """Everything stored, read back from disk, sorted by (image_key, class_name)."""
        return self._read(sorted(self._entries, key=lambda e: (e["image"], e["class"])))

    def examples_for(self, class_name: str) -> list[Annotation]:
        """The non-empty annotations of one class (instances, painted background, or an image marked
        complete), sorted by image key."""
        entries = sorted((e for e in self._entries if e["class"] == class_name), key=lambda e: e["image"])
        return [a for a in self._read(entries) if a.instances.any() or a.background is not None or a.complete]

    def stored_parts(self, image_key: str, class_name: str, instances: bool, background: bool):
        """What is stored for one class on one image, reading only the masks asked for (not the image):
        (instances or None, background or None, complete), or None where nothing is stored."""
        e = self._entry(image_key, class_name)
        if e is None:
            return None
        inst = read_png(self.root / e["file"], np.uint16).astype(np.int32) if instances else None
        back = read_png(self.root / e["background"], np.uint8) > 0 if background and e.get("background") else None
        return inst, back, bool(e.get("complete", False))

    # ------------------------------------------------------------------ index

    def _category(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self._categories if c["name"] == name), None)

    def _image_info(self, key: str) -> dict[str, Any] | None:
        return next((i for i in self._images if i["key"] == key), None)

    def _entry(self, key: str, class_name: str) -> dict[str, str] | None:
        return next((e for e in self._entries if e["image"] == key and e["class"] == class_name), None)

    def _class_dir(self, class_name: str) -> str:
        """The class's mask folder: reuse an existing one, else a safe name no other class uses."""
        for e in self._entries:
            if e["class"] == class_name:
                return PurePosixPath(e["file"]).parent.name
        taken = {PurePosixPath(e["file"]).parent.name.lower() for e in self._entries}
        return safe_name(class_name, taken)

    def _commit(self, categories: list, images: list, entries: list, changed: str | None = None) -> None:
        """Write project.json, then adopt the new state and regenerate the exports."""
        data = {"version": VERSION, "categories": categories, "images": images, "annotations": entries}
        atomic_write_json(self.root / PROJECT_FILE, data, sort_keys=False)
        self._categories, self._images, self._entries = categories, images, entries
        try:
            self._export(changed)
        except BaseException:
            self._export_cache = None  # rebuild everything on the next change
            raise

    def _load(self, path: Path) -> None:
        try:
            text = path.read_bytes()
        except OSError as e:
            raise ProjectError(f"{path}: cannot read the project file ({e})") from e
        try:
            data = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProjectError(f"{path}: corrupt project file, not valid JSON ({e})") from e
        try:
            self._categories, self._images, self._entries = parse_index(data)
        except (ProjectError, KeyError, TypeError, ValueError) as e:
            raise ProjectError(f"{path}: corrupt project file: {e}") from e

    def _read(self, entries: list[dict[str, str]]) -> list[Annotation]:
        images: dict[str, np.ndarray] = {}
        out = []
        for e in entries:
            key = e["image"]
            info = self._image_info(key)
            if key not in images:
                images[key] = read_png(self.root / info["file"], np.uint8)
            image = images[key]
            instances = read_png(self.root / e["file"], np.uint16).astype(np.int32)
            if instances.ndim != 2 or instances.shape != image.shape[:2]:
                raise ProjectError(
                    f"{self.root / e['file']}: mask is {instances.shape}, its image {info['file']} is {image.shape}"
                )
            background = None
            if e.get("background"):
                background = read_png(self.root / e["background"], np.uint8) > 0
                if background.shape != instances.shape:
                    raise ProjectError(f"{self.root / e['background']}: mask is {background.shape}, not {instances.shape}")
            out.append(Annotation(key, e["class"], image.copy(), instances, background, info.get("name"),
                                  bool(e.get("complete", False))))
        return out

    # ------------------------------------------------------------------ exports

    def _export(self, changed: str | None) -> None:
        """Regenerate the panoptic PNG of `changed` (all PNGs after opening or a failure) and both JSONs."""
        keys = [i["key"] for i in self._images]
        if self._export_cache is None:
            self._export_cache = {}
            todo = keys
        else:
            todo = [changed] if changed in keys else []
        for key in list(self._export_cache):
            if key not in keys:
                del self._export_cache[key]
        for key in todo:
            self._export_cache[key] = self._export_image(key)

        panoptic_images, panoptic_anns, coco_anns = [], [], []
        for info in sorted(self._images, key=lambda i: i["id"]):
            stem = Path(info["file"]).stem
            panoptic_images.append(
                {
                    "id": info["id"],
                    "file_name": f"{stem}.png",
                    "width": info["width"],
                    "height": info["height"],
                    "image_key": info["key"],
                }
            )
            segments, instances = self._export_cache[info["key"]]
            panoptic_anns.append({"image_id": info["id"], "file_name": f"{stem}.png", "segments_info": segments})
            for ann in instances:
                coco_anns.append({"id": len(coco_anns) + 1, "image_id": info["id"], **ann})
        categories = self.categories
        write_panoptic_json(
            self.root / "panoptic.json",
            {"images": panoptic_images, "annotations": panoptic_anns, "categories": categories},
        )
        atomic_write_json(
            self.root / "instances.json",
            {"images": panoptic_images, "annotations": coco_anns, "categories": categories},
            indent=None,
            sort_keys=False,
        )

    def _export_image(self, key: str) -> tuple[list[dict], list[dict]]:
        """Write one image's panoptic PNG; return its segments_info and its COCO instance annotations."""
        info = self._image_info(key)
        cat_of = {c["name"]: c for c in self._categories}
        height, width = info["height"], info["width"]
        id_map = np.zeros((height, width), dtype=np.int64)
        segment_cat: list[int] = [0]  # index = panoptic segment id
        instance_anns: list[dict] = []
        for e in self._entries:  # save order: later classes paint over earlier ones
            if e["image"] != key:
                continue
            cat = cat_of[e["class"]]
            labels = read_png(self.root / e["file"], np.uint16).astype(np.int64)
            if labels.shape != (height, width):
                raise ProjectError(f"{self.root / e['file']}: mask is {labels.shape}, image is {(height, width)}")
            ids = np.unique(labels[labels > 0]).tolist()
            parts = (labels == k for k in ids) if cat["isthing"] else [labels > 0]
            for part in parts:
                id_map[part] = len(segment_cat)
                segment_cat.append(cat["id"])
                rle = mask_utils.encode(np.asfortranarray(part.astype(np.uint8)))
                instance_anns.append(
                    {
                        "category_id": cat["id"],
                        "segmentation": {
                            "size": [int(s) for s in rle["size"]],
                            "counts": rle["counts"].decode("ascii"),
                        },
                        "area": int(mask_utils.area(rle)),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )

        segments = []
        # Segments entirely painted over by a later class are not on the map, so not listed.
        for sid, (area, bbox) in sorted(segment_areas_and_boxes(id_map).items()):
            segments.append({"id": sid, "category_id": segment_cat[sid], "iscrowd": 0, "area": area, "bbox": bbox})
        png = self.root / "panoptic" / f"{Path(info['file']).stem}.png"
        if not same_panoptic(png, id_map):
            png.parent.mkdir(exist_ok=True)
            write_panoptic_png(png, id_map)
        return segments, instance_anns
