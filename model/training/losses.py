"""Mask2Former set-prediction losses as used by ECLIPSE (sigmoid focal class loss,
point-sampled BCE + dice mask losses, deep supervision over decoder layers)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, point_sample, validate_targets

# The class loss is a mean over B*Q*(K+1) entries; this fixed factor restores a useful
# magnitude while keeping the scale independent of the number of classes K.
CLASS_LOSS_SCALE = 50.0


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 5.0,
    gamma: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss on independent sigmoids.

    `alpha` weights only the positive entries: alpha_t = alpha*t + (1-t), so alpha > 1
    up-weights positives (torchvision's alpha*t + (1-alpha)*(1-t) would go negative).
    loss = alpha_t * BCEwithlogits * (1 - p_t)**gamma.
    """
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Dice loss per mask (rows of inputs [N,P] logits vs targets [N,P]), summed / num_masks;
    `weights` [N,P] in {0,1}: points with weight 0 count as neither predicted nor true."""
    inputs = inputs.sigmoid().flatten(1)
    targets = targets.flatten(1)
    if weights is not None:
        inputs, targets = inputs * weights, targets * weights
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_bce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits averaged over points of each mask, summed over masks / num_masks. `weights`
    [N,P] in {0,1}: only those points count (a point on unknown pixels says nothing)."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    if weights is None:
        return loss.flatten(1).mean(1).sum() / num_masks
    return ((loss * weights).sum(1) / weights.sum(1).clamp(min=1)).sum() / num_masks


def split_background(targets: list[dict]) -> tuple[list[dict], list[torch.Tensor | None]]:
    """Targets may carry masks labelled 0: what the painting says is background (Learn's partly
    painted examples). Returns the targets without them and, per image, where the painting says
    something ([H,W] bool: the objects and that background), or None where no background mask is
    given (then everything is known, as in a labelled dataset)."""
    out, known = [], []
    for t in targets:
        labels, masks = t["labels"], t["masks"]
        background = labels == 0
        if not bool(background.any()):
            out.append(t)
            known.append(None)
            continue
        known.append(masks.any(0))
        out.append({"labels": labels[~background], "masks": masks[~background]})
    return out, known


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits [N,1,P]: highest (0) at the decision boundary."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """detectron2's importance sampling: coords [N,num_points,2] in [0,1] for logits [N,1,h,w].

    Draw num_points*oversample_ratio uniform points, keep the importance_sample_ratio
    most uncertain of them and fill the rest with fresh uniform points.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0,1], got {importance_sample_ratio}")
    num_boxes, device = coarse_logits.shape[0], coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=device, generator=generator)
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
    # Uncertainty is computed on the sampled logits, not on interpolated uncertainties,
    # which would be wrong near the boundary (see detectron2's PointRend).
    point_uncertainties = uncertainty_func(point_logits)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    point_coords = torch.gather(point_coords, 1, idx[..., None].expand(-1, -1, 2))
    if num_random > 0:
        extra = torch.rand(num_boxes, num_random, 2, device=device, generator=generator)
        point_coords = torch.cat([point_coords, extra], dim=1)
    return point_coords


