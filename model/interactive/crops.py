"""Large painted images become crops around what was painted, so Learn's memory and time follow the
painting, not the image: a 4000x4000 photo with a few painted cells trains on a few 512x512 windows,
at full resolution (resizing would shrink the cells out of the features' reach)."""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..network.tiled import crop_image, image_size
from .config import Example


def _windows(painted: np.ndarray, side: int) -> list[tuple[int, int, int, int]]:
    """Windows (y0, y1, x0, x1) of at most side x side covering every painted pixel: greedily, one
    centred on the first painted part not yet covered, until none is left."""
    h, w = painted.shape
    labels, n = ndimage.label(painted)
    boxes = ndimage.find_objects(labels)
    covered = np.zeros(n, bool)
    out = []
    for k, box in enumerate(boxes):
        if covered[k]:
            continue
        cy, cx = (box[0].start + box[0].stop) // 2, (box[1].start + box[1].stop) // 2
        y0 = int(np.clip(cy - side // 2, 0, max(h - side, 0)))
        x0 = int(np.clip(cx - side // 2, 0, max(w - side, 0)))
        window = (y0, min(y0 + side, h), x0, min(x0 + side, w))
        out.append(window)
        for j, other in enumerate(boxes):  # parts inside this window need no window of their own
            if (other[0].start >= window[0] and other[0].stop <= window[1] and other[1].start >= window[2]
                    and other[1].stop <= window[3]):
                covered[j] = True
        covered[k] = True  # a part larger than the window is taken around its centre
    return out


def crop_to_painting(examples: Sequence[Example], side: int) -> list[Example]:
    """Examples larger than side x side replaced by crops around their painted pixels (instances and
    painted background; the centre of an image marked complete with nothing painted); smaller ones
    unchanged. Instances keep their labels within each crop."""
    out = []
    for e in examples:
        image, instances = np.asarray(e.image), np.asarray(e.instances)
        h, w = instances.shape
        if max(h, w) <= side:
            out.append(e)
            continue
        painted = instances > 0
        if e.background is not None:
            painted = painted | np.asarray(e.background, bool)
        windows = _windows(painted, side)
        if not windows and e.complete:  # marked complete with nothing painted: an example without the class
            windows = [_centre_window(h, w, side)]
        for y0, y1, x0, x1 in windows:
            crop = crop_image(image, y0, y1, x0, x1)
            background = None if e.background is None else np.asarray(e.background)[y0:y1, x0:x1]
            out.append(Example(crop, instances[y0:y1, x0:x1], background, e.instance_classes, e.complete))
    return out


def _centre_window(h: int, w: int, side: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the central window of at most side x side."""
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return y0, min(y0 + side, h), x0, min(x0 + side, w)


def centre_crop(image, side: int):
    """The central side x side window of an image larger than that (context images), else the image."""
    h, w = image_size(image)
    if max(h, w) <= side:
        return image
    return crop_image(np.asarray(image), *_centre_window(h, w, side))
