"""Painted examples as the engine sees them: checks, several classes' paintings of one image merged,
and the training targets (one mask per painted instance, plus the known background)."""

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.augment import AugmentConfig
from ..data.labelled import LabelledImage
from ..data.transforms import TrainTransform
from ..network.eclipse import to_chw_tensor
from .config import Example, NewClass


def check_examples(examples: Sequence[Example], what: str = "") -> None:
    """Clear errors for what cannot be learned from."""
    where = f"{what}: " if what else ""
    if not examples:
        raise ValueError(f"{where}no examples: paint at least one instance of the new class")
    for n, e in enumerate(examples):
        image = to_chw_tensor(e.image)
        inst = np.asarray(e.instances)
        if inst.ndim != 2 or tuple(inst.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"{where}example {n}: annotation shape {inst.shape} does not match the image "
                             f"{tuple(image.shape[-2:])}")
        if not np.issubdtype(inst.dtype, np.integer):
            raise ValueError(f"{where}example {n}: annotations must be integer labels, got {inst.dtype}")
        if e.background is not None and np.asarray(e.background).shape != inst.shape:
            raise ValueError(f"{where}example {n}: background shape {np.asarray(e.background).shape} does not "
                             f"match the annotation {inst.shape}")
    if not any((np.asarray(e.instances) > 0).any() for e in examples):
        raise ValueError(f"{where}the annotations are empty: paint at least one instance of the new class")


def image_digest(image) -> str:
    """A digest of an image's pixels (with its shape and dtype): what identifies an image across layers."""
    array = np.ascontiguousarray(np.asarray(image))
    return hashlib.blake2b(f"{array.shape}|{array.dtype.str}|".encode() + array.tobytes(), digest_size=16).hexdigest()


def merge_classes(classes: Sequence[NewClass]) -> list[Example]:
    """One example per image for a step of several classes: the paintings of one image (by its pixels)
    are laid together, instances renumbered, each tagged with its class's index in the step. Painted
    background is the union of what was painted; the image counts as painted completely (every
    unpainted pixel is none of the step's classes) only where every class's painting of it is."""
    merged: dict[str, Example] = {}
    order: list[str] = []
    for k, c in enumerate(classes):
        for n, e in enumerate(c.examples):
            key = image_digest(e.image) if len(classes) > 1 else f"{k}:{n}"
            inst = np.asarray(e.instances).astype(np.int32)
            mine = {int(i): k for i in np.unique(inst) if i > 0}
            if key not in merged:
                merged[key] = Example(e.image, inst, e.background, mine, e.complete)
                order.append(key)
                continue
            base = merged[key]
            offset = int(base.instances.max(initial=0))
            free = base.instances == 0  # where two classes were painted, the first keeps the pixel
            instances = np.where(free & (inst > 0), inst + offset, base.instances)
            tags = dict(base.instance_classes) | {i + offset: k for i in mine}
            backgrounds = [b for b in (base.background, e.background) if b is not None]
            background = np.logical_or.reduce([np.asarray(b, bool) for b in backgrounds]) if backgrounds else None
            merged[key] = Example(base.image, instances, background, tags, base.complete and e.complete)
    return [merged[key] for key in order]


def class_index_map(example: Example) -> dict[int, int]:
    """Instance id -> the index of its class in the step (0 for every instance of a one-class example)."""
    ids = [int(i) for i in np.unique(np.asarray(example.instances)) if i > 0]
    tags = example.instance_classes or {}
    return {i: tags.get(i, 0) for i in ids}


def _target(example: Example, class_ids: list[int], is_thing: list[bool]) -> dict:
    instances = np.asarray(example.instances)
    masks, labels = [], []
    classes = class_index_map(example)
    for k, (class_id, thing) in enumerate(zip(class_ids, is_thing)):
        ids = [i for i, c in classes.items() if c == k]
        if not ids:
            continue
        if thing:
            masks += [instances == i for i in ids]
            labels += [class_id] * len(ids)
        else:  # a stuff class is one region
            masks.append(np.isin(instances, ids))
            labels.append(class_id)
    known = known_background(example, is_thing)  # label 0: the losses learn only where the painting says
    if known.any():
        masks.append(known)
        labels.append(0)
    return {"labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, *instances.shape, dtype=bool)}


def known_background(example: Example, is_thing: Sequence[bool]) -> np.ndarray:
    """Where the painting says "none of the step's classes", bool [H, W]: on a completely painted image
    every unpainted pixel; otherwise the painted background and a band just outside each painted thing
    instance (about a quarter of the painted instances' median radius wide, 2 to 8 pixels): an
    instance is painted whole, so what borders it is not that instance (where it touches another
    instance of the class, the band errs, and it is thin for that reason)."""
    instances = np.asarray(example.instances)
    painted = instances > 0
    if example.complete:
        return ~painted
    known = np.zeros(painted.shape, bool) if example.background is None else np.asarray(example.background, bool)
    things = [i for i, k in class_index_map(example).items() if is_thing[k]]
    if things:
        areas = np.bincount(instances.ravel())[things]
        width = int(np.clip(round(0.25 * np.sqrt(np.median(areas) / np.pi)), 2, 8))
        mask = np.isin(instances, things)
        known = known | (ndimage.binary_dilation(mask, iterations=width) & ~mask)
    return known & ~painted


class ExampleSet:
    """The engine's view of the examples: one mask per painted instance (the whole painted region for
    stuff), labelled with its class id, plus the known background as a mask labelled 0.
    `weights`: how often each example is drawn (painted images more than context images); None = evenly."""

    def __init__(self, examples: Sequence[Example], class_ids: list[int], is_thing: list[bool],
                 augment: AugmentConfig | None, weights: Sequence[float] | None = None):
        self.images = [to_chw_tensor(e.image).round().clamp(0, 255).to(torch.uint8) for e in examples]
        self.targets = [_target(e, list(class_ids), list(is_thing)) for e in examples]
        self.transform = TrainTransform(augment) if augment is not None else None
        self.weights = None if weights is None else (np.asarray(weights, float) / np.sum(weights)).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, augmentation_seed: int):
        image, target = self.images[index], self.targets[index]
        if self.transform is not None:
            return self.transform.apply(image, target, augmentation_seed)
        return image, target


def labelled(example: Example, class_ids: list[int], is_thing: Sequence[bool] | None = None,
             background_category: int | None = None) -> LabelledImage:
    """An example as a labelled image (for the delta choice of prompt steps): its instances; with
    `background_category`, its known background (`known_background`) as one segment of that category,
    so a new-class segment there is a false positive, while unknown pixels stay void."""
    inst = np.asarray(example.instances).astype(np.int64)
    segments = [{"id": i, "category_id": class_ids[k], "iscrowd": 0} for i, k in class_index_map(example).items()]
    if background_category is not None:
        known = known_background(example, is_thing if is_thing is not None else [True] * len(class_ids))
        if known.any():
            background = int(inst.max(initial=0)) + 1
            inst = np.where(known, background, inst)
            segments.append({"id": background, "category_id": background_category, "iscrowd": 0})
    return LabelledImage(example.image, inst, segments)
