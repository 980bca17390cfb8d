"""Mask2Former panoptic post-processing (the variant ECLIPSE uses: sigmoid class scores and sigmoid masks).

Class ids are 1-based (class id c is logit column c-1); 0 means void. The last logit column is no-object.
The operation order and float ops mirror the official `forward_inference` + `panoptic_inference`, so that the
panoptic map reproduces the reference fixture bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Segment",
    "PanopticResult",
    "resize_mask_logits",
    "panoptic_merge",
    "semantic_from_panoptic",
    "paint_segments",
]


def resize_mask_logits(
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """Bring mask logits from the stride-4 grid of the padded input to the requested output size.

    Official order: bilinear upsample to the padded size, crop the padding away (bottom/right), then
    bilinear resize to the output size; align_corners=False throughout. Accepts [Q,hp,wp] or [B,Q,hp,wp]
    and returns the same rank.
    """
    unbatched = mask_logits.dim() == 3
    x = mask_logits.unsqueeze(0) if unbatched else mask_logits
    x = F.interpolate(x, size=tuple(padded_size), mode="bilinear", align_corners=False)
    # The crop is a view, exactly as detectron2's sem_seg_postprocess slices it.
    x = x[:, :, : image_size[0], : image_size[1]]
    x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
    return x[0] if unbatched else x


@dataclass
class Segment:
    """One panoptic segment; `category_id` is the 1-based class id."""

    id: int
    category_id: int
    is_thing: bool
    score: float
    area: int


@dataclass
class PanopticResult:
    """Panoptic map (int32 [H,W], 0 = void, else a segment id) and its segments."""

    panoptic_seg: torch.Tensor
    segments: list[Segment] = field(default_factory=list)
    # Per pixel, the probability (score x mask) of the query whose segment holds it; 0 where void.
    confidence: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def semantic(self) -> torch.Tensor:
        """Class-id map (int64 [H,W]), 0 where no segment."""
        return semantic_from_panoptic(self)


def semantic_from_panoptic(result: PanopticResult) -> torch.Tensor:
    """Map each pixel's segment id to its 1-based class id (0 = void)."""
    pan = result.panoptic_seg.long()
    n = max([s.id for s in result.segments], default=0)
    # Lookup table indexed by segment id; entry 0 stays void.
    table = torch.zeros(n + 1, dtype=torch.long, device=pan.device)
    for s in result.segments:
        table[s.id] = s.category_id
    return table[pan]


