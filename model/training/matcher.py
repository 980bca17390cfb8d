"""Hungarian matching between Mask2Former queries and ground-truth segments.

Costs are computed on a shared set of random points per image (as in Mask2Former),
so predictions and targets may have different spatial resolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Sample `input` [N,C,H,W] at `point_coords` [N,P,2] (x,y in [0,1]) -> [N,C,P].

    Same as detectron2's `point_sample`: a thin wrapper over `grid_sample`, which expects
    coordinates in [-1,1]. Pass `align_corners=False` to match detectron2's usage.
    A 4-D `point_coords` [N,Hg,Wg,2] gives [N,C,Hg,Wg].
    """
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, **kwargs)
    if add_dim:
        output = output.squeeze(3)
    return output


def validate_targets(targets: list[dict], num_classes: int, batch_size: int) -> None:
    """Raise ValueError if targets do not follow the 1-based label / [M,H,W] mask contract."""
    if len(targets) != batch_size:
        raise ValueError(f"expected {batch_size} target dicts (one per image), got {len(targets)}")
    for b, t in enumerate(targets):
        labels, masks = t["labels"], t["masks"]
        if labels.dim() != 1 or masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"target {b}: expected labels [M] and masks [M,H,W], got labels {tuple(labels.shape)} "
                f"and masks {tuple(masks.shape)}"
            )
        if labels.numel() and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"target {b}: labels must be 1-based class ids in 1..{num_classes} (0 = void is not a "
                f"valid target), got min {int(labels.min())} max {int(labels.max())}"
            )


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost: inputs [N,P] logits, targets [M,P] in {0,1} -> [N,M]."""
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.T
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE-with-logits: inputs [N,P] logits, targets [M,P] -> [N,M]."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    # BCE(x, t) = t*pos + (1-t)*neg, so all pairs come from two matrix products.
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments, per image.

    cost = class_weight * (-sigmoid(logit)[gt class column])
         + mask_weight * point BCE + dice_weight * point dice

    The published Mask2Former/ECLIPSE matcher uses softmax probabilities in the class
    cost; our model treats every class column (and the no-object column) as an
    independent sigmoid, so we use sigmoid probabilities here for consistency.
    Label c (1-based) lives in logit column c-1; the last column is no-object.
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError("all matcher cost weights are 0")
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.generator = generator

    @torch.no_grad()
    def forward(
        self,
        logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[dict],
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """logits [B,Q,K+1], mask_logits [B,Q,h,w], targets as in the module docstring.

        Returns one (pred_idx, gt_idx) pair of LongTensors (CPU) per image, of length
        min(Q, M); pred_idx is sorted ascending.
        """
        batch_size, num_queries = logits.shape[:2]
        validate_targets(targets, logits.shape[-1] - 1, batch_size)
        generator = generator if generator is not None else self.generator
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"].to(logits.device)
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.long)
                indices.append((empty, empty.clone()))
                continue
            prob = logits[b].float().sigmoid()
            cost_class = -prob[:, labels - 1]  # [Q,M]

            out_mask = mask_logits[b].float()[:, None]  # [Q,1,h,w]
            tgt_mask = target["masks"].to(device=out_mask.device, dtype=torch.float32)[:, None]
            # Same points for all predictions and targets of this image.
            coords = torch.rand(1, self.num_points, 2, device=out_mask.device, generator=generator)
            out_pts = point_sample(out_mask, coords.expand(out_mask.shape[0], -1, -1), align_corners=False)
            tgt_pts = point_sample(tgt_mask, coords.expand(tgt_mask.shape[0], -1, -1), align_corners=False)
            out_pts, tgt_pts = out_pts.squeeze(1), tgt_pts.squeeze(1)

            cost = (
                self.class_weight * cost_class
                + self.mask_weight * batch_sigmoid_ce_cost(out_pts, tgt_pts)
                + self.dice_weight * batch_dice_cost(out_pts, tgt_pts)
            )
            cost = cost.reshape(num_queries, -1).cpu()
            if not torch.isfinite(cost).all():
                raise ValueError(f"image {b}: matching cost has non-finite entries (NaN/inf predictions?)")
            pred_idx, gt_idx = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(pred_idx, dtype=torch.long), torch.as_tensor(gt_idx, dtype=torch.long))
            )
        return indices
