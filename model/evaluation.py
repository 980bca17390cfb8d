"""Evaluation of a model on labelled images (PQ, mIoU) and the automatic choice of delta.

Ground truth here uses the model's learning-order class ids (1-based, 0 = void): datasets convert once,
through their scenario, before calling in.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .eclipse import DEFAULT_BASE_DELTA, DEFAULT_STEP_DELTA, EclipseModel, to_chw_tensor
from .logit_manipulation import manipulate_logits
from .metrics import PanopticQuality, SemanticIoU, panoptic_to_semantic
from .postprocess import PanopticResult, panoptic_merge, resize_mask_logits


@dataclass
class LabelledImage:
    image: np.ndarray | torch.Tensor  # [H,W,3] or [3,H,W], uint8
    gt_ids: np.ndarray  # [H,W] segment ids, 0 = void
    gt_segments: list[dict]  # {"id", "category_id" (learning id), "iscrowd"}


@dataclass
class RawPrediction:
    """Decoder output before logit manipulation: enough to re-merge with other deltas cheaply."""

    logits: torch.Tensor  # [Q, K+1] raw
    mask_logits: torch.Tensor  # [Q, Hp/4, Wp/4]
    padded_size: tuple[int, int]
    image_size: tuple[int, int]


@torch.no_grad()
def predict_raw(model: EclipseModel, image) -> RawPrediction:
    x, image_size = model.preprocess(to_chw_tensor(image)[None])
    mask_features, memories = model.encode(x)
    out = model.decode(mask_features, memories)
    return RawPrediction(out.class_logits(-1)[0], out.mask_logits(mask_features)[0], tuple(x.shape[-2:]), image_size)


def merge(model: EclipseModel, raw: RawPrediction, deltas: Sequence[float] | None = None,
          object_threshold: float = 0.0, overlap_threshold: float = 0.0) -> PanopticResult:
    """Panoptic result of a raw prediction with the given deltas (default: the model's)."""
    groups = model.groups
    deltas = model.deltas if deltas is None else list(deltas)
    logits = manipulate_logits(
        raw.logits[None], [g.num_queries for g in groups], [g.num_classes for g in groups], deltas
    )[0]
    masks = resize_mask_logits(raw.mask_logits, raw.padded_size, raw.image_size, raw.image_size)
    is_thing = torch.tensor([c.is_thing for c in model.classes])
    return panoptic_merge(logits, masks, is_thing, object_threshold, overlap_threshold)


def segments_as_dicts(result: PanopticResult) -> list[dict]:
    return [{"id": s.id, "category_id": s.category_id} for s in result.segments]


def evaluate(
    model: EclipseModel,
    images: Iterable[LabelledImage],
    groups: dict[str, list[int]] | None = None,
    semantic: bool = False,
    categories: dict[int, bool] | None = None,
) -> dict:
    """PQ (and mIoU when `semantic`) of `model` over labelled images, summarised per class group.

    categories: learning id -> is_thing of every class the ground truth may hold (default: the model's);
    classes the model has not learned yet still count, as false negatives.
    """
    if categories is None:
        categories = {i + 1: c.is_thing for i, c in enumerate(model.classes)}
    pq = PanopticQuality(categories)
    miou = SemanticIoU(max(categories)) if semantic else None
    for n, item in enumerate(images):
        result = merge(model, predict_raw(model, item.image))
        pred_ids = result.panoptic_seg.numpy()
        pq.update(item.gt_ids, item.gt_segments, pred_ids, segments_as_dicts(result), where=f"image {n}")
        if miou is not None:
            gt_sem = panoptic_to_semantic(item.gt_ids, [s for s in item.gt_segments if not s.get("iscrowd")])
            miou.update(gt_sem, result.semantic.numpy(), where=f"image {n}")
    out = {"pq": pq.summary(groups), "pq_per_class": pq.compute(), "num_images": pq.num_images}
    if miou is not None:
        out["miou"] = miou.summary(groups)
        out["iou_per_class"] = miou.compute()
    return out


STEP_DELTAS = (-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BASE_DELTAS = (0.0, 0.2, 0.4, 0.6)


def select_deltas(
    model: EclipseModel,
    heldout: Sequence[LabelledImage],
    reference: Sequence[PanopticResult],
    candidates: Sequence[float] = STEP_DELTAS,
    base_candidates: Sequence[float] = BASE_DELTAS,
) -> tuple[list[float], list[dict]]:
    """Chooses the newest group's delta and the base group's on held-out images of the step (labelled for
    the step's classes only); deltas of intermediate steps stay as they are.

    Score = mean of (a) PQ of the new classes against the held-out labels (pixels without a label are
    void, so old-class predictions there are not penalised) and (b) PQ of the old classes against
    `reference`, the previous model's own predictions on the same images with new-class pixels voided:
    the new step should find its classes without disturbing what the model already said elsewhere.
    Needs no old-class labels, as in the continual protocol. Returns the deltas and a table of scores.
    """
    if not heldout:
        raise ValueError("delta selection needs at least one held-out image")
    new_ids = set(model.class_ids(model.num_steps))
    categories = {i + 1: c.is_thing for i, c in enumerate(model.classes)}
    raws = [predict_raw(model, item.image) for item in heldout]
    refs = []
    for item, ref in zip(heldout, reference):
        labelled_new = np.isin(item.gt_ids, [s["id"] for s in item.gt_segments])
        ref_ids = np.where(labelled_new, 0, ref.panoptic_seg.numpy())
        refs.append((ref_ids, [s for s in segments_as_dicts(ref) if (ref_ids == s["id"]).any()]))
    table = []
    current = model.deltas
    for base_delta in base_candidates:
        for delta in candidates:
            deltas = [float(base_delta)] + current[1:-1] + [float(delta)]
            new_pq, old_pq = PanopticQuality(categories), PanopticQuality(categories)
            for item, raw, (ref_ids, ref_segments) in zip(heldout, raws, refs):
                result = merge(model, raw, deltas)
                pred_ids, segments = result.panoptic_seg.numpy(), segments_as_dicts(result)
                new_pq.update(item.gt_ids, item.gt_segments, *_only(pred_ids, segments, new_ids, keep=True))
                old_pq.update(ref_ids, ref_segments, *_only(pred_ids, segments, new_ids, keep=False))
            score_new = _mean_pq(new_pq, sorted(new_ids))
            score_old = _mean_pq(old_pq, sorted(set(categories) - new_ids))
            table.append({"deltas": deltas, "pq_new": score_new, "pq_old_consistency": score_old,
                          "score": (score_new + score_old) / 2})
    # Ties (e.g. nothing found yet) go to the deltas closest to the published defaults.
    best = max(table, key=lambda row: (row["score"], -abs(row["deltas"][-1] - DEFAULT_STEP_DELTA)
                                       - abs(row["deltas"][0] - DEFAULT_BASE_DELTA)))
    return best["deltas"], table


def _only(ids: np.ndarray, segments: list[dict], class_ids: set, keep: bool) -> tuple[np.ndarray, list[dict]]:
    """Keeps (or drops) the segments of the given classes; dropped pixels become void."""
    kept = [s for s in segments if (s["category_id"] in class_ids) == keep]
    mask = np.isin(ids, [s["id"] for s in kept])
    return np.where(mask, ids, 0), kept


def _mean_pq(pq: PanopticQuality, class_ids: list[int]) -> float:
    summary = pq.summary({"selected": class_ids})["selected"]
    return 0.0 if summary.n == 0 or np.isnan(summary.pq) else float(summary.pq)
