"""The automatic choice of the logit-manipulation deltas, from held-out images of a step."""

from collections.abc import Sequence

import numpy as np
import torch

from ..data.labelled import LabelledImage
from ..network.eclipse import DEFAULT_BASE_DELTA, DEFAULT_STEP_DELTA, EclipseModel, RawPrediction, to_chw_tensor
from ..network.postprocess import PanopticResult
from .evaluate import segments_as_dicts
from .metrics import PanopticQuality

STEP_DELTAS = (-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BASE_DELTAS = (0.0, 0.2, 0.4, 0.6)


def select_deltas(
    model: EclipseModel,
    heldout: Sequence[LabelledImage],
    reference: Sequence[PanopticResult],
    candidates: Sequence[float] = STEP_DELTAS,
    base_candidates: Sequence[float] = BASE_DELTAS,
    scale: int = 1,
    raws: Sequence[RawPrediction] | None = None,
) -> tuple[list[float], list[dict]]:
    """Chooses the newest group's delta and the base group's on held-out images of the step (labelled for
    the step's classes, and optionally with known background as a segment of another category: Learn's
    painting); deltas of intermediate steps stay as they are.

    Score = mean of (a) PQ of the new classes against the held-out labels (pixels without a label are
    void, so old-class predictions there are not penalised) and (b) PQ of the old classes against
    `reference`, the previous model's own predictions on the same images with new-class pixels voided
    (a new-class segment on known background is a false positive in (a), and changes the old classes in (b)):
    the new step should find its classes without disturbing what the model already said elsewhere.
    Needs no old-class labels, as in the continual protocol. Candidates are scored at 1/`scale` of the
    image size (4: the masks' own resolution, what Learn uses; 1 = full size, the benchmark's). `raws`: the
    model's raw predictions of `heldout` when the caller has them (Learn decodes kept features). Returns
    the deltas and a table of scores.
    """
    if not heldout:
        raise ValueError("delta selection needs at least one held-out image")
    new_ids = set(model.class_ids(model.num_steps))
    categories = {i + 1: c.is_thing for i, c in enumerate(model.classes)}
    old_ids = sorted(set(categories) - new_ids)
    # A label of another category (Learn's known background: "none of the step's classes") is stuff.
    for item in heldout:
        for segment in item.gt_segments:
            categories.setdefault(int(segment["category_id"]), False)
    if raws is None:
        with torch.no_grad():
            raws = [model.infer(to_chw_tensor(item.image)[None]) for item in heldout]
    # Every candidate is merged at the masks' own resolution (stride 4), the labels brought there by
    # nearest sampling; what does not depend on the deltas (the resized masks) is made once per image.
    sizes = [_mask_size(item.gt_ids.shape, scale) for item in heldout]
    masks = [model.resized_masks(raw, 0, size) for raw, size in zip(raws, sizes)]
    labels, refs = [], []
    for item, ref, size in zip(heldout, reference, sizes):
        gt_ids = _nearest(item.gt_ids, size)
        labels.append((gt_ids, [s for s in item.gt_segments if (gt_ids == s["id"]).any()]))
        refs.append(reference_outside_new(gt_ids, item.gt_segments, ref, new_ids, size))
    table = []
    current = model.deltas
    for base_delta in base_candidates:
        for delta in candidates:
            deltas = [float(base_delta)] + current[1:-1] + [float(delta)]
            new_pq, old_pq = PanopticQuality(categories), PanopticQuality(categories)
            for (gt_ids, gt_segments), raw, m, size, (ref_ids, ref_segments) in zip(labels, raws, masks, sizes, refs):
                result = model.merge(raw, deltas=deltas, output_size=size, masks=m)
                pred_ids, segments = result.panoptic_seg.cpu().numpy(), segments_as_dicts(result)
                new_pq.update(gt_ids, gt_segments, *_only(pred_ids, segments, new_ids, keep=True))
                old_pq.update(ref_ids, ref_segments, *_only(pred_ids, segments, new_ids, keep=False))
            score_new = _mean_pq(new_pq, sorted(new_ids))
            score_old = _mean_pq(old_pq, old_ids)
            table.append({"deltas": deltas, "pq_new": score_new, "pq_old_consistency": score_old,
                          "score": (score_new + score_old) / 2})
    # Ties (e.g. nothing found yet) go to the deltas closest to the published defaults.
    best = max(table, key=lambda row: (row["score"], -abs(row["deltas"][-1] - DEFAULT_STEP_DELTA)
                                       - abs(row["deltas"][0] - DEFAULT_BASE_DELTA)))
    return best["deltas"], table


def reference_outside_new(gt_ids: np.ndarray, gt_segments: list[dict], ref: PanopticResult, new_ids: set,
                          size: tuple[int, int]) -> tuple[np.ndarray, list[dict]]:
    """The previous model's panoptic map at `size` (ids, segments), void where a new class is labelled
    (`gt_ids` at `size`) and only there: on known background the old classes should stay as they were."""
    labelled_new = np.isin(gt_ids, [s["id"] for s in gt_segments if s["category_id"] in new_ids])
    ref_ids = np.where(labelled_new, 0, _nearest(ref.panoptic_seg.cpu().numpy(), size))
    return ref_ids, [s for s in segments_as_dicts(ref) if (ref_ids == s["id"]).any()]


def _mask_size(shape, scale: int) -> tuple[int, int]:
    return max(1, -(-shape[0] // scale)), max(1, -(-shape[1] // scale))


def _nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An id map brought to `size` by nearest sampling (pixel centres)."""
    h, w = ids.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return ids[rows][:, cols]


def _only(ids: np.ndarray, segments: list[dict], class_ids: set, keep: bool) -> tuple[np.ndarray, list[dict]]:
    """Keeps (or drops) the segments of the given classes; dropped pixels become void."""
    kept = [s for s in segments if (s["category_id"] in class_ids) == keep]
    mask = np.isin(ids, [s["id"] for s in kept])
    return np.where(mask, ids, 0), kept


def _mean_pq(pq: PanopticQuality, class_ids: list[int]) -> float:
    summary = pq.summary({"selected": class_ids})["selected"]
    return 0.0 if summary.n == 0 or np.isnan(summary.pq) else float(summary.pq)
