"""What the model already knows, used by a dense step: its look-alikes of the new classes, its
confident old classes as negatives, and the post-processing rule fixed from the painting."""

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..network.dense_segments import InstanceRule
from .config import Example, LearnConfig
from .examples import class_index_map, known_background

# Where the model, before the step, holds a pixel with at least this probability (score x mask), that pixel
# is taken as its old class: a negative for a dense step, on unpainted pixels and on context images.
CONFIDENT = 0.9
ABSORBING = 0.05  # an old class holding this share of the painted pixels is the new class's look-alike
CONTEXT_MIN_SHARE = 0.1  # a context image helps only if the model holds this share of it confidently


def instance_rule(examples: Sequence[Example], is_thing: Sequence[bool], look_alikes: Sequence[int],
                  config: LearnConfig) -> InstanceRule:
    """Post-processing fixed from the painting alone: segments smaller than `min_area_fraction` of the
    smallest painted thing instance (a step of stuff only: a fiftieth of the median painted region)
    are dropped."""
    is_thing = [is_thing] if isinstance(is_thing, bool) else list(is_thing)
    things, stuff = [], []
    for e in examples:
        inst = np.asarray(e.instances)
        areas = np.bincount(inst.ravel())
        for i, k in class_index_map(e).items():
            if is_thing[k]:
                things.append(int(areas[i]))
        if (inst > 0).any():
            stuff.append(int((inst > 0).sum()))
    smallest = min(things) * config.min_area_fraction if things else float(np.median(stuff)) / 50
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
            painted = np.zeros(np.shape(e.instances), bool) if e.background is None else np.asarray(e.background, bool)
            e = Example(e.image, e.instances, painted | negatives(ref), e.instance_classes)
        out.append(e)
    extra = []
    for image, ref in zip(context, context_refs):
        known = negatives(ref)
        if known.mean() >= CONTEXT_MIN_SHARE:
            extra.append(Example(image, np.zeros(known.shape, np.int32), known))
    return out, extra


# Core thresholds (normalised distance above which a pixel seeds an instance) a dense step may take;
# the one that best reproduces the painted instances on the painted images is kept.
CORE_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)


def choose_core(model, raws: list, examples: Sequence[Example], class_ids: list[int], is_thing: Sequence[bool]) -> float:
    """Sets the newest (dense) step's core threshold to the candidate whose segments best reproduce the
    painted thing instances on the painted images (`raws`: their predictions after training): a panoptic
    quality over the painted instances, where a predicted segment counts as false only where most of it
    lies on what the painting says (instances or known background), not on unknown pixels. Instance
    separation so follows what the painting shows (how far apart the painted instances' centres are,
    how they touch), not a hand-set number. Ties go to the candidate nearest 0.5."""
    group = model.groups[-1]
    learned = group.rule
    if not any(is_thing):
        return learned.core
    best, best_score = learned.core, -1.0
    for core in sorted(CORE_CANDIDATES, key=lambda c: abs(c - 0.5)):
        group.rule = replace(learned, core=core)
        score = _painted_instance_quality(model, raws, examples, class_ids, is_thing)
        if score > best_score + 1e-9:
            best, best_score = core, score
    group.rule = replace(learned, core=best)
    return best


def _painted_instance_quality(model, raws, examples, class_ids, is_thing) -> float:
    iou_sum, tp, fp, fn = 0.0, 0, 0, 0
    for raw, e in zip(raws, examples):
        result = model.merge(raw)
        panoptic = result.panoptic_seg.numpy()
        instances = np.asarray(e.instances)
        said = (instances > 0) | known_background(e, is_thing)
        classes = class_index_map(e)
        for k, (class_id, thing) in enumerate(zip(class_ids, is_thing)):
            if not thing:
                continue
            painted = [instances == i for i, c in classes.items() if c == k]
            predicted = [panoptic == s.id for s in result.segments if s.category_id == class_id]
            matched = set()
            for mask in painted:
                best = max(((int((mask & p).sum()) / int((mask | p).sum()), j) for j, p in enumerate(predicted)
                            if j not in matched), default=(0.0, -1))
                if best[0] > 0.5:
                    matched.add(best[1])
                    iou_sum, tp = iou_sum + best[0], tp + 1
                else:
                    fn += 1
            fp += sum(1 for j, p in enumerate(predicted) if j not in matched and (p & said).sum() > 0.5 * p.sum())
    return iou_sum / max(tp + 0.5 * fp + 0.5 * fn, 1e-9)
