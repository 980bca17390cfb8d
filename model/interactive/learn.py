"""Teaching one new class from a few painted examples: the headless core of the napari "Learn" button.

`learn_class` adds a step for the class, trains it on the examples (frozen features cached, so
iterations after the first pass cost only the small trainable part) and reports whether the old
classes' predictions changed on them. The default step is dense (a per-pixel head, see
`model.network.dense_head`); `LearnConfig.prompts()` gives the published prompt step, whose delta is
then chosen on the examples. Cancel or any failure removes the step again: the model is then exactly
as before.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.augment import AugmentConfig
from ..data.labelled import LabelledImage
from ..data.transforms import TrainTransform
from ..evaluation.deltas import select_deltas
from ..network.dense_head import InstanceRule
from ..network.eclipse import EclipseModel, to_chw_tensor
from ..training.criterion import LossConfig
from ..training.engine import TrainConfig, train
from ..training.progress import Progress, RunState
from .config import Example, LearnConfig, LearnResult, OtherImages
from .crops import centre_crop, crop_to_painting

# Where the model, before the step, holds a pixel with at least this probability (score x mask), that pixel
# is taken as its old class: a negative for a dense step, on unpainted pixels and on context images.
CONFIDENT = 0.9
ABSORBING = 0.05  # an old class holding this share of the painted pixels is the new class's look-alike
CONTEXT_MIN_SHARE = 0.1  # a context image helps only if the model holds this share of it confidently


class ExampleSet:
    """The engine's view of the examples: one mask per painted instance (the whole painted region for
    stuff), labelled with the class id, plus, for dense steps, known background as masks labelled 0.
    `weights`: how often each example is drawn (painted images more than context images); None = evenly."""

    def __init__(self, examples: Sequence[Example], class_id: int, is_thing: bool, augment: AugmentConfig | None,
                 with_background: bool, weights: Sequence[float] | None = None):
        self.images = [to_chw_tensor(e.image).round().clamp(0, 255).to(torch.uint8) for e in examples]
        self.targets = [_target(e, class_id, is_thing, with_background) for e in examples]
        self.transform = TrainTransform(augment) if augment is not None else None
        self.weights = None if weights is None else (np.asarray(weights, float) / np.sum(weights)).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, augmentation_seed: int):
        image, target = self.images[index], self.targets[index]
        if self.transform is not None:
            return self.transform.apply(image, target, augmentation_seed)
        return image, target


def _target(example: Example, class_id: int, is_thing: bool, with_background: bool) -> dict:
    instances = np.asarray(example.instances)
    ids = [int(i) for i in np.unique(instances) if i > 0]
    masks = [instances == i for i in ids] if is_thing else [instances > 0]
    labels = [class_id] * len(masks)
    if with_background:
        # Painted "not this class", or, on a completely painted image, everything unpainted.
        known = np.asarray(example.background, bool) if example.partial else instances == 0
        known = known & (instances == 0)
        if known.any():
            masks.append(known)
            labels.append(0)
    return {"labels": torch.tensor(labels, dtype=torch.int64),
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
        if e.background is not None and np.asarray(e.background).shape != inst.shape:
            raise ValueError(f"example {n}: background shape {np.asarray(e.background).shape} does not match "
                             f"the annotation {inst.shape}")
    if not any((np.asarray(e.instances) > 0).any() for e in examples):
        raise ValueError("the annotations are empty: paint at least one instance of the new class")


def instance_rule(examples: Sequence[Example], is_thing: bool, look_alikes: Sequence[int],
                  config: LearnConfig) -> InstanceRule:
    """Post-processing fixed from the painting alone: segments smaller than `min_area_fraction` of the
    smallest painted instance (for stuff: a fiftieth of the median painted region) are dropped."""
    areas = []
    for e in examples:
        inst = np.asarray(e.instances)
        if is_thing:
            areas += [int(a) for a in np.bincount(inst.ravel())[1:] if a > 0]
        elif (inst > 0).any():
            areas.append(int((inst > 0).sum()))
    smallest = min(areas) * config.min_area_fraction if is_thing else float(np.median(areas)) / 50
    return InstanceRule(min_area=float(max(4.0, smallest)), look_alikes=tuple(sorted(look_alikes)),
                        foreign_ceiling=config.foreign_ceiling, snap_iou=config.snap_iou)


def find_look_alikes(examples: Sequence[Example], references: list) -> list[int]:
    """Old classes the model gives at least `ABSORBING` of the painted pixels, however unsure it is
    there (it may be sure of them on other images of the new class)."""
    painted = 0
    counts: dict[int, int] = {}
    for e, ref in zip(examples, references):
        positive = np.asarray(e.instances) > 0
        classes = ref.semantic.numpy()[positive]
        for c, n in zip(*np.unique(classes[classes > 0], return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(n)
        painted += int(positive.sum())
    return sorted(c for c, n in counts.items() if n >= ABSORBING * max(painted, 1))


def old_class_negatives(examples: Sequence[Example], references: list, context: Sequence, context_refs: list,
                        look_alikes: Sequence[int]):
    """Examples with the pixels the model already holds confidently for an old class added as known
    background: on the unpainted pixels of partly painted examples, and on context images (unpainted
    images, which may hold the new class too, so only such pixels count). The new class's look-alikes
    are never taken as negatives."""

    def negatives(ref) -> np.ndarray:
        return (ref.confidence.numpy() >= CONFIDENT) & ~np.isin(ref.semantic.numpy(), list(look_alikes))

    out = []
    for e, ref in zip(examples, references):
        if e.partial:
            e = Example(e.image, e.instances, np.asarray(e.background, bool) | negatives(ref))
        out.append(e)
    extra = []
    for image, ref in zip(context, context_refs):
        known = negatives(ref)
        if known.mean() >= CONTEXT_MIN_SHARE:
            extra.append(Example(image, np.zeros(known.shape, np.int32), known))
    return out, extra


def learn_class(
    model: EclipseModel,
    name: str,
    is_thing: bool,
    examples: Sequence[Example],
    config: LearnConfig = LearnConfig(),
    *,
    context: Sequence = (),
    color=None,
    device="cpu",
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnResult:
    """Teaches the model one new class from painted examples. `context`: other images (unpainted; they
    may show the class too): a dense step takes what the model already holds confidently there as
    negatives, so the new class does not spill onto what the model knew; the result reports what the
    step changed there (`LearnResult.others`) apart from the painted images."""
    check_examples(examples)
    if name.strip() in {c.name for c in model.classes}:
        raise ValueError(f"a class named {name.strip()!r} already exists")
    # Large images: crops around what was painted (and the middle of large context images).
    examples = crop_to_painting(examples, config.max_side)
    context = [centre_crop(c, config.max_side) for c in context]
    reference = [model.predict(e.image) for e in examples]
    context_refs = [model.predict(c) for c in context]  # before the step: for negatives and the report
    colors = None if color is None else [color]
    dense = config.learner == "dense"
    weights = None
    if dense:
        used = _spread(list(range(len(context))), config.max_context)
        look_alikes = find_look_alikes(examples, reference)
        examples, extra = old_class_negatives(examples, reference, [context[i] for i in used],
                                              [context_refs[i] for i in used], look_alikes)
        # The painted examples make two thirds of what is drawn, however many context images there are.
        weights = [2 / 3 / len(examples)] * len(examples) + [1 / 3 / len(extra)] * len(extra) if extra else None
        train_examples = list(examples) + extra
        with torch.random.fork_rng():  # the new head's initial weights depend on the seed only
            torch.manual_seed(config.seed)
            model.add_dense_step([name], [is_thing], colors, config.dense_hidden,
                                 instance_rule(examples, is_thing, look_alikes, config))
    else:
        train_examples = list(examples)
        model.add_step([name], [is_thing], config.num_prompts, colors)
    try:  # from here on, any failure removes the step again
        class_id = model.num_classes
        data = ExampleSet(train_examples, class_id, is_thing, config.augment, dense, weights)
        train_config = TrainConfig(
            iterations=config.iterations, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
            clip_norm=config.clip_norm, augment_variants=config.augment_variants,
            loss=LossConfig(num_points=config.num_points),
        )
        result = train(model, data, train_config, device=device, callback=callback, cancel=cancel)
        if result.state == RunState.CANCELLED:
            model.remove_last_step()
            return LearnResult(RunState.CANCELLED, None, None, result.seconds, result.losses, None)
        model.eval()
        table = []
        if not dense:
            deltas, table = select_deltas(model, [_labelled(e, class_id) for e in examples], reference)
            model.set_deltas(deltas)
        unchanged = old_predictions_unchanged(model, examples, reference, class_id)
        others = other_images_report(model, context, context_refs, class_id) if context else None
    except BaseException:
        model.remove_last_step()
        raise
    return LearnResult(RunState.DONE, class_id, None if dense else model.deltas[-1], result.seconds, result.losses,
                       unchanged, table, others)


def _spread(items: Sequence, count: int) -> list:
    """At most `count` of `items`, evenly spread over them (in order)."""
    items = list(items)
    if len(items) <= count:
        return items
    return [items[round(k * (len(items) - 1) / max(count - 1, 1))] for k in range(count)] if count else []


def _labelled(example: Example, class_id: int) -> LabelledImage:
    inst = np.asarray(example.instances).astype(np.int64)
    ids = [int(i) for i in np.unique(inst) if i > 0]
    return LabelledImage(example.image, inst, [{"id": i, "category_id": class_id, "iscrowd": 0} for i in ids])


def other_images_report(model, images, before, class_id: int) -> OtherImages:
    """On images that were not painted: the share of pixels outside the new class whose class held, and
    the share the new class took."""
    same = outside_total = claimed = total = 0
    for image, ref in zip(images, before):
        after, was = model.predict(image).semantic.numpy(), ref.semantic.numpy()
        outside = after != class_id
        same += int((after[outside] == was[outside]).sum())
        outside_total += int(outside.sum())
        claimed += int((~outside).sum())
        total += after.size
    return OtherImages(len(images), same / outside_total if outside_total else 1.0, claimed / max(total, 1))


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