def _thing_flags(is_thing: torch.Tensor | Sequence[bool], num_classes: int) -> list[bool]:
    """Python list of per-class thing flags, checked to cover all K classes."""
    flags = [bool(v) for v in (is_thing.tolist() if torch.is_tensor(is_thing) else is_thing)]
    if len(flags) < num_classes:
        raise ValueError(f"is_thing has {len(flags)} entries but the logits have {num_classes} classes")
    return flags


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, rows: int = 128) -> torch.Tensor:
    """Mask2Former's semantic inference with ECLIPSE's sigmoid classes: per pixel, class c scores
    sum_q p_q(c) * sigmoid(mask_q) and the pixel takes the best class (0 where no class scores).

    class_logits: [Q, K+1] after logit manipulation (no-object last); mask_logits: [Q, H, W] at output
    size. Unlike softmax scores, sigmoid class scores of a query whose best column is no-object are not
    a share of its mass, so such a query adds nothing (the panoptic merge drops it too). Scored `rows`
    image rows at a time: memory stays at K x rows x W. Returns int64 [H, W] class ids (1-based)."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.sigmoid()
    is_object = probs.argmax(-1) != num_classes
    weights = probs[:, :-1] * is_object[:, None]
    h, w = mask_logits.shape[-2:]
    out = torch.zeros((h, w), dtype=torch.int64, device=mask_logits.device)
    if not bool(is_object.any()):
        return out
    for top in range(0, h, rows):
        scores = torch.einsum("qc,qhw->chw", weights, mask_logits[:, top : top + rows].sigmoid())
        best, label = scores.max(0)
        out[top : top + rows] = torch.where(best > 0, label + 1, 0)
    return out


def panoptic_merge(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    is_thing: torch.Tensor | Sequence[bool],
    object_threshold: float = 0.0,
    overlap_threshold: float | torch.Tensor = 0.0,
    min_area: float | torch.Tensor = 0.0,
) -> PanopticResult:
    """Merge per-query predictions into one panoptic map (Mask2Former rules, sigmoid scores).

    class_logits: [Q, K+1] (last column no-object); mask_logits: [Q, H, W] already at output size;
    is_thing: length-K flags indexed by class id - 1. Thresholds default to ECLIPSE's ADE values (0, 0);
    `overlap_threshold` may be given per query ([Q]); so may `min_area`, the fewest pixels a segment of a
    query needs (not Mask2Former's: a prompt step's fragments go).
    """
    num_classes = class_logits.shape[-1] - 1
    flags = _thing_flags(is_thing, num_classes)
    h, w = mask_logits.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_logits.device)

    # Max over all columns including no-object: a query whose best column is no-object is dropped.
    scores, labels = class_logits.sigmoid().max(-1)
    keep = labels.ne(num_classes) & (scores > object_threshold)
    cur_scores = scores[keep]
    cur_classes = labels[keep]
    cur_masks = mask_logits.sigmoid()[keep]
    overlaps = (overlap_threshold[keep.cpu()].tolist() if isinstance(overlap_threshold, torch.Tensor)
                else [overlap_threshold] * int(keep.sum()))
    min_areas = (min_area[keep.cpu()].tolist() if isinstance(min_area, torch.Tensor)
                 else [min_area] * int(keep.sum()))
    if cur_masks.shape[0] == 0:
        return PanopticResult(panoptic_seg, [], torch.zeros((h, w), device=mask_logits.device))

    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    best_prob, cur_mask_ids = cur_prob_masks.max(0)

    segments: list[Segment] = []
    by_id: dict[int, Segment] = {}
    stuff_memory: dict[int, int] = {}  # class label -> segment id of its first stuff segment
    current_id = 0
    for k in range(cur_classes.shape[0]):
        label = int(cur_classes[k])
        thing = flags[label]
        argmax_region = cur_mask_ids == k
        fg = cur_masks[k] >= 0.5
        mask = argmax_region & fg
        argmax_area = int(argmax_region.sum())
        fg_area = int(fg.sum())
        mask_area = int(mask.sum())
        if argmax_area == 0 or fg_area == 0 or mask_area == 0:
            continue
        # Official check compares the argmax area (not the final mask) with the mask's own foreground.
        if argmax_area / fg_area < overlaps[k] or mask_area < min_areas[k]:
            continue
        if not thing and label in stuff_memory:
            # Later stuff queries of a class join its first segment: same id, no new entry.
            seg_id = stuff_memory[label]
            panoptic_seg[mask] = seg_id
            # Argmax regions are disjoint, so the areas simply add up.
            by_id[seg_id].area += mask_area
            continue
        current_id += 1
        if not thing:
            stuff_memory[label] = current_id
        panoptic_seg[mask] = current_id
        seg = Segment(current_id, label + 1, thing, float(cur_scores[k]), mask_area)
        segments.append(seg)
        by_id[current_id] = seg
    confidence = torch.where(panoptic_seg > 0, best_prob, torch.zeros_like(best_prob))
    return PanopticResult(panoptic_seg, segments, confidence)


def paint_segments(result: PanopticResult, segments, class_ids: Sequence[int], is_thing: Sequence[bool]) -> None:
    """Lays segments (with `class_index`, `mask` bool [H,W] numpy, `score`) over a panoptic result, in
    place: their pixels leave the segments that held them (emptied segments go), new ids follow the
    highest one. A stuff segment joins an existing segment of its class."""
    pan = result.panoptic_seg
    by_class = {s.category_id: s for s in result.segments if not s.is_thing}
    next_id = max((s.id for s in result.segments), default=0) + 1
    for seg in segments:
        mask = torch.from_numpy(seg.mask).to(pan.device)
        class_id, thing = int(class_ids[seg.class_index]), bool(is_thing[seg.class_index])
        target = None if thing else by_class.get(class_id)
        if target is None:
            target = Segment(next_id, class_id, thing, seg.score, 0)
            result.segments.append(target)
            next_id += 1
            if not thing:
                by_class[class_id] = target
        pan[mask] = target.id
        if result.confidence is not None:
            result.confidence[mask] = seg.score
    areas = torch.bincount(pan.flatten().long(), minlength=next_id)
    for s in result.segments:
        s.area = int(areas[s.id])
    result.segments[:] = [s for s in result.segments if s.area > 0]
