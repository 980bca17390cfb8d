"""Panoptic quality (panopticapi's `pq_compute` rules) and semantic mIoU accumulators.

Segment id 0 is void in both ground truth and prediction. Category ids are whatever the caller
uses (COCO ids or the model's 1-based learning order); 0 is never a category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

VOID = 0
OFFSET = 256**3  # segment ids are < 256^3, so gt * OFFSET + pred is a unique pair key


@dataclass
class ClassPQ:
    """Per-category panoptic quality and its counts."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def counted(self) -> bool:
        """Whether the class enters averages (panopticapi skips tp + fp + fn == 0)."""
        return self.tp + self.fp + self.fn > 0


@dataclass
class GroupPQ:
    """Mean PQ/SQ/RQ over the counted classes of a group; NaN when n == 0."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass
class GroupIoU:
    """Mean IoU over the classes of a group that appear in gt or pred; NaN when n == 0."""

    miou: float
    n: int


def _int_map(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an [H, W] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _segment_table(
    areas: Mapping[int, int],
    segments: Sequence[Mapping[str, Any]],
    categories: Mapping[int, bool],
    where: str,
) -> dict[int, dict[str, int]]:
    """Check segments against the pixel areas of the map; return {id: {category_id, iscrowd, area}}.

    Raises like panopticapi for pixels whose id is not listed and for listed ids with no pixels.
    """
    table: dict[int, dict[str, int]] = {}
    for seg in segments:
        try:
            sid, cat = int(seg["id"]), int(seg["category_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: segment {seg!r} needs integer 'id' and 'category_id'") from e
        if sid <= VOID or sid >= OFFSET:
            raise ValueError(f"{where}: segment id {sid} out of range [1, {OFFSET - 1}]")
        if sid in table:
            raise ValueError(f"{where}: segment id {sid} is listed twice")
        if cat not in categories:
            raise ValueError(f"{where}: segment {sid} has unknown category_id {cat}")
        crowd = int(seg.get("iscrowd", 0))
        if crowd not in (0, 1):
            raise ValueError(f"{where}: segment {sid} has iscrowd={crowd}, expected 0 or 1")
        table[sid] = {"category_id": cat, "iscrowd": crowd, "area": 0}
    unlisted = sorted(label for label in areas if label != VOID and label not in table)
    if unlisted:
        raise ValueError(f"{where}: pixels have segment ids {unlisted}, which are not in the segment list")
    for sid, info in table.items():
        info["area"] = areas.get(sid, 0)
    empty = sorted(sid for sid, s in table.items() if s["area"] == 0)
    if empty:
        raise ValueError(f"{where}: segment ids {empty} are listed but have no pixels in the map")
    return table


class PanopticQuality:
    """Accumulates PQ statistics image by image, exactly as panopticapi's `pq_compute`."""

    def __init__(self, categories: Mapping[int, bool]):
        if not categories:
            raise ValueError("PanopticQuality: categories must not be empty")
        self.categories: dict[int, bool] = {}
        for cid, isthing in categories.items():
            if int(cid) <= VOID:
                raise ValueError(f"PanopticQuality: category id {cid} must be >= 1 (0 is void)")
            self.categories[int(cid)] = bool(isthing)
        self.reset()

    def reset(self) -> None:
        self._tp = {c: 0 for c in self.categories}
        self._fp = {c: 0 for c in self.categories}
        self._fn = {c: 0 for c in self.categories}
        self._iou = {c: 0.0 for c in self.categories}
        self.num_images = 0

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        where: str = "image",
    ) -> None:
        """Add one image. `where` names the image in error messages."""
        gt_ids = _int_map(gt_ids, f"{where} gt")
        pred_ids = _int_map(pred_ids, f"{where} prediction")
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"{where}: gt shape {gt_ids.shape} != prediction shape {pred_ids.shape}")
        for a, name in ((gt_ids, "gt"), (pred_ids, "prediction")):
            if a.size and (a.min() < 0 or a.max() >= OFFSET):
                raise ValueError(
                    f"{where} {name}: segment ids must lie in [0, {OFFSET - 1}], "
                    f"got range [{a.min()}, {a.max()}]"
                )
        # One sort gives every (gt, pred) overlap; segment areas are its marginals.
        keys, counts = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
        inter: dict[tuple[int, int], int] = {
            (k // OFFSET, k % OFFSET): c for k, c in zip(keys.tolist(), counts.tolist())
        }
        gt_area: dict[int, int] = {}
        pred_area: dict[int, int] = {}
        for (g, p), n in inter.items():
            gt_area[g] = gt_area.get(g, 0) + n
            pred_area[p] = pred_area.get(p, 0) + n
        gt = _segment_table(gt_area, gt_segments, self.categories, f"{where} gt")
        pred = _segment_table(pred_area, pred_segments, self.categories, f"{where} prediction")

        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (g, p), n in inter.items():
            if g not in gt or p not in pred:  # either side void
                continue
            if gt[g]["iscrowd"] == 1 or gt[g]["category_id"] != pred[p]["category_id"]:
                continue
            # The predicted segment's void pixels do not count against it.
            union = pred[p]["area"] + gt[g]["area"] - n - inter.get((VOID, p), 0)
            iou = n / union
            if iou > 0.5:  # strictly: 0.5 is not a match; > 0.5 makes matches unique
                cat = gt[g]["category_id"]
                self._tp[cat] += 1
                self._iou[cat] += iou
                gt_matched.add(g)
                pred_matched.add(p)

        crowd_of_cat: dict[int, int] = {}
        for g, info in gt.items():
            if g in gt_matched:
                continue
            if info["iscrowd"] == 1:
                # panopticapi keeps one crowd segment per category (the last listed).
                crowd_of_cat[info["category_id"]] = g
                continue
            self._fn[info["category_id"]] += 1

        for p, info in pred.items():
            if p in pred_matched:
                continue
            ignored = inter.get((VOID, p), 0)
            if info["category_id"] in crowd_of_cat:
                ignored += inter.get((crowd_of_cat[info["category_id"]], p), 0)
            if ignored / info["area"] > 0.5:
                continue
            self._fp[info["category_id"]] += 1
        self.num_images += 1

    def compute(self) -> dict[int, ClassPQ]:
        """Per-category results for every category (0.0 scores where tp + fp + fn == 0)."""
        out: dict[int, ClassPQ] = {}
        for c in self.categories:
            tp, fp, fn, iou = self._tp[c], self._fp[c], self._fn[c], self._iou[c]
            denom = tp + 0.5 * fp + 0.5 * fn
            out[c] = ClassPQ(
                pq=iou / denom if denom else 0.0,
                sq=iou / tp if tp else 0.0,
                rq=tp / denom if denom else 0.0,
                tp=tp,
                fp=fp,
                fn=fn,
                iou_sum=iou,
            )
        return out

    def summary(self, groups: Mapping[str, Iterable[int]] | None = None) -> dict[str, GroupPQ]:
        """Mean PQ/SQ/RQ over All, Things, Stuff and each named group of category ids."""
        per_class = self.compute()
        sets: dict[str, list[int]] = {
            "All": list(self.categories),
            "Things": [c for c, t in self.categories.items() if t],
            "Stuff": [c for c, t in self.categories.items() if not t],
        }
        sets.update(_check_groups(groups, self.categories, "PanopticQuality.summary"))
        out: dict[str, GroupPQ] = {}
        for name, ids in sets.items():
            rows = [per_class[c] for c in ids if per_class[c].counted]
            out[name] = GroupPQ(
                pq=_mean([r.pq for r in rows]),
                sq=_mean([r.sq for r in rows]),
                rq=_mean([r.rq for r in rows]),
                n=len(rows),
            )
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _check_groups(
    groups: Mapping[str, Iterable[int]] | None, known: Iterable[int], where: str
) -> dict[str, list[int]]:
    if not groups:
        return {}
    known_set = set(known)
    out: dict[str, list[int]] = {}
    for name, ids in groups.items():
        if name in ("All", "Things", "Stuff"):
            raise ValueError(f"{where}: group name {name!r} is reserved")
        ids = [int(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: group {name!r} lists a category id more than once")
        unknown = sorted(set(ids) - known_set)
        if unknown:
            raise ValueError(f"{where}: group {name!r} has unknown category ids {unknown}")
        out[name] = ids
    return out


class SemanticIoU:
    """Accumulates a confusion matrix over classes 1..K; gt 0 (void) pixels are ignored."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"SemanticIoU: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        k = self.num_classes + 1
        # Row = gt class, column = predicted class; index 0 is void / no prediction.
        self.confusion = np.zeros((k, k), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray, where: str = "image") -> None:
        """Add one pair of semantic maps with values in 0..K (0 = void / unlabelled)."""
        gt = _int_map(gt, f"{where} gt")
        pred = _int_map(pred, f"{where} prediction")
        if gt.shape != pred.shape:
            raise ValueError(f"{where}: gt shape {gt.shape} != prediction shape {pred.shape}")
        k = self.num_classes + 1
        for a, name in ((gt, "gt"), (pred, "prediction")):
            if a.size and (a.min() < 0 or a.max() >= k):
                raise ValueError(
                    f"{where} {name}: class ids must lie in [0, {self.num_classes}], "
                    f"got range [{a.min()}, {a.max()}]"
                )
        keep = gt != VOID
        idx = gt[keep] * k + pred[keep]
        self.confusion += np.bincount(idx, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[int, float]:
        """IoU for classes 1..K; NaN for a class with no gt and no predicted pixels."""
        cm = self.confusion
        inter = np.diag(cm)[1:].astype(np.float64)
        union = cm[1:, :].sum(axis=1) + cm[:, 1:].sum(axis=0) - np.diag(cm)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union, np.nan)
        return {c + 1: float(v) for c, v in enumerate(iou)}

    def summary(self, groups: Mapping[str, Iterable[int]] | None = None) -> dict[str, GroupIoU]:
        """Mean IoU (NaN classes excluded) over All and each named group of class ids."""
        per_class = self.compute()
        sets = {"All": list(per_class)}
        sets.update(_check_groups(groups, per_class, "SemanticIoU.summary"))
        out: dict[str, GroupIoU] = {}
        for name, ids in sets.items():
            vals = [per_class[c] for c in ids if not math.isnan(per_class[c])]
            out[name] = GroupIoU(miou=_mean(vals), n=len(vals))
        return out


def panoptic_to_semantic(ids: np.ndarray, segments: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Map each pixel's segment id to its segment's category_id (void stays 0); int64 [H, W]."""
    ids = _int_map(ids, "panoptic_to_semantic")
    lookup = {VOID: 0}
    for seg in segments:
        sid, cat = int(seg["id"]), int(seg["category_id"])
        if sid == VOID:
            raise ValueError("panoptic_to_semantic: segment id 0 is void and cannot be listed")
        lookup[sid] = cat
    labels, inverse = np.unique(ids, return_inverse=True)
    missing = [int(v) for v in labels if int(v) not in lookup]
    if missing:
        raise ValueError(f"panoptic_to_semantic: pixel segment ids {missing} are not in the segment list")
    cats = np.array([lookup[int(v)] for v in labels], dtype=np.int64)
    return cats[inverse.reshape(ids.shape)]


def format_pq_table(summary: Mapping[str, GroupPQ | Mapping[str, Any]]) -> str:
    """Rows per group, PQ/SQ/RQ in percent with one decimal and N, as panopticapi prints.

    Accepts `PanopticQuality.summary()` or its JSON form (None scores print as nan).
    """
    lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"), "-" * 38]
    for name, g in summary.items():
        d = asdict(g) if isinstance(g, GroupPQ) else g
        pq, sq, rq = (math.nan if d[k] is None else 100 * d[k] for k in ("pq", "sq", "rq"))
        lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(name, pq, sq, rq, int(d["n"])))
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses/dicts to plain JSON values; NaN becomes None (JSON has no NaN)."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
