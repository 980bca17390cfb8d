"""What the engine trains on: a panoptic dataset seen through a scenario step and an augmentation."""

from collections.abc import Iterable

import torch

from .augment import AugmentConfig
from .coco_panoptic import PanopticDataset, build_targets
from .scenarios import Scenario
from .transforms import TrainTransform, image_to_tensor


class StepTrainingSet:
    """`sample(index, augmentation_seed)` -> (uint8 [3,H,W], {"labels", "masks"}) in learning-order ids.

    keep: dataset category ids whose segments are kept (ECLIPSE: the current step's classes only; the
    other segments are deleted, so their pixels have no target). None keeps every class the scenario
    knows up to `up_to_step`. A semantic scenario's target holds one mask per class (Mask2Former's
    semantic training: the instances of a class are one region).
    """

    def __init__(
        self,
        dataset: PanopticDataset,
        scenario: Scenario,
        augment: AugmentConfig | None,
        keep: Iterable[int] | None = None,
    ):
        self.dataset, self.scenario = dataset, scenario
        self.class_of = scenario.class_of
        self.keep = frozenset(keep) if keep is not None else frozenset(self.class_of)
        self.transform = TrainTransform(augment) if augment is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, augmentation_seed: int) -> tuple[torch.Tensor, dict]:
        item = self.dataset[index]
        target = build_targets(item, self.class_of, self.keep)
        if self.scenario.task == "semantic":
            target = per_class_target(target)
        image = image_to_tensor(item.image)
        if self.transform is not None:
            image, target = self.transform.apply(image, target, augmentation_seed)
        return image, target


def per_class_target(target: dict) -> dict:
    """One mask per class: the union of the class's masks, classes in first-seen order."""
    labels, masks = target["labels"], target["masks"]
    classes = list(dict.fromkeys(labels.tolist()))
    if len(classes) == len(labels):
        return target
    merged = torch.stack([masks[labels == c].any(0) for c in classes]) if classes else masks
    return {"labels": torch.tensor(classes, dtype=torch.int64), "masks": merged}
