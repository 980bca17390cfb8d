"""How a dense step's per-pixel maps become segments: which pixels it may claim, instances as watershed
basins of the predicted distance, snapping to the queries' masks (see `dense_head` for the head)."""

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@dataclass(frozen=True)
class InstanceRule:
    """How per-pixel maps become segments; set from the painted examples when the step is learned
    (`model.interactive.negatives.instance_rule`; the foreground and core thresholds by
    `choose_thresholds`). The defaults of the fields after `override_margin` reproduce step files
    written before they existed."""

    foreground: float = 0.5  # probability above which a pixel belongs to the class
    core: float = 0.5  # normalised distance above which a pixel is an instance core (a seed); 0: no split
    min_area: float = 16.0  # segments smaller than this many pixels are dropped (instances and stuff)
    # A pixel the earlier steps hold goes to this step only where its probability beats theirs (the
    # owning query's score x mask) by this much: new knowledge overrides old only where surer.
    override_margin: float = 0.1
    # Old classes the painted pixels fell on (the new class's look-alikes). A pixel another old class
    # holds goes to this step only where that hold is weaker than `foreign_ceiling`: a thing the model
    # knows is not taken by a class that merely resembles it.
    look_alikes: tuple[int, ...] = ()
    foreign_ceiling: float = 1.0
    # A thing segment is replaced by the query mask (of any query) that overlaps it with at least this
    # IoU: the queries' masks follow object boundaries better than a per-pixel head. 0 = never.
    snap_iou: float = 0.0
    # Things unlike the painted ones come out less sure than those the head was taught on. A connected
    # region above `detect` is cut at `relative` x its own peak probability (at least `detect`, at most
    # `foreground`), so a weak instance is found whole instead of as a fragment or not at all. With
    # `relative` at most the foreground threshold (Learn's 0.5) the cut never reaches it: a thing's
    # foreground threshold then no longer matters. Touching instances in one region share its peak.
    # 1.0 = off (the foreground threshold alone, as step files written before it hold).
    detect: float = 1.0
    relative: float = 0.5

    def to_json(self) -> dict:
        return asdict(self) | {"look_alikes": list(self.look_alikes)}

    @staticmethod
    def from_json(data: dict) -> "InstanceRule":
        values = {k: float(v) for k, v in data.items() if k != "look_alikes"}
        return InstanceRule(**values, look_alikes=tuple(int(c) for c in data.get("look_alikes", ())))

    def cuts_things_by_peak(self, foreground: float) -> bool:
        """Whether thing regions are cut by their peak alone at this foreground threshold (it then
        changes no thing segment)."""
        return self.detect < foreground and self.relative <= foreground

    def claim(self, probs: np.ndarray, held: np.ndarray | None, owner: np.ndarray | None) -> np.ndarray:
        """Where this step may place its classes: [H, W] bool. `held`: the probability with which
        earlier steps hold each pixel (0 = nothing holds it); `owner`: their class id there."""
        if held is None:
            return np.ones(probs.shape[1:], bool)
        surer = probs.max(0) > held + self.override_margin
        if owner is not None and self.foreign_ceiling < 1.0:
            foreign = ~np.isin(owner, self.look_alikes)
            surer &= ~foreign | (held < self.foreign_ceiling)
        return (held == 0) | surer


@dataclass
class DenseSegment:
    class_index: int  # 0-based within the step
    mask: np.ndarray  # bool [H, W]
    score: float  # mean foreground probability over the segment


