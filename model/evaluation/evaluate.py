"""Evaluation of a model on labelled images (PQ, and mIoU of the semantic output).

Ground truth here uses the model's learning-order class ids (1-based, 0 = void): datasets convert once,
through their scenario, before calling in.
"""

from collections.abc import Iterable

import numpy as np

from ..data.labelled import LabelledImage
from ..network.eclipse import EclipseModel
from ..network.postprocess import PanopticResult
from .metrics import PanopticQuality, SemanticIoU, panoptic_to_semantic


def segments_as_dicts(result: PanopticResult) -> list[dict]:
    return [{"id": s.id, "category_id": s.category_id} for s in result.segments]


def _gt_semantic(item: LabelledImage):
    """The image's own semantic annotation where it has one, else each pixel's (non-crowd) segment's class."""
    if item.gt_semantic is not None:
        return item.gt_semantic
    return panoptic_to_semantic(item.gt_ids, [s for s in item.gt_segments if not s.get("iscrowd")])


def test_input(image, test_size: tuple[int, int | None] | None):
    """The image the model sees at test time: resized so its short side is test_size[0] (long side at
    most test_size[1]), as the paper's evaluation does; None: as it is. Predictions are brought back to
    the ground truth's size."""
    if test_size is None:
        return image
    from ..data.transforms import image_to_tensor, test_transform

    return test_transform(*test_size)(image_to_tensor(np.asarray(image)))[0]


def evaluate(
    model: EclipseModel,
    images: Iterable[LabelledImage],
    groups: dict[str, list[int]] | None = None,
    semantic: bool = False,
    categories: dict[int, bool] | None = None,
    test_size: tuple[int, int | None] | None = None,
) -> dict:
    """PQ (and mIoU when `semantic`) of `model` over labelled images, summarised per class group.

    categories: learning id -> is_thing of every class the ground truth may hold (default: the model's);
    classes the model has not learned yet still count, as false negatives. test_size: (short side, max
    long side) the images are resized to before predicting (`test_input`).
    """
    if categories is None:
        categories = {i + 1: c.is_thing for i, c in enumerate(model.classes)}
    pq = PanopticQuality(categories)
    miou = SemanticIoU(max(categories)) if semantic else None
    for n, item in enumerate(images):
        result = model.predict(test_input(item.image, test_size), output_size=tuple(item.gt_ids.shape))
        pred_ids = result.panoptic_seg.numpy()
        pq.update(item.gt_ids, item.gt_segments, pred_ids, segments_as_dicts(result), where=f"image {n}")
        if miou is not None:
            miou.update(_gt_semantic(item), result.semantic.numpy(), where=f"image {n}")
    out = {"pq": pq.summary(groups), "pq_per_class": pq.compute(), "num_images": pq.num_images}
    if miou is not None:
        out["miou"] = miou.summary(groups)
        out["iou_per_class"] = miou.compute()
    return out


def evaluate_semantic(
    model: EclipseModel,
    images: Iterable[LabelledImage],
    groups: dict[str, list[int]] | None = None,
    num_classes: int | None = None,
    test_size: tuple[int, int | None] | None = None,
) -> dict:
    """mIoU of `model`'s semantic inference (`EclipseModel.predict_semantic`) over labelled images, per
    class group, against `_gt_semantic`. Classes
    1..`num_classes` (default: the model's) count, unlearned ones as misses."""
    miou = SemanticIoU(num_classes or model.num_classes)
    n = 0
    for n, item in enumerate(images, start=1):
        semantic = model.predict_semantic(test_input(item.image, test_size), output_size=tuple(item.gt_ids.shape))
        miou.update(_gt_semantic(item), semantic.numpy(), where=f"image {n}")
    return {"miou": miou.summary(groups), "iou_per_class": miou.compute(), "num_images": n}