def reduce_num_masks(num_masks: int, device: torch.device) -> float:
    """Average the gt-mask count over processes (no-op without torch.distributed), clamp >= 1."""
    n = torch.as_tensor([float(num_masks)], dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


class SetCriterion(nn.Module):
    """Mask2Former losses with Hungarian matching and deep supervision.

    predictions: list of dicts {"logits" [B,Q,K+1], "mask_logits" [B,Q,h,w]}, one per
    decoder prediction; each is matched separately. targets: list of B dicts
    {"labels" LongTensor[M] in 1..K, "masks" BoolTensor[M,H,W]}.
    Returns {"loss_class_i", "loss_mask_i", "loss_dice_i"} (already weighted) and
    "loss" = their sum.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        focal_alpha: float = 5.0,
        focal_gamma: float = 1.0,
        no_object_weight: float = 1.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.generator = generator

    def class_loss(self, logits: torch.Tensor, targets: list[dict], indices,
                   ignored: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted focal loss; unmatched queries target the no-object (last) column, except the
        `ignored` ones ([B,Q] bool: found something where the painting says nothing), which get none."""
        batch_size, num_queries, num_cols = logits.shape
        target_cols = torch.full((batch_size, num_queries), num_cols - 1, dtype=torch.long, device=logits.device)
        for b, (pred_idx, gt_idx) in enumerate(indices):
            labels = targets[b]["labels"].to(logits.device)
            target_cols[b, pred_idx.to(logits.device)] = labels[gt_idx.to(logits.device)] - 1
        onehot = F.one_hot(target_cols, num_cols).to(torch.float32)
        loss = sigmoid_focal_loss(logits.float(), onehot, self.focal_alpha, self.focal_gamma, reduction="none")
        if self.no_object_weight != 1.0:
            # Unmatched queries far outnumber objects; like Mask2Former's eos_coef, their no-object target
            # counts less, so matched queries can rise above the no-object prior early in training.
            weight = torch.ones_like(loss)
            weight[..., -1] = torch.where(onehot[..., -1] > 0, self.no_object_weight, 1.0)
            loss = loss * weight
        if ignored is not None:
            loss = loss * (~ignored)[..., None].to(loss.dtype)
        return loss.mean() * CLASS_LOSS_SCALE

    def mask_losses(
        self,
        mask_logits: torch.Tensor,
        targets: list[dict],
        indices,
        num_masks: float,
        generator: torch.Generator | None,
        known: list[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted (BCE, dice) on importance-sampled points of matched masks; where `known` is given
        for an image, only its points on known pixels count."""
        point_logits, point_labels, point_weights = [], [], []
        weighted = known is not None and any(k is not None for k in known)
        for b, (pred_idx, gt_idx) in enumerate(indices):
            if pred_idx.numel() == 0:
                continue
            src = mask_logits[b, pred_idx.to(mask_logits.device)].float()[:, None]  # [n,1,h,w]
            # Targets are sampled per image, so each image may have its own (H,W).
            tgt = targets[b]["masks"][gt_idx.to(targets[b]["masks"].device)]
            tgt = tgt.to(device=src.device, dtype=torch.float32)[:, None]
            with torch.no_grad():
                coords = get_uncertain_point_coords_with_randomness(
                    src.detach(),
                    calculate_uncertainty,
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                    generator,
                )
                point_labels.append(point_sample(tgt, coords, align_corners=False).squeeze(1))
                if weighted:
                    k = known[b]
                    if k is None:
                        point_weights.append(torch.ones_like(point_labels[-1]))
                    else:
                        k = k.to(device=src.device, dtype=torch.float32)[None, None].expand(len(src), 1, -1, -1)
                        # Nearest: a point is known or not (bilinear would half-count the edge).
                        point_weights.append((point_sample(k, coords, align_corners=False, mode="nearest")
                                              .squeeze(1) > 0.5).float())
            point_logits.append(point_sample(src, coords, align_corners=False).squeeze(1))
        if not point_logits:
            # Keep the graph connected (e.g. for DDP) while contributing nothing.
            zero = mask_logits.sum() * 0.0
            return zero, zero.clone()
        logits_pts = torch.cat(point_logits)
        labels_pts = torch.cat(point_labels)
        if not weighted:
            return (
                sigmoid_bce_loss(logits_pts, labels_pts, num_masks),
                dice_loss(logits_pts, labels_pts, num_masks),
            )
        weights = torch.cat(point_weights)
        return (
            sigmoid_bce_loss(logits_pts, labels_pts, num_masks, weights),
            dice_loss(logits_pts, labels_pts, num_masks, weights),
        )

    def forward(
        self,
        predictions: list[dict],
        targets: list[dict],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        if not predictions:
            raise ValueError("predictions must be a non-empty list of dicts")
        generator = generator if generator is not None else self.generator
        first = predictions[0]["logits"]
        targets, known = split_background(targets)
        known = [None if k is None else k.to(first.device, torch.float32) for k in known]  # once, not per layer
        unknown: dict = {}  # mask size -> per image the unknown share of each mask pixel (alike for every layer)
        validate_targets(targets, self.num_classes, first.shape[0])
        num_masks = reduce_num_masks(sum(len(t["labels"]) for t in targets), first.device)

        losses: dict[str, torch.Tensor] = {}
        for i, pred in enumerate(predictions):
            logits, mask_logits = pred["logits"], pred["mask_logits"]
            if logits.shape[-1] != self.num_classes + 1:
                raise ValueError(
                    f"prediction {i}: logits have {logits.shape[-1]} columns, expected "
                    f"num_classes + 1 = {self.num_classes + 1} (last column = no-object)"
                )
            if mask_logits.shape[:2] != logits.shape[:2]:
                raise ValueError(
                    f"prediction {i}: mask_logits {tuple(mask_logits.shape)} and logits "
                    f"{tuple(logits.shape)} disagree on [B,Q]"
                )
            indices = self.matcher(logits, mask_logits, targets, generator=generator)
            loss_bce, loss_dice = self.mask_losses(mask_logits, targets, indices, num_masks, generator, known)
            size = tuple(mask_logits.shape[-2:])
            if size not in unknown:
                unknown[size] = unknown_shares(known, size)
            ignored = unmatched_on_unknown(mask_logits, indices, unknown[size])
            losses[f"loss_class_{i}"] = self.class_weight * self.class_loss(logits, targets, indices, ignored)
            losses[f"loss_mask_{i}"] = self.mask_weight * loss_bce
            losses[f"loss_dice_{i}"] = self.dice_weight * loss_dice
        losses["loss"] = sum(losses.values())
        return losses


def unknown_shares(known: list[torch.Tensor | None], size: tuple[int, int]) -> list[torch.Tensor | None]:
    """Per image, the share of each pixel of a `size` map that the painting says nothing about (`known`:
    [H,W] where it says something, or None: everything known)."""
    with torch.no_grad():
        return [None if k is None else
                F.interpolate(1 - k.float()[None, None], size=size, mode="area")[0, 0] for k in known]


def unmatched_on_unknown(mask_logits: torch.Tensor, indices, unknown: list[torch.Tensor | None]) -> torch.Tensor | None:
    """[B,Q] bool: unmatched queries whose mask lies mostly on pixels the painting says nothing about
    (an instance nobody painted is not "no object"; `unknown`: `unknown_shares` at the masks' size);
    None where every image is known everywhere."""
    if all(u is None for u in unknown):
        return None
    batch, queries = mask_logits.shape[:2]
    out = torch.zeros(batch, queries, dtype=torch.bool, device=mask_logits.device)
    with torch.no_grad():
        for b, share in enumerate(unknown):
            if share is None:
                continue
            unknown_here = share.to(mask_logits.device)
            found = mask_logits[b].float() > 0  # [Q,h,w]
            area = found.flatten(1).sum(1).clamp(min=1)
            on_unknown = (found * unknown_here).flatten(1).sum(1) / area
            ignored = on_unknown > 0.5
            ignored[indices[b][0].to(ignored.device)] = False  # matched queries learn as usual
            out[b] = ignored
    return out
