"""Targets and losses of a dense step (see `model.network.dense_head`): per-pixel foreground and the
normalised distance to the instance boundary, learned only where the painting says something.

A training sample's target is the usual {"labels", "masks"}: one mask per painted instance, labelled
with its class id, and optionally masks labelled 0 that mark known background. Where no mask says
anything the pixel is unknown and gets no loss: a user who paints a few instances and a few background
strokes teaches neither "unpainted means background" nor the opposite.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

UNKNOWN = -1


def dense_targets(target: dict, class_ids: list[int], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels int64 [H,W]: -1 unknown, 0 background, k = the step's k-th class (1-based); distance
    float32 [H,W]: each instance's distance to its boundary over its maximum, 0 elsewhere), padded with
    unknown to `size`."""
    masks = target["masks"].cpu().numpy().astype(bool)
    labels_in = target["labels"].cpu().tolist()
    h, w = masks.shape[-2:]
    labels = np.full(size, UNKNOWN, np.int64)
    distance = np.zeros(size, np.float32)
    index = {c: k + 1 for k, c in enumerate(class_ids)}
    for mask, label in sorted(zip(masks, labels_in), key=lambda p: p[1] != 0):  # background first
        if label == 0:
            labels[:h, :w][mask] = 0
            continue
        labels[:h, :w][mask] = index[int(label)]
        box = ndimage.find_objects(mask.astype(np.int32))[0] if mask.any() else None
        if box is None:
            continue
        inside = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1]
        distance[:h, :w][box][mask[box]] = (inside / inside.max())[mask[box]]
    return torch.from_numpy(labels), torch.from_numpy(distance)


def dense_loss(logits: torch.Tensor, labels: torch.Tensor, distance: torch.Tensor, is_thing: list[bool]) -> dict:
    """Binary cross-entropy of each class's foreground (positives and negatives balanced) and, for things,
    of the distance channel, on known pixels.

    logits [B, 2C, h, w] at the labels' resolution or a fraction of it (then resized to it); labels,
    distance [B, H, W].
    """
    c = len(is_thing)
    up = logits.float()
    if tuple(up.shape[-2:]) != tuple(labels.shape[-2:]):
        up = F.interpolate(up, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    known = labels != UNKNOWN
    if not known.any():
        zero = up.sum() * 0.0  # keeps the graph: nothing to learn from this batch
        return {"loss": zero, "loss_foreground": zero, "loss_distance": zero}
    fg = torch.stack([labels == k + 1 for k in range(c)], 1).float()
    # Positives and known negatives weigh half each: a few painted instances beside large background
    # strokes (or a small object on a large image) still teach the class.
    bce = F.binary_cross_entropy_with_logits(up[:, :c], fg, reduction="none")
    known_c = known[:, None].expand_as(fg)
    positive, negative = known_c & (fg > 0), known_c & (fg == 0)
    parts = [bce[m].mean() for m in (positive, negative) if m.any()]
    loss_fg = sum(parts) / len(parts)
    things = [k for k in range(c) if is_thing[k]]
    loss_dist = up.new_zeros(())
    if things:
        target = torch.stack([torch.where(labels == k + 1, distance, torch.zeros_like(distance)) for k in things], 1)
        mask = known[:, None].expand_as(target)
        loss_dist = F.binary_cross_entropy_with_logits(up[:, [c + k for k in things]], target, reduction="none")[mask].mean()
    return {"loss": loss_fg + loss_dist, "loss_foreground": loss_fg, "loss_distance": loss_dist}


def dense_window(entry, side: int, seed: int, iteration: int, k: int):
    """A training sample (inputs, [labels, distance]) cut to a `side` window (aligned to 32 pixels)
    around a pixel the painting says something about: half the time one of the classes, else any known
    one (a few painted instances on a large image would otherwise rarely fall in a window). Drawn from
    (seed, iteration, k); the whole sample where it is not larger than the window (or `side` is 0)."""
    inputs, (labels, distance) = entry
    h, w = labels.shape  # the padded size: multiples of 32
    if not side or (h <= side and w <= side):
        return entry
    rng = np.random.default_rng([seed, 17, iteration, k])
    height, width = min(side, h), min(side, w)
    flat = labels.reshape(-1)
    pool = torch.nonzero(flat > 0).flatten() if rng.random() < 0.5 else torch.empty(0, dtype=torch.long)
    if pool.numel() == 0:
        pool = torch.nonzero(flat != UNKNOWN).flatten()
    if pool.numel():
        py, px = divmod(int(pool[int(rng.integers(0, pool.numel()))]), w)
    else:
        py, px = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0 = 32 * int(np.clip(round((py - height / 2) / 32), 0, (h - height) // 32))
    x0 = 32 * int(np.clip(round((px - width / 2) / 32), 0, (w - width) // 32))
    window = (slice(y0, y0 + height), slice(x0, x0 + width))
    return inputs.crop(y0, x0, height, width), [labels[window], distance[window]]
