"""Training and evaluation transforms: image uint8 [3,H,W] plus target {"labels", "masks" [M,H,W]}.

Every random choice is drawn from a `torch.Generator` seeded per call (`TrainTransform.apply(image,
target, seed)`), never from the global RNG, so one (image, seed) pair always gives the same
augmentation, in any process or DataLoader worker; the training engine caches frozen features per
(image, augmentation) on this guarantee. The draws are an explicit `AugmentParams`, applied to the
image and the masks by the same torchvision v2 functionals (bilinear for the image, nearest-exact for
masks). The pipeline follows Mask2Former's dataset mapper: resize, crop, colour jitter, flip, pad.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .augment import AugmentConfig

Target = dict[str, Any]


@dataclass(frozen=True)
class AugmentParams:
    """One draw of an augmentation for an image of a given size."""

    resize: tuple[int, int] | None  # (h, w) after resizing
    crop: tuple[int, int, int, int] | None  # (top, left, height, width) in the resized image
    brightness: float | None  # additive delta; None = not applied
    contrast: float | None
    saturation: float | None
    hue: float | None
    contrast_first: bool  # SSD order: contrast before saturation/hue, or after
    flip: bool
    pad: tuple[int, int] | None  # (h, w) to pad to, bottom/right
    vertical_flip: bool = False  # after the pad
    transpose: bool = False  # after the vertical flip; applied only where the result is square


def short_side_size(h: int, w: int, short: int, max_size: int | None = None) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size (rounded half up), long side capped at max_size."""
    scale = short / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max_size is not None and max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _coin(g: torch.Generator, p: float) -> bool:
    # Always draw, so later draws do not shift when p is 0 or 1.
    return torch.rand((), generator=g, dtype=torch.float64).item() < p


def _randint(g: torch.Generator, n: int) -> int:
    """Uniform in [0, n)."""
    return int(torch.randint(n, (), generator=g).item())


DIHEDRAL_SALT = 0x0D1EDA  # seeds the dihedral draws' own stream


def sample_params(config: AugmentConfig, size: tuple[int, int], seed: int) -> AugmentParams:
    """The augmentation `seed` gives for an image of `size` (h, w): a pure function of its arguments."""
    g = torch.Generator().manual_seed(int(seed))
    h, w = size
    resize = None
    if config.short_sides:
        short = config.short_sides[_randint(g, len(config.short_sides))]
        resize = short_side_size(h, w, short, config.max_size)
    elif config.scale_range is not None:
        s = _uniform(g, *config.scale_range)
        resize = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
    rh, rw = resize or (h, w)

    crop_to = size if config.native_canvas else config.crop_size
    crop = None
    if crop_to is not None and (rh > crop_to[0] or rw > crop_to[1]):
        ch, cw = min(rh, crop_to[0]), min(rw, crop_to[1])
        crop = (_randint(g, rh - ch + 1), _randint(g, rw - cw + 1), ch, cw)

    def jitter(lo: float, hi: float, active: bool) -> float | None:
        apply, value = _coin(g, config.jitter_prob), _uniform(g, lo, hi)
        return value if active and apply else None

    brightness = jitter(-config.brightness, config.brightness, config.brightness > 0)
    contrast = jitter(1 - config.contrast, 1 + config.contrast, config.contrast > 0)
    saturation = jitter(1 - config.saturation, 1 + config.saturation, config.saturation > 0)
    hue = jitter(-config.hue, config.hue, config.hue > 0)
    contrast_first = _coin(g, 0.5)
    flip = _coin(g, config.flip_prob)
    pad = size if config.native_canvas else config.pad_size
    vertical_flip = transpose = False
    if config.dihedral:
        # Its own stream, so every other draw is the same with or without it.
        d = torch.Generator().manual_seed(int(seed) ^ DIHEDRAL_SALT)
        vertical_flip, transpose = _coin(d, 0.5), _coin(d, 0.5)
    return AugmentParams(resize, crop, brightness, contrast, saturation, hue, contrast_first, flip, pad,
                         vertical_flip, transpose)


