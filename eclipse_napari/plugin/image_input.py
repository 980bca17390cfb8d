"""From a napari image layer's data to the 2-D planes the model reads (no Qt here).

A layer holds [..., H, W] (grey) or [..., H, W, 3|4] (RGB/RGBA) of any numeric dtype; the leading axes
are planes (z, t, ...). Pixels become uint8 by the package's one rule (`model.io.images.to_uint8`), with
the layer's contrast limits as the window, i.e. the model sees what the user sees.
"""

import itertools

import numpy as np

from model.io.images import ImageError, to_uint8

MIN_SIDE = 16  # smaller planes cannot carry a stride-32 feature map meaningfully


class LayerInputError(ImageError):
    """The layer's data cannot be segmented; the message says why."""


def plane_axes(shape: tuple[int, ...], rgb: bool) -> int:
    """Number of leading (plane) axes; raises for data that has no 2-D plane."""
    spatial = 3 if rgb else 2
    if len(shape) < spatial:
        raise LayerInputError(f"expected an image with at least 2 spatial axes, got shape {tuple(shape)}")
    if rgb and shape[-1] not in (3, 4):
        raise LayerInputError(f"an RGB layer needs 3 or 4 channels in its last axis, got shape {tuple(shape)}")
    h, w = shape[len(shape) - spatial], shape[len(shape) - spatial + 1]
    if min(h, w) < MIN_SIDE:
        raise LayerInputError(f"the image planes are {h}x{w} pixels; at least {MIN_SIDE}x{MIN_SIDE} are needed")
    return len(shape) - spatial


def plane_indices(shape: tuple[int, ...], rgb: bool, current: tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """Indices of the leading axes to segment: `current` alone, or every plane when it is None."""
    lead = shape[: plane_axes(shape, rgb)]
    if current is not None:
        current = tuple(int(i) for i in current)
        if len(current) != len(lead) or any(not 0 <= i < n for i, n in zip(current, lead)):
            raise LayerInputError(f"plane {current} is outside the layer's planes {lead}")
        return [current]
    return list(itertools.product(*[range(n) for n in lead]))


def to_model_plane(plane, rgb: bool, contrast_limits=None) -> np.ndarray:
    """One plane as uint8 [H,W] or [H,W,3] for the model."""
    plane = np.asarray(plane)
    if rgb:
        plane = plane[..., :3]
    elif plane.ndim != 2:
        raise LayerInputError(f"expected a 2-D plane, got shape {plane.shape}")
    try:
        return to_uint8(plane, contrast_limits, where="the image layer")
    except ImageError as exc:
        raise LayerInputError(str(exc)) from None


def planes_of(data, rgb: bool, current: tuple[int, ...] | None, contrast_limits=None):
    """[(index, uint8 plane)] for the current plane (`current` = its leading indices) or all planes."""
    shape = tuple(data.shape)
    return [(index, to_model_plane(data[index], rgb, contrast_limits))
            for index in plane_indices(shape, rgb, current)]