def dense_segments(probs: np.ndarray, distances: np.ndarray, is_thing: list[bool], rule: InstanceRule,
                   held: np.ndarray | None = None, owner: np.ndarray | None = None,
                   query_masks: np.ndarray | None = None) -> list[DenseSegment]:
    """Segments from per-class foreground probabilities and distances, both [C, H, W] in 0..1; `held`
    and `owner` [H, W] say how surely and as what earlier steps hold each pixel (see
    `InstanceRule.claim`); `query_masks` [Q, H, W] bool are the query masks thing segments may snap to.

    A pixel belongs to its most probable class when that probability exceeds `rule.foreground` (for a
    thing, or the lower cut of its region: `thing_region`) and the step may claim it. A stuff class is
    one segment; a thing class is split into the watershed basins of its distance map, seeded by the
    connected cores; foreground parts without a core become one instance each.
    """
    from skimage.segmentation import watershed

    best = probs.argmax(0)
    claim = rule.claim(probs, held, owner)
    out = []
    for c, thing in enumerate(is_thing):
        mine = (best == c) & claim
        region = thing_region(probs[c], mine, rule) if thing else mine & (probs[c] > rule.foreground)
        if not region.any():
            continue
        if not thing:
            labels, n = region.astype(np.int32), 1
        else:
            seeds, n_seeds = ndimage.label(region & (distances[c] > rule.core))
            labels = watershed(-distances[c], seeds, mask=region) if n_seeds else np.zeros(region.shape, np.int32)
            rest, n_rest = ndimage.label(region & (labels == 0))  # foreground without a core
            labels = np.where(rest > 0, rest + n_seeds, labels)
            n = n_seeds + n_rest
            if rule.snap_iou > 0 and query_masks is not None and len(query_masks):
                labels, n = snap_to_queries(labels, n, query_masks, rule.snap_iou, claim)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        sums = np.bincount(labels.ravel(), weights=probs[c].ravel(), minlength=n + 1)
        for k in range(1, n + 1):
            if areas[k] >= rule.min_area:
                out.append(DenseSegment(c, labels == k, float(sums[k] / areas[k])))
    return out


def thing_region(prob: np.ndarray, allowed: np.ndarray, rule: InstanceRule) -> np.ndarray:
    """Where a thing class is ([H, W] bool), from its probability [H, W] inside `allowed`: above
    `rule.foreground`, and, with `rule.detect` below it, each connected region above `detect` cut at
    `relative` x its peak, between `detect` and `foreground`."""
    if rule.detect >= rule.foreground:
        return allowed & (prob > rule.foreground)
    low = allowed & (prob > rule.detect)
    labels, n = ndimage.label(low)
    if not n:
        return low
    peaks = np.asarray(ndimage.maximum(prob, labels, index=np.arange(1, n + 1)), dtype=prob.dtype)
    cuts = np.clip(rule.relative * peaks, rule.detect, rule.foreground)
    return low & (prob > np.concatenate([[1.0], cuts])[labels])


def snap_to_queries(labels: np.ndarray, n: int, query_masks: np.ndarray, min_iou: float,
                    allowed: np.ndarray) -> tuple[np.ndarray, int]:
    """Replaces each segment of `labels` (1..n) by the query mask it overlaps best, where their IoU is
    at least `min_iou` (inside `allowed`); segments snapping to the same query become one. Returns the
    new labels (renumbered 1..m) and m."""
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:]
    query_area = query_masks.reshape(len(query_masks), -1).sum(1)
    # Intersections [Q, n] by one bincount per query over its own pixels.
    inter = np.stack([np.bincount(flat[m.ravel()], minlength=n + 1)[1:] for m in query_masks])
    iou = inter / np.maximum(query_area[:, None] + areas[None, :] - inter, 1)
    best, best_iou = iou.argmax(0), iou.max(0)
    out = np.zeros_like(labels)
    new_id, by_query = 0, {}
    for k in np.argsort(-best_iou):  # surest matches first
        if best_iou[k] >= min_iou:
            q = int(best[k])
            if q not in by_query:
                new_id += 1
                by_query[q] = new_id
                out[query_masks[q] & allowed & (out == 0)] = new_id
        else:
            new_id += 1
            out[(labels == k + 1) & (out == 0)] = new_id
    return out, new_id


def dense_maps(logits: torch.Tensor, stride: int, padded_size, image_size, output_size) -> tuple[np.ndarray, np.ndarray]:
    """Logits [2C, h, w] at `stride` of the padded input -> (probabilities, distances), [C, H, W] numpy
    at `output_size` (resized like the query masks: to the padded size, cropped, then to the output)."""
    x = logits[None].float()
    if stride != 1:
        x = F.interpolate(x, size=tuple(padded_size), mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(output_size) != tuple(image_size):
        x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
    x = x[0].sigmoid().cpu().numpy()
    c = x.shape[0] // 2
    return x[:c], x[c:]
