"""Tiled inference: a large image as overlapping tiles, instances stitched across the seams.

A whole-image forward pass needs memory in proportion to the image (a 4000x4000 photo took 8 GiB);
tile by tile it needs only what one tile needs, plus the stitched maps. Each pixel takes its label
from exactly one tile, the one whose *core* holds it (the tile less half the overlap on every side it
shares with a neighbour), so nothing is counted twice. A segment of one tile and a segment of the same
class of a neighbouring tile are the same object where they agree on the strip both tiles see (IoU
there >= `link_iou`); such parts are joined, so an object lying on a seam comes out whole and once.
Stuff is one segment per class and image, as in the whole-image merge.
"""

from collections.abc import Callable
from dataclasses import dataclass
from math import ceil

import numpy as np
import torch

from .postprocess import PanopticResult, Segment


@dataclass(frozen=True)
class TileConfig:
    size: int = 512  # tile side in pixels
    overlap: int = 128  # pixels neighbouring tiles share: objects up to about this size are seen whole
    whole_up_to: int = 1024 * 1024  # images with at most this many pixels are predicted in one pass
    link_iou: float = 0.5  # agreement on a shared strip that makes two tiles' segments one object

    def __post_init__(self):
        if self.size < 32 or not 0 <= self.overlap < self.size:
            raise ValueError(f"tiles need size >= 32 and 0 <= overlap < size, got {self.size}, {self.overlap}")

    def tiles_needed(self, height: int, width: int) -> bool:
        return height * width > self.whole_up_to and max(height, width) > self.size


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int
    core: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the pixels this tile labels

    def crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.y0 : self.y1, self.x0 : self.x1]


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Tile starts along one axis, evenly spread, neighbours sharing at least `overlap` pixels."""
    if length <= size:
        return [0]
    n = ceil((length - size) / (size - overlap)) + 1
    return [round(k * (length - size) / (n - 1)) for k in range(n)]


def _cores(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Each tile's core along one axis: split at the middle of every shared strip."""
    cuts = [(s_next + s + size) // 2 for s, s_next in zip(starts, starts[1:])]
    edges = [0] + cuts + [length]
    return list(zip(edges[:-1], edges[1:]))


def tile_grid(height: int, width: int, config: TileConfig) -> list[Tile]:
    """The tiles of an image in raster order; their cores partition it."""
    ys, xs = _starts(height, config.size, config.overlap), _starts(width, config.size, config.overlap)
    cy, cx = _cores(ys, config.size, height), _cores(xs, config.size, width)
    return [Tile(y, min(y + config.size, height), x, min(x + config.size, width), (*cy[i], *cx[j]))
            for i, y in enumerate(ys) for j, x in enumerate(xs)]


class _Parts:
    """Segments of all tiles under provisional ids, joined with union-find."""

    def __init__(self):
        self.parent: list[int] = [0]
        self.category: list[int] = [0]
        self.thing: list[bool] = [False]
        self.score: list[float] = [0.0]

    def add(self, segment: Segment) -> int:
        self.parent.append(len(self.parent))
        self.category.append(segment.category_id)
        self.thing.append(segment.is_thing)
        self.score.append(segment.score)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the earliest part names the object


def _link(parts: _Parts, a: np.ndarray, b: np.ndarray, min_iou: float) -> None:
    """Joins the parts two tiles gave the same strip (`a`, `b`: provisional ids, 0 = void) where they
    are of the same class and agree there."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    ids_a, area_a = np.unique(a[a > 0], return_counts=True)
    ids_b, area_b = np.unique(b[b > 0], return_counts=True)
    both = (a > 0) & (b > 0)
    if not both.any():
        return
    pairs, inter = np.unique(a[both] * len(parts.parent) + b[both], return_counts=True)
    areas_a, areas_b = dict(zip(ids_a.tolist(), area_a.tolist())), dict(zip(ids_b.tolist(), area_b.tolist()))
    for pair, n in zip(pairs.tolist(), inter.tolist()):
        i, j = divmod(pair, len(parts.parent))
        if parts.category[i] != parts.category[j]:
            continue
        if n / (areas_a[i] + areas_b[j] - n) >= min_iou:
            parts.join(i, j)


def _channels_first(image) -> bool:
    shape = tuple(image.shape)
    return len(shape) == 3 and shape[0] == 3 and shape[-1] not in (3, 4)


def crop_image(image, y0: int, y1: int, x0: int, x1: int):
    """A window of an image in any layout `EclipseModel.predict` takes ([H,W], [H,W,C] or [3,H,W])."""
    return image[:, y0:y1, x0:x1] if _channels_first(image) else image[y0:y1, x0:x1]


def image_size(image) -> tuple[int, int]:
    shape = tuple(image.shape)
    if _channels_first(image):
        return shape[1], shape[2]
    if len(shape) not in (2, 3):
        raise ValueError(f"expected an image of shape [H,W], [H,W,3], [H,W,4] or [3,H,W], got {shape}")
    return shape[0], shape[1]


def predict_tiled(
    predict_tile: Callable[[object], PanopticResult],
    image,
    config: TileConfig = TileConfig(),
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> PanopticResult | None:
    """Panoptic result of a whole image from `predict_tile` run on each tile (in raster order);
    `progress(done, total)` after each tile; None when `cancel()` turned true before a tile."""
    height, width = image_size(image)
    tiles = tile_grid(height, width, config)
    columns = len({t.x0 for t in tiles})
    panoptic = np.zeros((height, width), np.int32)  # provisional part ids
    confidence = np.zeros((height, width), np.float32)
    parts = _Parts()
    kept: dict[int, tuple[Tile, np.ndarray]] = {}  # the previous row of tiles and this one: part-id maps
    for n, tile in enumerate(tiles):
        if cancel is not None and cancel():
            return None
        result = predict_tile(crop_image(image, tile.y0, tile.y1, tile.x0, tile.x1))
        local = result.panoptic_seg.cpu().numpy()
        table = np.zeros(int(local.max(initial=0)) + 1, np.int32)
        for s in result.segments:
            table[s.id] = parts.add(s)
        ids = table[local]
        for m, (other, other_ids) in kept.items():  # the neighbours already done: left, above, diagonal
            y0, y1 = max(tile.y0, other.y0), min(tile.y1, other.y1)
            x0, x1 = max(tile.x0, other.x0), min(tile.x1, other.x1)
            if y0 < y1 and x0 < x1:
                _link(parts, ids[y0 - tile.y0 : y1 - tile.y0, x0 - tile.x0 : x1 - tile.x0],
                      other_ids[y0 - other.y0 : y1 - other.y0, x0 - other.x0 : x1 - other.x0], config.link_iou)
        cy0, cy1, cx0, cx1 = tile.core
        inner = (slice(cy0 - tile.y0, cy1 - tile.y0), slice(cx0 - tile.x0, cx1 - tile.x0))
        panoptic[cy0:cy1, cx0:cx1] = ids[inner]
        if result.confidence is not None:
            confidence[cy0:cy1, cx0:cx1] = result.confidence.cpu().numpy()[inner]
        kept[n] = (tile, ids)
        kept.pop(n - columns - 1, None)  # older tiles share no strip with later ones
        if progress is not None:
            progress(n + 1, len(tiles))
    return _final(parts, panoptic, confidence)


def _final(parts: _Parts, panoptic: np.ndarray, confidence: np.ndarray) -> PanopticResult:
    """Objects from joined parts: ids 1..N in the order the tiles found them, stuff one segment per
    class, scores the area-weighted mean of the parts'."""
    count = len(parts.parent)
    roots = np.array([parts.find(i) for i in range(count)], np.int64)
    stuff_root: dict[int, int] = {}
    for i in range(1, count):  # every part of a stuff class joins the class's first part
        if not parts.thing[i]:
            roots[i] = stuff_root.setdefault(parts.category[i], int(roots[i]))
    roots[0] = 0
    part_area = np.bincount(panoptic.ravel(), minlength=count)
    object_area = np.bincount(roots, weights=part_area, minlength=count)
    weighted = np.bincount(roots, weights=part_area * np.asarray(parts.score), minlength=count)
    present = [int(r) for r in np.flatnonzero(object_area[1:] > 0) + 1]
    final_id = np.zeros(count, np.int32)
    segments = []
    for k, r in enumerate(present, start=1):
        final_id[r] = k
        segments.append(Segment(k, parts.category[r], parts.thing[r], float(weighted[r] / object_area[r]),
                                int(object_area[r])))
    out = final_id[roots][panoptic]
    return PanopticResult(torch.from_numpy(out), segments, torch.from_numpy(confidence))