def augmentation_seed(base_seed: int, sample_index: int, epoch: int = 0) -> int:
    """A well-mixed 63-bit seed for (run seed, image index, epoch), for `TrainTransform.apply`."""
    state = np.random.SeedSequence([int(base_seed), int(sample_index), int(epoch)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


# ---- applying parameters -------------------------------------------------------------------------


def _check_inputs(image: torch.Tensor, target: Target | None) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        desc = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"transform: image must be a uint8 tensor [3, H, W], got {desc}")
    if target is None:
        return
    masks, labels = target.get("masks"), target.get("labels")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3 or masks.shape[-2:] != image.shape[-2:]:
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"transform: target masks must be [M, {image.shape[1]}, {image.shape[2]}], got {got}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (masks.shape[0],):
        raise ValueError(f"transform: target labels must be a tensor [{masks.shape[0]}] matching the masks")


def _pack(masks: torch.Tensor) -> torch.Tensor | None:
    """Disjoint masks [M,H,W] as one index map [1,H,W] (0 = none, i+1 = mask i); None if they overlap.

    Panoptic masks never overlap, so every geometric op then runs once instead of M times; nearest
    resampling, flips, crops and zero padding commute with this packing exactly.
    """
    if masks.shape[0] == 0 or masks.sum(0, dtype=torch.int32).max() > 1:
        return None
    index = masks.to(torch.uint8).argmax(0).to(torch.int32) + 1
    index[~masks.any(0)] = 0
    return index[None]


def _unpack(index: torch.Tensor, m: int) -> torch.Tensor:
    return index == torch.arange(1, m + 1, dtype=index.dtype)[:, None, None]


def _geometry(x: torch.Tensor, p: AugmentParams, is_mask: bool, pad_value: float) -> torch.Tensor:
    """Resize, crop, flip, pad and (dihedral) flip/transpose one tensor [C,H,W] (image: bilinear; mask: nearest-exact)."""
    if p.resize is not None and tuple(x.shape[-2:]) != p.resize:
        mode = InterpolationMode.NEAREST_EXACT if is_mask else InterpolationMode.BILINEAR
        x = F.resize(x, list(p.resize), interpolation=mode, antialias=not is_mask)
    if p.crop is not None:
        x = F.crop(x, *p.crop)
    if p.flip:
        x = F.horizontal_flip(x)
    if p.pad is not None:
        ph, pw = p.pad[0] - x.shape[-2], p.pad[1] - x.shape[-1]
        if ph > 0 or pw > 0:
            x = F.pad(x, [0, 0, max(pw, 0), max(ph, 0)], fill=0 if is_mask else pad_value)
    if p.vertical_flip:
        x = F.vertical_flip(x)
    if p.transpose and x.shape[-2] == x.shape[-1]:
        x = x.transpose(-1, -2)
    return x


def _colour(image: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """detectron2's ColorAugSSD: brightness, then contrast before or after saturation and hue."""
    if p.brightness is not None:
        image = (image.to(torch.int16) + round(p.brightness)).clamp(0, 255).to(torch.uint8)

    def contrast(x: torch.Tensor) -> torch.Tensor:
        # SSD's "contrast" scales the pixel values (no mean subtraction).
        return x if p.contrast is None else (x.float() * p.contrast).round().clamp(0, 255).to(torch.uint8)

    def sat_hue(x: torch.Tensor) -> torch.Tensor:
        if p.saturation is not None:
            x = F.adjust_saturation(x, p.saturation)
        return x if p.hue is None else F.adjust_hue(x, p.hue)

    return sat_hue(contrast(image)) if p.contrast_first else contrast(sat_hue(image))


def apply_params(
    image: torch.Tensor, target: Target | None, params: AugmentParams, pad_value: int = 128
) -> tuple[torch.Tensor, Target | None]:
    """Apply one drawn augmentation to the image and (if given) the target's masks; empty masks are dropped."""
    _check_inputs(image, target)
    out = _geometry(tv_tensors.Image(image), params, False, pad_value)
    out = _colour(out.as_subclass(torch.Tensor), params)
    if target is None:
        return out, None
    masks, labels = target["masks"].bool(), target["labels"]
    packed = _pack(masks)
    if len(masks) == 0:
        new_masks = torch.zeros((0, *out.shape[-2:]), dtype=torch.bool)
    elif packed is not None:
        new_masks = _unpack(_geometry(tv_tensors.Mask(packed), params, True, 0).as_subclass(torch.Tensor), len(masks))
    else:
        new_masks = _geometry(tv_tensors.Mask(masks), params, True, 0).as_subclass(torch.Tensor).bool()
    keep = new_masks.flatten(1).any(1)
    new_target = dict(target)  # other keys pass through untouched
    new_target["masks"], new_target["labels"] = new_masks[keep], labels[keep]
    return out, new_target


class TrainTransform:
    """A reproducible training augmentation: `apply(image, target, seed)` is a pure function."""

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None) -> None:
        self.config = config
        self.generator = generator

    def params(self, size: tuple[int, int], seed: int) -> AugmentParams:
        return sample_params(self.config, size, seed)

    def apply(self, image: torch.Tensor, target: Target | None, seed: int) -> tuple[torch.Tensor, Target | None]:
        """The augmentation number `seed` of this image (same seed, same output)."""
        _check_inputs(image, target)
        return apply_params(image, target, self.params(tuple(image.shape[-2:]), seed), self.config.pad_value)

    def __call__(self, image: torch.Tensor, target: Target | None = None) -> tuple[torch.Tensor, Target | None]:
        """A fresh augmentation: its seed comes from this transform's generator (else the global RNG)."""
        seed = int(torch.randint(2**62, (), generator=self.generator).item())
        return self.apply(image, target, seed)


def test_transform(
    short_side: int, max_size: int | None = None
) -> Callable[[torch.Tensor, Target | None], tuple[torch.Tensor, Target | None]]:
    """Evaluation resize: short side to `short_side` (long side at most `max_size`), nothing random."""
    if short_side <= 0:
        raise ValueError(f"test_transform: short_side must be positive, got {short_side}")

    def transform(image: torch.Tensor, target: Target | None = None) -> tuple[torch.Tensor, Target | None]:
        _check_inputs(image, target)
        size = short_side_size(image.shape[1], image.shape[2], short_side, max_size)
        params = AugmentParams(size, None, None, None, None, None, True, False, None)
        return apply_params(image, target, params)

    return transform


# pytest would otherwise collect `test_transform` from modules that import it.
test_transform.__test__ = False  # type: ignore[attr-defined]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] (a PanopticSample's image) -> uint8 tensor [3, H, W]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_to_tensor: expected uint8 [H, W, 3], got {image.shape} {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
