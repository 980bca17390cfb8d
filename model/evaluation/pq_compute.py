"""Panoptic quality over folders in COCO-panoptic format, like panopticapi's `pq_compute`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io.panoptic_format import read_panoptic_json, read_panoptic_png
from .metrics import PanopticQuality, to_jsonable


def read_categories(gt_json: Mapping[str, Any], where: str) -> dict[int, dict[str, Any]]:
    """The gt json's categories in file order: {id: {"name", "isthing"}}."""
    cats = gt_json.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{where}: the gt json needs a non-empty 'categories' list")
    out: dict[int, dict[str, Any]] = {}
    for i, cat in enumerate(cats):
        if "isthing" not in cat:
            raise ValueError(f"{where}: categories[{i}] (id {cat.get('id')}) has no 'isthing'")
        cid = int(cat["id"])
        if cid in out:
            raise ValueError(f"{where}: category id {cid} is listed twice")
        out[cid] = {"name": str(cat.get("name", cid)), "isthing": bool(cat["isthing"])}
    return out


def _by_image_id(anns: list[dict[str, Any]], where: str) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for ann in anns:
        if ann["image_id"] in out:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} has more than one annotation")
        out[ann["image_id"]] = ann
    return out


def pq_compute(
    gt_json_path: str | os.PathLike,
    gt_folder: str | os.PathLike,
    pred_json_path: str | os.PathLike,
    pred_folder: str | os.PathLike,
    groups: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Any]:
    """PQ of the predictions against the gt, over every gt image.

    Returns {"summary": {group: {pq, sq, rq, n}}, "per_class": {category_id: {name, isthing, pq, sq,
    rq, tp, fp, fn, iou_sum}}, "num_images": int}. Scores are fractions; a group with n == 0 has None
    scores. Predictions for images not in the gt are ignored, as in panopticapi.
    """
    gt_json = read_panoptic_json(gt_json_path)
    pred_json = read_panoptic_json(pred_json_path)
    categories = read_categories(gt_json, str(gt_json_path))
    gt_anns = _by_image_id(gt_json["annotations"], str(gt_json_path))
    pred_anns = _by_image_id(pred_json["annotations"], str(pred_json_path))

    pq = PanopticQuality({cid: c["isthing"] for cid, c in categories.items()})
    for image_id, gt_ann in gt_anns.items():
        if image_id not in pred_anns:
            raise ValueError(f"{pred_json_path}: no prediction for the gt image with id {image_id!r}")
        pred_ann = pred_anns[image_id]
        gt_png = Path(gt_folder) / gt_ann["file_name"]
        pred_png = Path(pred_folder) / pred_ann["file_name"]
        if not gt_png.is_file():
            raise FileNotFoundError(f"gt PNG for image id {image_id!r} not found: {gt_png}")
        if not pred_png.is_file():
            raise FileNotFoundError(f"prediction PNG for image id {image_id!r} not found: {pred_png}")
        pq.update(
            read_panoptic_png(gt_png),
            gt_ann["segments_info"],
            read_panoptic_png(pred_png),
            pred_ann["segments_info"],
            where=f"image id {image_id!r}",
        )

    per_class = {
        cid: {"name": categories[cid]["name"], "isthing": categories[cid]["isthing"], **to_jsonable(r)}
        for cid, r in pq.compute().items()
    }
    return {
        "summary": to_jsonable(pq.summary(groups)),
        "per_class": to_jsonable(per_class),
        "num_images": pq.num_images,
    }
