"""What the model already knows, used by Learn (both learners): its look-alikes of the new classes, its
confident old classes as negatives; and a dense step's post-processing rule fixed from the painting."""

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..network.dense_segments import InstanceRule, dense_maps, dense_segments
from .config import Example, LearnConfig
from .examples import class_index_map, known_background

# Where the model, before the step, holds a pixel with at least this probability (score x mask), that pixel
# is taken as its old class: a negative for the new classes, on unpainted pixels and on context images.
CONFIDENT = 0.9
ABSORBING = 0.05  # an old class holding this share of the painted pixels is the new class's look-alike
CONTEXT_MIN_SHARE = 0.1  # a context image helps only if the model holds this share of it confidently


def instance_rule(examples: Sequence[Example], is_thing: Sequence[bool], look_alikes: Sequence[int],
                  config: LearnConfig) -> InstanceRule:
    """Post-processing fixed from the painting alone: segments smaller than `min_area_fraction` of the
    smallest painted thing instance (a step of stuff only: a fiftieth of the median painted region)
    are dropped; weak things are cut relative to their own peak (`InstanceRule.detect`)."""
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
                        foreign_ceiling=config.foreign_ceiling, snap_iou=config.snap_iou,
                        detect=config.weak_detect, relative=config.weak_relative)


