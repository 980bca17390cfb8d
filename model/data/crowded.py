"""Crowded scenes: many small, touching, textured instances of one thing class (like cells, grains or
beads) on varied backgrounds; the case where a fixed number of queries per step cannot be enough.

An image holds 20-150 instances ("cells": rounded blobs with a darker rim and a grainy interior, their
colours within a hue band fixed per seed, as a stain is) packed so that neighbours touch and partly occlude each other, over a
background made of one or two of the scenes' stuff textures, a smooth gradient, or plain noise.

    image, instances = crowded_scene(index, seed=0, size=256)   # uint8 [H,W,3], int32 [H,W] (0 = none)
    strokes = background_strokes(instances, count=5, seed=0)     # bool [H,W]: "not this class" scribbles

Deterministic per (index, seed, size).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import scene_assets as A

CROWDED_SALT = 0xC0DE5
MIN_INSTANCES, MAX_INSTANCES = 20, 150
MIN_VISIBLE_FRACTION = 0.4  # an occluded instance keeps its label only if this much of it shows
CLASS_NAME = "cell"


def _blob_mask(rng: A.Rng, radius: float, elongation: float, angle: float, size: int) -> np.ndarray:
    """A rounded blob of about `radius` (boundary wobble of a few percent) in a [size, size] window."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wobble = 1 + sum(rng.uniform(0, 0.06) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    rx, ry = radius * elongation, radius / elongation
    x, y = rx * wobble * np.cos(t), ry * wobble * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    pts = np.stack([x * c - y * s, x * s + y * c], 1) + size / 2
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: A.Rng, h: int, w: int) -> np.ndarray:
    """Float32 RGB [h, w, 3]: one or two stuff textures, a gradient, or noise."""
    kind = rng.random()
    names = list(A.STUFF_RENDERERS)
    if kind < 0.55:
        img = A.STUFF_RENDERERS[names[int(rng.integers(len(names)))]](rng, h, w)
        if rng.random() < 0.4:  # a second texture over part of the image
            other = A.STUFF_RENDERERS[names[int(rng.integers(len(names)))]](rng, h, w)
            region = A.fbm(rng, h, w, 1.5, 2) > rng.uniform(-0.3, 0.3)
            img = np.where(region[..., None], other, img)
        return img.astype(np.float32)
    if kind < 0.8:
        a, b = A.hsv(rng, (0, 360), (0.0, 0.6), (0.1, 0.9)), A.hsv(rng, (0, 360), (0.0, 0.6), (0.1, 0.9))
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
        t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)
        return (a + (b - a) * t[..., None]).astype(np.float32)
    base = A.hsv(rng, (0, 360), (0.0, 0.5), (0.15, 0.85))
    return (base * (1 + 0.25 * A.fbm(rng, h, w, rng.uniform(2, 8), 3))[..., None]).astype(np.float32)


def crowded_scene(index: int, seed: int = 0, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [size, size, 3], instance map int32 [size, size]: 0 = background, 1..n)."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got {index}, {seed}")
    rng = np.random.default_rng(np.random.SeedSequence([CROWDED_SALT, int(seed), int(index)]))
    h = w = int(size)
    count = int(rng.integers(MIN_INSTANCES, MAX_INSTANCES + 1))
    cover = rng.uniform(0.3, 0.55)  # share of the image the instances would cover
    mean_radius = np.sqrt(cover * h * w / (np.pi * count))
    # The class keeps its look within a dataset (seed), as a stain does: a hue band per seed, a small
    # shift per image.
    hue = np.random.default_rng([CROWDED_SALT, int(seed)]).uniform(0, 360) + rng.uniform(-20, 20)
    img = _background(rng, h, w)
    labels = np.zeros((h, w), np.int32)
    shapes = []
    centres: list[tuple[float, float, float]] = []
    for _ in range(count * 6):  # rejection sampling: neighbours may touch and overlap a little
        if len(centres) == count:
            break
        r = mean_radius * rng.uniform(0.7, 1.3)
        cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (0.75 * (r + q)) ** 2 for y, x, q in centres):
            continue
        centres.append((cy, cx, r))
    for k, (cy, cx, r) in enumerate(centres, start=1):
        win = int(np.ceil(r * 3)) | 1
        mask = _blob_mask(rng, r, rng.uniform(1.0, 1.35), rng.uniform(0, np.pi), win)
        y0, x0 = int(round(cy)) - win // 2, int(round(cx)) - win // 2
        ys, xs = slice(max(y0, 0), min(y0 + win, h)), slice(max(x0, 0), min(x0 + win, w))
        m = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        if not m.any():
            continue
        # Grainy interior, brighter centre, darker rim: what makes a touching neighbour visible.
        light = A.hsv(rng, (hue - 15, hue + 15), (0.35, 0.85), (0.55, 1.0))
        dark = light * rng.uniform(0.25, 0.5)
        grain = A.fbm(rng, m.shape[0], m.shape[1], max(2.0, r / 2.5), 2)
        inside = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        rim = np.clip(inside / max(1.5, 0.25 * r), 0, 1)
        t = np.clip(0.45 + 0.2 * grain + 0.35 * rim, 0, 1)
        rgb = A.colourise(t, dark, light)
        region = img[ys, xs]
        region[m] = rgb[m]
        labels[ys, xs][m] = k
        shapes.append((k, int(m.sum())))
    # Occluded instances that show too little lose their label (their pixels stay as painted).
    counts = np.bincount(labels.ravel(), minlength=len(centres) + 1)
    keep = np.zeros(len(centres) + 1, np.int32)
    n = 0
    for k, area in shapes:
        if counts[k] >= max(6, MIN_VISIBLE_FRACTION * area):
            n += 1
            keep[k] = n
    labels = keep[labels]
    img *= (1 + 0.1 * A.fbm(rng, h, w, 1.5, 1))[..., None]
    img += (rng.random((h, w, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(rng.uniform(4, 14))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels


def background_strokes(instances: np.ndarray, count: int = 5, seed: int = 0, width: int = 5,
                       length: int = 40) -> np.ndarray:
    """`count` short scribbles (bool [H,W]) on pixels that hold no instance (2 px away from any), as a
    user marks "not this class" beside a few painted instances."""
    rng = np.random.default_rng([CROWDED_SALT, 7, int(seed)])
    h, w = instances.shape
    free = ~ndimage.binary_dilation(instances > 0, iterations=2 + width // 2)
    out = np.zeros((h, w), bool)
    made = 0
    for _ in range(200 * count):
        if made == count:
            break
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        if not free[y, x]:
            continue
        angle = rng.uniform(0, 2 * np.pi)
        canvas = Image.new("L", (w, h), 0)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        ImageDraw.Draw(canvas).line([(x, y), end], fill=1, width=width)
        stroke = np.asarray(canvas, dtype=bool) & free  # clipped where it would touch an instance
        if stroke.sum() >= length * width // 2:
            out |= stroke
            made += 1
    return out
