"""Image files, and the one rule that turns any numeric image into the uint8 pixels the model reads.

`to_uint8` is used wherever an image enters from outside (image files on the command line, napari layers
in the plugin), so an image looks the same to the model whichever way it came in. The model's own API
(`EclipseModel.predict`) reads uint8, or floats already in 0..255.
"""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write

INTENSITY_RULE = """\
shapes: grey [H,W] or [H,W,1], grey+alpha [H,W,2], RGB [H,W,3] or RGBA [H,W,4]; alpha is ignored.
intensities: uint8 is used as it is; bool maps to 0/255. Any other integer or float type is mapped
linearly from a window [lo, hi] to 0..255 (values outside it clip, a constant image becomes 0): the
window is the contrast limits where there are some (napari's, so the model sees what the user sees),
else the image's own minimum and maximum over all channels together, so colours keep their balance.
NaN pixels become 0."""


class ImageError(ValueError):
    """An image was refused; the message says why (and names the file where there is one)."""


def to_uint8(image, contrast_limits=None, where: str = "image") -> np.ndarray:
    """uint8 [H,W] or [H,W,3] by INTENSITY_RULE; ImageError for anything else."""
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise ImageError(f"{where}: unsupported pixel type {a.dtype}; expected integer, float or bool pixels")
    if a.ndim == 3 and a.shape[-1] in (1, 2):
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ImageError(
            f"{where}: unsupported image shape {tuple(np.shape(image))}; expected [H,W] grey, [H,W,2] grey+alpha, "
            "[H,W,3] RGB or [H,W,4] RGBA (stacks, volumes and time series are not images)"
        )
    if min(a.shape[:2]) < 1:
        raise ImageError(f"{where}: the image is empty (shape {tuple(np.shape(image))})")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if contrast_limits is not None:
        lo, hi = (float(v) for v in contrast_limits)
        if not np.isfinite([lo, hi]).all():
            raise ImageError(f"{where}: the contrast limits {contrast_limits} are not finite")
    elif finite.any():
        lo, hi = float(f[finite].min()), float(f[finite].max())
    else:
        lo = hi = 0.0
    scaled = (np.where(np.isnan(f), lo, f) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H,W] -> [H,W,3] (grey repeated); [H,W,3] unchanged."""
    return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image)


def read_image(path: str | Path) -> np.ndarray:
    """The array stored in an image file (PNG, JPEG, TIFF, ... through scikit-image; .npy through numpy),
    unconverted; ImageError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found" if not path.exists() else f"{path}: is not a file")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import skimage.io

        with warnings.catch_warnings():  # imageio's legacy plugins warn about themselves while probing
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(skimage.io.imread(str(path)))
    except Exception as exc:  # the readers raise many types (OSError, ValueError, SyntaxError, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ImageError(f"{path}: cannot read the image ({reason})") from exc


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Writes uint8 grey or RGB, or uint16 grey, as a PNG, atomically (its folder is created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(array))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