def find_look_alikes(examples: Sequence[Example], references: list) -> list[int]:
    """Old classes the model gives at least `ABSORBING` of the painted pixels, however unsure it is
    there (it may be sure of them on other images of the new class)."""
    painted = 0
    counts: dict[int, int] = {}
    for e, ref in zip(examples, references):
        positive = np.asarray(e.instances) > 0
        classes = ref.semantic.cpu().numpy()[positive]
        for c, n in zip(*np.unique(classes[classes > 0], return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(n)
        painted += int(positive.sum())
    return sorted(c for c, n in counts.items() if n >= ABSORBING * max(painted, 1))


def old_class_negatives(examples: Sequence[Example], references: list, context: Sequence, context_refs: list,
                        look_alikes: Sequence[int]):
    """Examples with the pixels the model already holds confidently for an old class added as known
    background: on the unpainted pixels of partly painted examples, and on context images (unpainted
    images, which may hold the new class too, so only such pixels count). The new class's look-alikes
    are never taken as negatives. Returns (the examples, the context images kept as examples, which
    of `context` each of those is)."""

    def negatives(ref) -> np.ndarray:
        return (ref.confidence.cpu().numpy() >= CONFIDENT) & ~np.isin(ref.semantic.cpu().numpy(), list(look_alikes))

    out = []
    for e, ref in zip(examples, references):
        if e.partial:
            painted = np.zeros(np.shape(e.instances), bool) if e.background is None else np.asarray(e.background, bool)
            e = Example(e.image, e.instances, painted | negatives(ref), e.instance_classes)
        out.append(e)
    extra, kept = [], []
    for k, (image, ref) in enumerate(zip(context, context_refs)):
        known = negatives(ref)
        if known.mean() >= CONTEXT_MIN_SHARE:
            extra.append(Example(image, np.zeros(known.shape, np.int32), known))
            kept.append(k)
    return out, extra, kept


# Thresholds a dense step may take: the foreground probability above which a pixel is its class, and the
# normalised distance above which a pixel seeds an instance. The ones that best reproduce the painting on
# the painted images are kept. A core of 0 splits nothing (each connected region is one instance): where
# the painted instances never touch, the painting can say the distance map only cuts them in two
# (tuning split, 3 seeds: ihc nuclei 62.3 -> 65.1, every other case the same).
FOREGROUND_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9)
CORE_CANDIDATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def choose_thresholds(model, raws: list, references: list, examples: Sequence[Example], is_thing: Sequence[bool]
                      ) -> tuple[float, float]:
    """Sets the newest (dense) step's foreground and core thresholds to the pair of candidates (searched
    together: where instances split depends on where the foreground ends) whose segments best reproduce
    the painting on the painted images (`raws`: their predictions after
    training; `references`: the model's results before the step, what the step's segments are laid
    over), judged on what the painting says only: a panoptic quality over the painted thing instances (a
    predicted segment counts as false only where most of it lies on painted or known background pixels,
    not on unknown ones) plus, for stuff classes, the IoU of the class's region with the painted one
    over the known pixels. A head trained with balanced classes leans towards the class at its
    boundaries; how far, and how touching instances split, then follows what the painting shows, not
    hand-set numbers. Ties go to the pair nearest the defaults (foreground 0.5, core 0.5), and between
    pairs equally near, to the higher thresholds. Where the
    rule cuts things by their own peak (`InstanceRule.detect`) a step of things only has no
    foreground threshold to choose, only the core."""
    group = model.groups[-1]
    rule = group.rule
    images = []  # what the candidates do not change, made once per image
    for raw, ref, e in zip(raws, references, examples):
        probs, distances = dense_maps(raw.dense_logits[-1][0], raw.dense_strides[-1], raw.padded_size,
                                      raw.image_size, raw.image_size)
        queries = (model.resized_masks(raw, 0, raw.image_size) > 0).cpu().numpy() if rule.snap_iou > 0 else None
        images.append((probs, distances, ref.confidence.cpu().numpy(), ref.semantic.cpu().numpy(), queries, e))
    cores = CORE_CANDIDATES if any(is_thing) else (rule.core,)
    foregrounds = FOREGROUND_CANDIDATES
    if all(is_thing) and rule.cuts_things_by_peak(min(foregrounds)):
        foregrounds = (rule.foreground,)  # things cut at half their peak: no foreground to choose
    # Tried nearest the defaults first; of equally near pairs, the higher thresholds first (a stricter
    # region, fewer seeds: whole instances rather than fragments).
    pairs = sorted(((f, c) for f in foregrounds for c in cores),
                   key=lambda p: (round(abs(p[0] - 0.5) + abs(p[1] - 0.5), 6), -p[0], -p[1]))
    best, best_score = (rule.foreground, rule.core), -1.0
    for fg, core in pairs:  # both at once: how instances split depends on where the foreground ends
        score = _painted_quality(images, replace(rule, foreground=fg, core=core), is_thing)
        if score > best_score + 1e-9:
            best, best_score = (fg, core), score
    rule = replace(rule, foreground=best[0], core=best[1])
    group.rule = rule
    return rule.foreground, rule.core


def _painted_quality(images, rule, is_thing) -> float:
    iou_sum, tp, fp, fn = 0.0, 0, 0, 0
    stuff_inter, stuff_union = 0, 0
    for probs, distances, held, owner, queries, e in images:
        segments = dense_segments(probs, distances, list(is_thing), rule, held, owner, queries)
        instances = np.asarray(e.instances)
        said = (instances > 0) | known_background(e, is_thing)
        classes = class_index_map(e)
        for k, thing in enumerate(is_thing):
            ids = [i for i, c in classes.items() if c == k]
            predicted = [s.mask for s in segments if s.class_index == k]
            if not thing:
                painted = np.isin(instances, ids)
                found = np.logical_or.reduce(predicted) & said if predicted else np.zeros(painted.shape, bool)
                stuff_inter += int((found & painted).sum())
                stuff_union += int((found | painted).sum())
                continue
            t, f, n, s = _match(np.where(np.isin(instances, ids), instances, 0), predicted, said)
            tp, fp, fn, iou_sum = tp + t, fp + f, fn + n, iou_sum + s
    things = iou_sum / max(tp + 0.5 * fp + 0.5 * fn, 1e-9) if any(is_thing) else 0.0
    stuff = stuff_inter / stuff_union if stuff_union else 0.0
    return things + stuff


def _match(painted: np.ndarray, predicted: list[np.ndarray], said: np.ndarray) -> tuple[int, int, int, float]:
    """(TP, FP, FN, IoU sum) of predicted masks (not overlapping) against painted instances (an id map),
    matched at IoU > 0.5 (unique, as in PQ); a prediction is false only if most of it lies on `said`."""
    ids = np.unique(painted)
    ids = ids[ids > 0]
    pred = np.zeros(painted.shape, np.int64)
    for j, mask in enumerate(predicted, start=1):
        pred[mask] = j
    gt = np.searchsorted(ids, painted) + 1
    gt[painted == 0] = 0  # gt ids 1..len(ids), predictions 1..len(predicted)
    m = len(predicted) + 1
    inter = np.bincount((gt * m + pred).ravel(), minlength=(len(ids) + 1) * m).reshape(len(ids) + 1, m)
    gt_area, pred_area = inter.sum(1), inter.sum(0)
    iou = inter[1:, 1:] / np.maximum(gt_area[1:, None] + pred_area[None, 1:] - inter[1:, 1:], 1)
    hits = iou > 0.5
    tp, iou_sum = int(hits.sum()), float(iou[hits].sum())
    matched = hits.any(0)
    on_said = np.bincount(pred[said].ravel(), minlength=m)
    fp = int(sum(1 for j in range(1, m) if not matched[j - 1] and on_said[j] > 0.5 * pred_area[j]))
    return tp, fp, len(ids) - tp, iou_sum
