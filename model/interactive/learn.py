"""Teaching one new class from a few painted examples: the headless core of the napari "Learn" button.

`learn_class` adds a prompt step, trains it on the examples (frozen features cached, so iterations after
the first pass cost only the small decoder), chooses delta on the examples, and reports whether the old
classes' predictions changed on them. Cancel or failure removes the step again: the model is then
exactly as before.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.augment import AugmentConfig
from ..data.labelled import LabelledImage
from ..data.transforms import TrainTransform
from ..evaluation.deltas import select_deltas
from ..network.eclipse import EclipseModel, to_chw_tensor
from ..training.criterion import LossConfig
from ..training.engine import NonFiniteLossError, TrainConfig, train
from ..training.progress import Progress, RunState
from .config import Example, LearnConfig, LearnResult


class ExampleSet:
    """The engine's view of the examples: target = the painted instances of the new class."""

    def __init__(self, examples: Sequence[Example], class_id: int, is_thing: bool, augment: AugmentConfig | None):
        self.images = [to_chw_tensor(e.image).round().clamp(0, 255).to(torch.uint8) for e in examples]
        self.targets = [_target(e.instances, class_id, is_thing) for e in examples]
        self.transform = TrainTransform(augment) if augment is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, augmentation_seed: int):
        image, target = self.images[index], self.targets[index]
        if self.transform is not None:
            return self.transform.apply(image, target, augmentation_seed)
        return image, target


def _target(instances: np.ndarray, class_id: int, is_thing: bool) -> dict:
    ids = [int(i) for i in np.unique(instances) if i > 0]
    masks = [instances == i for i in ids] if is_thing else [instances > 0]
    return {"labels": torch.full((len(masks),), class_id, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, *instances.shape, dtype=bool)}


def check_examples(examples: Sequence[Example]) -> None:
    """Clear errors for what cannot be learned from."""
    if not examples:
        raise ValueError("no examples: paint at least one instance of the new class")
    for n, e in enumerate(examples):
        image = to_chw_tensor(e.image)
        inst = np.asarray(e.instances)
        if inst.ndim != 2 or tuple(inst.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"example {n}: annotation shape {inst.shape} does not match the image {tuple(image.shape[-2:])}")
        if not np.issubdtype(inst.dtype, np.integer):
            raise ValueError(f"example {n}: annotations must be integer labels, got {inst.dtype}")
    if not any((np.asarray(e.instances) > 0).any() for e in examples):
        raise ValueError("the annotations are empty: paint at least one instance of the new class")


def learn_class(
    model: EclipseModel,
    name: str,
    is_thing: bool,
    examples: Sequence[Example],
    config: LearnConfig = LearnConfig(),
    *,
    color=None,
    device="cpu",
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnResult:
    check_examples(examples)
    if name.strip() in {c.name for c in model.classes}:
        raise ValueError(f"a class named {name.strip()!r} already exists")
    reference = [model.predict(e.image) for e in examples]
    model.add_step([name], [is_thing], config.num_prompts, None if color is None else [color])
    class_id = model.num_classes
    data = ExampleSet(examples, class_id, is_thing, config.augment)
    train_config = TrainConfig(
        iterations=config.iterations, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        augment_variants=config.augment_variants, loss=LossConfig(num_points=config.num_points),
    )
    try:
        result = train(model, data, train_config, device=device, callback=callback, cancel=cancel)
    except (NonFiniteLossError, RuntimeError, ValueError):
        model.remove_last_step()
        raise
    if result.state == RunState.CANCELLED:
        model.remove_last_step()
        return LearnResult(RunState.CANCELLED, None, None, result.seconds, result.losses, None)
    labelled = [_labelled(e, class_id) for e in examples]
    deltas, table = select_deltas(model, labelled, reference)
    model.set_deltas(deltas)
    return LearnResult(RunState.DONE, class_id, deltas[-1], result.seconds, result.losses,
                       old_predictions_unchanged(model, examples, reference, class_id), table)


def _labelled(example: Example, class_id: int) -> LabelledImage:
    inst = np.asarray(example.instances).astype(np.int64)
    ids = [int(i) for i in np.unique(inst) if i > 0]
    return LabelledImage(example.image, inst, [{"id": i, "category_id": class_id, "iscrowd": 0} for i in ids])


def old_predictions_unchanged(model, examples, reference, class_id: int) -> float:
    """Share of pixels, outside the new class's predicted segments, whose class label is unchanged."""
    same = total = 0
    for example, before in zip(examples, reference):
        after = model.predict(example.image)
        semantic_after, semantic_before = after.semantic.numpy(), before.semantic.numpy()
        outside = semantic_after != class_id
        same += int((semantic_after[outside] == semantic_before[outside]).sum())
        total += int(outside.sum())
    return same / total if total else 1.0
