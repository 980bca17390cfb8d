"""Labelled images for evaluation: an image with its ground truth in the model's learning-order ids."""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .coco_panoptic import PanopticDataset
from .scenarios import Scenario


@dataclass
class LabelledImage:
    image: np.ndarray  # uint8 [H,W,3] (or anything `EclipseModel.predict` reads)
    gt_ids: np.ndarray  # [H,W] segment ids, 0 = void
    gt_segments: list[dict]  # {"id", "category_id" (learning id), "iscrowd"}


def labelled_images(dataset: PanopticDataset, scenario: Scenario, keep: Iterable[int] | None = None):
    """Evaluation view: ground truth in learning ids; segments of classes outside `keep` (default: all
    the scenario's classes) become void."""
    class_of = scenario.class_of
    keep = frozenset(keep) if keep is not None else frozenset(class_of)
    for i in range(len(dataset)):
        item = dataset[i]
        kept = [s for s in item.segments if s["category_id"] in keep]
        ids = np.where(np.isin(item.id_map, [s["id"] for s in kept]), item.id_map, 0)
        segments = [
            {"id": s["id"], "category_id": class_of[s["category_id"]], "iscrowd": s.get("iscrowd", 0)} for s in kept
        ]
        yield LabelledImage(item.image, ids, segments)
