"""Labelled images for evaluation: an image with its ground truth in the model's learning-order ids."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ade20k import read_label_png
from .coco_panoptic import PanopticDataset
from .scenarios import Scenario


@dataclass
class LabelledImage:
    image: np.ndarray  # uint8 [H,W,3] (or anything `EclipseModel.predict` reads)
    gt_ids: np.ndarray  # [H,W] segment ids, 0 = void
    gt_segments: list[dict]  # {"id", "category_id" (learning id), "iscrowd"}
    # [H,W] learning ids (0 = void) from a dataset's own semantic annotation, where it has one (ADE20K's
    # annotations/*.png); None: the semantic ground truth comes from the segments.
    gt_semantic: np.ndarray | None = None


def labelled_images(dataset: PanopticDataset, scenario: Scenario, keep: Iterable[int] | None = None,
                    semantic_folder: Path | None = None):
    """Evaluation view: ground truth in learning ids; segments of classes outside `keep` (default: all
    the scenario's classes) become void. `semantic_folder`: where each image's semantic annotation PNG
    (same stem, dataset category ids, 0 = void) lies, read as `gt_semantic`."""
    class_of = scenario.class_of
    keep = frozenset(keep) if keep is not None else frozenset(class_of)
    lookup = np.zeros(256, np.int64)  # dataset id -> learning id (0 for classes not kept)
    for d in keep:
        if 0 < d < 256:
            lookup[d] = class_of[d]
    for i in range(len(dataset)):
        item = dataset[i]
        kept = [s for s in item.segments if s["category_id"] in keep]
        ids = np.where(np.isin(item.id_map, [s["id"] for s in kept]), item.id_map, 0)
        segments = [
            {"id": s["id"], "category_id": class_of[s["category_id"]], "iscrowd": s.get("iscrowd", 0)} for s in kept
        ]
        semantic = None
        if semantic_folder is not None:
            path = Path(semantic_folder) / (Path(item.file_name).stem + ".png")
            labels = read_label_png(path)
            if labels.shape != ids.shape:
                raise ValueError(f"{path}: {labels.shape[0]}x{labels.shape[1]}, but its image is "
                                 f"{ids.shape[0]}x{ids.shape[1]}")
            semantic = lookup[labels]
        yield LabelledImage(item.image, ids, segments, semantic)
