"""Texture and sprite library for the generated panoptic scenes (`model.data.scenes`).

Only images bundled inside the scikit-image wheel are used (nothing downloads); they are loaded once per
process. Every random choice comes from the numpy Generator passed in, so results are deterministic.
Colours are float32 RGB in 0..255; grey textures are float32 in 0..1.
"""

from __future__ import annotations

import colorsys
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

Rng = np.random.Generator

# Hue ranges in degrees (may wrap below 0), saturation and value ranges in 0..1.
PALETTES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-12, 12), (0.55, 0.95), (0.45, 0.95)),
    "orange": ((18, 40), (0.6, 0.95), (0.6, 1.0)),
    "yellow": ((42, 62), (0.5, 0.9), (0.65, 1.0)),
    "green": ((75, 150), (0.4, 0.85), (0.3, 0.85)),
    "cyan": ((165, 195), (0.4, 0.85), (0.5, 0.95)),
    "blue": ((200, 245), (0.45, 0.9), (0.35, 0.9)),
    "purple": ((260, 320), (0.35, 0.8), (0.35, 0.85)),
    "neutral": ((0, 360), (0.0, 0.12), (0.2, 0.95)),
    "brown": ((15, 38), (0.35, 0.75), (0.2, 0.55)),
}


# ---------------------------------------------------------------- bundled images and resizing


@cache
def bundled(name: str) -> np.ndarray:
    """A scikit-image bundled image (read-only array), loaded once."""
    from skimage import data

    arr = np.asarray(getattr(data, name)())
    arr.setflags(write=False)
    return arr


@cache
def gray_texture(name: str) -> np.ndarray:
    """A bundled image as float32 [H, W] in [0, 1], its 1st..99th percentiles stretched to 0..1."""
    img = bundled(name).astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    lo, hi = np.percentile(img, [1, 99])
    out = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)
    out.setflags(write=False)
    return out


def resize(a: np.ndarray, h: int, w: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize float32 [h0, w0] or [h0, w0, C] to [h, w] (antialiased when shrinking)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a).resize((w, h), resample), dtype=np.float32)
    return np.stack([resize(a[..., c], h, w, resample) for c in range(a.shape[2])], axis=-1)


def sample_texture(rng: Rng, name: str, h: int, w: int, frac: tuple[float, float]) -> np.ndarray:
    """A random crop (long side = frac of the source side), flipped/transposed at random, resized to [h, w]."""
    src = gray_texture(name)
    transpose = rng.random() < 0.5
    th, tw = (w, h) if transpose else (h, w)
    side = rng.uniform(*frac) * min(src.shape)
    ch = int(np.clip(round(side * th / max(th, tw)), 4, src.shape[0]))
    cw = int(np.clip(round(side * tw / max(th, tw)), 4, src.shape[1]))
    y = int(rng.integers(0, src.shape[0] - ch + 1))
    x = int(rng.integers(0, src.shape[1] - cw + 1))
    crop = src[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[::-1]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if transpose:
        crop = crop.T
    return resize(crop, h, w)


# ---------------------------------------------------------------- noise and colour


def smooth_noise(rng: Rng, h: int, w: int, cells_y: float, cells_x: float) -> np.ndarray:
    """Bicubic-upsampled white noise: about cells_y x cells_x blobs over [h, w], roughly unit std."""
    gy, gx = max(2, int(np.ceil(cells_y)) + 2), max(2, int(np.ceil(cells_x)) + 2)
    grid = rng.standard_normal((gy, gx)).astype(np.float32)
    return resize(grid, h, w, Image.BICUBIC)


def fbm(rng: Rng, h: int, w: int, cells: float = 3.0, octaves: int = 3, aspect: float = 1.0) -> np.ndarray:
    """Fractal noise: octaves of smooth noise doubling in frequency; aspect > 1 stretches blobs along x."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2**o
        out += amp * smooth_noise(rng, h, w, c * (h / max(h, w)) * aspect**0.5, c * (w / max(h, w)) / aspect**0.5)
        total += amp * amp
        amp *= 0.5
    return out / np.float32(np.sqrt(total))


def colour(rng: Rng, palette: str, value_scale: float = 1.0) -> np.ndarray:
    """A random RGB colour (float32[3], 0..255) from a named palette."""
    (h0, h1), (s0, s1), (v0, v1) = PALETTES[palette]
    hue = (rng.uniform(h0, h1) % 360) / 360
    v = min(1.0, rng.uniform(v0, v1) * value_scale)
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(s0, s1), v), np.float32) * 255


def hsv(rng: Rng, hue: tuple[float, float], sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """A random RGB colour (float32[3], 0..255) from explicit HSV ranges."""
    rgb = colorsys.hsv_to_rgb((rng.uniform(*hue) % 360) / 360, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, np.float32) * 255


def colourise(t: np.ndarray, dark: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Map a grey [h, w] in 0..1 onto the segment dark -> light: float32 [h, w, 3]."""
    return dark + t[..., None] * (light - dark)


def hue_rotate(rgb: np.ndarray, degrees: float, saturation: float = 1.0, gain: float = 1.0) -> np.ndarray:
    """Rotate hues about the grey axis, scale saturation and brightness (one 3x3 matrix)."""
    a = np.deg2rad(degrees)
    k = np.full((3, 3), 1 / 3, np.float32)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32) / np.sqrt(3)
    rot = np.cos(a) * (np.eye(3) - k) + np.sin(a) * cross
    m = (k + saturation * rot) * gain
    return rgb @ m.T.astype(np.float32)


def lighting(h: int, w: int, angle: float, strength: float) -> np.ndarray:
    """A linear brightness ramp [h, w] around 1, brighter towards `angle` (radians)."""
    y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    return 1 + strength * (x * np.cos(angle) - y * np.sin(angle))


# ---------------------------------------------------------------- stuff textures (whole image, [h, w, 3])


def stuff_sky(rng: Rng, h: int, w: int) -> np.ndarray:
    if rng.random() < 0.2:  # dusk: deep blue above, orange near the horizon
        top, bottom = hsv(rng, (215, 260), (0.5, 0.9), (0.25, 0.55)), colour(rng, "orange")
    else:
        top, bottom = hsv(rng, (198, 228), (0.45, 0.9), (0.5, 0.9)), hsv(rng, (185, 215), (0.1, 0.45), (0.8, 1.0))
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None] ** np.float32(rng.uniform(0.6, 1.6))
    img = top + (bottom - top) * np.broadcast_to(t, (h, w))[..., None]
    cover = rng.uniform(-0.3, 1.3)
    alpha = np.clip((fbm(rng, h, w, 2.0, 4, aspect=rng.uniform(1, 3)) + cover - 1.0) * 0.7, 0, 0.92)
    cloud = hsv(rng, (0, 360), (0.0, 0.08), (0.75, 1.0))
    return img + (cloud - img) * alpha[..., None]


def stuff_grass(rng: Rng, h: int, w: int) -> np.ndarray:
    hue = rng.uniform(40, 70) if rng.random() < 0.2 else rng.uniform(70, 130)
    dark = hsv(rng, (hue - 8, hue + 8), (0.5, 0.95), (0.08, 0.3))
    light = hsv(rng, (hue - 8, hue + 8), (0.35, 0.8), (0.5, 0.9))
    t = sample_texture(rng, "grass", h, w, (0.25, 0.7))
    return colourise(t, dark, light) * (1 + 0.15 * fbm(rng, h, w, 2.0, 2))[..., None]


def stuff_gravel(rng: Rng, h: int, w: int) -> np.ndarray:
    pal = "brown" if rng.random() < 0.4 else "neutral"
    base = colour(rng, pal)
    dark, light = base * rng.uniform(0.25, 0.5), np.minimum(base * rng.uniform(1.2, 1.8) + 30, 255)
    t = sample_texture(rng, "gravel", h, w, (0.3, 0.9))
    return colourise(t, dark, light)


def stuff_brick(rng: Rng, h: int, w: int) -> np.ndarray:
    r = rng.random()
    base = colour(rng, "red" if r < 0.45 else "brown" if r < 0.7 else "neutral" if r < 0.9 else "yellow", 0.8)
    mortar = hsv(rng, (20, 50), (0.0, 0.25), (0.55, 0.9))
    t = sample_texture(rng, "brick", h, w, (0.3, 0.8))
    return colourise(t, base * 0.55, mortar) * (1 + 0.1 * fbm(rng, h, w, 3.0, 2))[..., None]


def stuff_water(rng: Rng, h: int, w: int) -> np.ndarray:
    deep = hsv(rng, (180, 235), (0.5, 0.95), (0.15, 0.45))
    shallow = hsv(rng, (165, 215), (0.3, 0.8), (0.45, 0.85))
    waves = fbm(rng, h, w, 4.0, 3, aspect=rng.uniform(6, 14))
    y = np.arange(h, dtype=np.float32)[:, None]
    ripple = np.sin(y * rng.uniform(0.25, 0.7) * 256 / h + 3 * waves)
    t = np.clip(0.5 + 0.25 * waves + 0.15 * ripple, 0, 1)
    img = colourise(t, deep, shallow)
    glint = np.clip((t - rng.uniform(0.75, 0.95)) * 6, 0, 1)[..., None]
    return img + (255 - img) * glint


def stuff_sand(rng: Rng, h: int, w: int) -> np.ndarray:
    base = hsv(rng, (28, 50), (0.2, 0.6), (0.55, 0.95))
    grain = sample_texture(rng, "gravel", h, w, (0.08, 0.2))
    a = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) * np.float32(256 / max(h, w))
    ripple = np.sin((x * np.cos(a) + y * np.sin(a)) * rng.uniform(0.12, 0.3) + 4 * fbm(rng, h, w, 2.0, 2))
    t = 0.82 + 0.12 * grain + 0.06 * ripple + 0.06 * fbm(rng, h, w, 2.0, 2)
    return base[None, None] * t[..., None]


def stuff_wood(rng: Rng, h: int, w: int) -> np.ndarray:
    dark = hsv(rng, (12, 35), (0.5, 0.85), (0.15, 0.4))
    light = hsv(rng, (18, 42), (0.35, 0.75), (0.5, 0.85))
    stretch = fbm(rng, h, w, 3.0, 3, aspect=rng.uniform(0.05, 0.15))  # streaks along y
    x = np.arange(w, dtype=np.float32)[None, :] * np.float32(256 / max(h, w))
    plank_w = rng.uniform(28, 70)
    plank = np.floor(x / plank_w)
    t = 0.5 + 0.35 * np.sin(x * rng.uniform(0.3, 0.8) + 3 * stretch + plank * 1.7) + 0.1 * np.sin(plank * 12.9898)
    seam = np.abs((x / plank_w) % 1 - 0.5) > 0.5 - 1.2 / plank_w
    img = colourise(np.clip(t, 0, 1), dark, light) * np.where(seam, 0.45, 1.0)[..., None].astype(np.float32)
    return np.ascontiguousarray(img.transpose(1, 0, 2)) if rng.random() < 0.5 and h == w else img


def stuff_moon(rng: Rng, h: int, w: int) -> np.ndarray:
    base = hsv(rng, (0, 360), (0.0, 0.12), (0.55, 0.95))
    t = sample_texture(rng, "moon", h, w, (0.25, 0.8))
    return colourise(np.clip((t - 0.5) * rng.uniform(1.0, 1.8) + 0.5, 0, 1), base * 0.2, base)


STUFF_RENDERERS = {
    "sky": stuff_sky, "grass": stuff_grass, "gravel": stuff_gravel, "brick": stuff_brick,
    "water": stuff_water, "sand": stuff_sand, "wood": stuff_wood, "moon": stuff_moon,
}  # fmt: skip


# ---------------------------------------------------------------- shapes (unit coordinates, radius ~1)


def _ellipse(rx: float = 1.0, ry: float = 1.0, cx: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), ry * np.sin(t)], axis=1)


def _star(n: int, r_in: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) - np.pi / 2
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def shape_polygons(rng: Rng, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(filled polygons, holes) as [N, 2] (x, y) vertex arrays for a procedural shape class."""
    if name == "disc":
        return [_ellipse()], []
    if name == "ellipse":
        return [_ellipse(ry=rng.uniform(0.4, 0.65))], []
    if name == "ring":
        r = rng.uniform(0.45, 0.7)
        return [_ellipse()], [_ellipse(r, r)]
    if name == "triangle":
        return [_star(3, 0.5)[::2] + rng.uniform(-0.08, 0.08, (3, 2))], []
    if name == "star":
        return [_star(6 if rng.random() < 0.3 else 5, rng.uniform(0.38, 0.5))], []
    if name == "hexagon":
        return [_star(6, 1.0)[::2]], []
    if name == "cross":
        a = rng.uniform(0.28, 0.42)
        quarter, turn = np.array([[-a, -1], [a, -1], [a, -a]]), np.array([[0, -1], [1, 0]])
        return [np.concatenate([quarter @ np.linalg.matrix_power(turn, k).T for k in range(4)])], []
    if name == "frame":
        sy, b = rng.uniform(0.75, 1.0), rng.uniform(0.2, 0.32)
        outer = np.array([[-1, -sy], [1, -sy], [1, sy], [-1, sy]]) * 0.85
        return [outer], [outer * [(0.85 - b) / 0.85, (0.85 * sy - b) / (0.85 * sy)]]
    if name == "arrow":
        w, hw, x = rng.uniform(0.15, 0.25), rng.uniform(0.45, 0.65), rng.uniform(0.0, 0.35)
        return [np.array([[-1, -w], [x, -w], [x, -hw], [1, 0], [x, hw], [x, w], [-1, w]])], []
    if name == "crescent":
        return [_ellipse()], [_ellipse(rng.uniform(0.75, 0.95), rng.uniform(0.75, 0.95), rng.uniform(0.35, 0.55))]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [np.stack([x, -y - 2.5], axis=1) / 16.5], []
    raise KeyError(f"unknown shape {name!r}")


# ---------------------------------------------------------------- fills for procedural things


def thing_fill(rng: Rng, kind: str, palettes: tuple[str, ...], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Paint a thing in its own frame: u, v are object coordinates (radius ~1); returns [h, w, 3]."""
    c1 = colour(rng, palettes[int(rng.integers(len(palettes)))])
    c2 = colour(rng, palettes[int(rng.integers(len(palettes)))]) if rng.random() < 0.5 else c1 * rng.uniform(0.3, 0.6)
    period = rng.uniform(0.18, 0.45)
    if kind == "stripes":
        t = (np.sin((u + 0.3 * v * rng.uniform(-1, 1)) * np.pi / period) > 0).astype(np.float32)
    elif kind == "dots":
        d2 = ((u / period) % 1 - 0.5) ** 2 + ((v / period) % 1 - 0.5) ** 2
        t = (d2 < rng.uniform(0.04, 0.12)).astype(np.float32)
    elif kind == "checker":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "grain":
        name = ("gravel", "moon", "cell", "brick", "camera")[int(rng.integers(5))]
        t = sample_texture(rng, name, u.shape[0], u.shape[1], (0.15, 0.5))
    elif kind == "radial":
        d2 = (u - rng.uniform(-0.4, 0.1)) ** 2 + (v + rng.uniform(0.1, 0.5)) ** 2
        t = np.clip(1 - 0.6 * d2, 0, 1)
        c2 = np.minimum(c1 * 0.35, 255)
        return colourise(t, c2, np.minimum(c1 * 1.2 + 25, 255))
    else:  # "flat": gentle mottling only
        t = np.clip(0.5 + 0.15 * fbm(rng, u.shape[0], u.shape[1], 2.0, 2), 0, 1)
        return c1 * (0.8 + 0.4 * t)[..., None]
    return colourise(t, c2, c1)


# ---------------------------------------------------------------- image sprites (source frame)


@cache
def coin_patches() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(grey 0..1, mask) for each coin of skimage's `coins`, found by thresholding."""
    from skimage.filters import threshold_otsu

    g = bundled("coins").astype(np.float32)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(g > threshold_otsu(g), iterations=2))
    labels, _ = ndimage.label(fg)
    grey = gray_texture("coins")
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        m = labels[sl] == i
        if 1200 <= m.sum() <= 9000 and 0.6 < m.shape[0] / m.shape[1] < 1.6:
            out.append((grey[sl].copy(), ndimage.binary_fill_holes(m)))
    return tuple(out)


def ellipse_crop(img: np.ndarray, cy: float, cx: float, ry: float, rx: float, step: int) -> tuple[np.ndarray, ...]:
    """An elliptical cut-out (rgb float32, mask) of a bundled RGB image, subsampled by `step`."""
    y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry, img.shape[0]))
    x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx, img.shape[1]))
    rgb = img[y0:y1:step, x0:x1:step, :3].astype(np.float32)
    yy, xx = np.mgrid[y0:y1:step, x0:x1:step]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return rgb, mask


@cache
def cat_source() -> tuple[np.ndarray, np.ndarray]:
    return ellipse_crop(bundled("chelsea"), 150, 222, 148, 185, 2)


@cache
def cup_source() -> tuple[np.ndarray, np.ndarray]:
    return ellipse_crop(bundled("coffee"), 226, 278, 160, 202, 2)


@cache
def horse_mask() -> np.ndarray:
    m = ~bundled("horse")[::2, ::2]
    ys, xs = np.nonzero(m)
    return m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@cache
def rocket_source() -> tuple[np.ndarray, np.ndarray]:
    """A rocket: the body of skimage's `rocket` on a polygon silhouette with fins."""
    from skimage.draw import polygon

    h, w = 150, 48
    body = resize(bundled("rocket")[127:398, 311:335].astype(np.float32), h, 16)
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[:, 16:32] = body
    rgb[:, :16] = rgb[:, 32:] = np.array([60, 60, 70], np.float32)
    mask = np.zeros((h, w), bool)
    ys = [149, 18, 4, 0, 4, 18, 149]
    xs = [16, 16, 19, 24, 29, 32, 32]
    mask[polygon(np.array(ys), np.array(xs), (h, w))] = True
    for side in (-1, 1):
        fy = np.array([105, 149, 149, 138])
        fx = 24 + side * np.array([8, 8, 23, 23])
        mask[polygon(fy, fx, (h, w))] = True
    mask[:, 16:32] |= np.arange(h)[:, None] >= 18
    return rgb, mask


def image_thing(rng: Rng, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A thing cut from a bundled image, colour-jittered: (rgb float32 [h, w, 3], mask) in its own frame."""
    if name == "coin":
        coins = coin_patches()
        grey, mask = coins[int(rng.integers(len(coins)))]
        metal = ("yellow", "orange", "neutral", "brown")[int(rng.integers(4))]
        light = colour(rng, metal, 1.2)
        return colourise(grey, light * rng.uniform(0.15, 0.35), light), mask
    if name == "horse":
        mask = horse_mask()
        h, w = mask.shape
        coat = colour(rng, ("brown", "neutral", "orange", "brown")[int(rng.integers(4))], 0.9)
        t = 0.75 + 0.2 * fbm(rng, h, w, 3.0, 3)
        rgb = coat * t[..., None]
        if rng.random() < 0.3:  # pinto patches
            rgb = np.where((fbm(rng, h, w, 3.0, 2) > 0.6)[..., None], np.float32(235), rgb)
        return rgb, mask
    rgb, mask = {"cat": cat_source, "cup": cup_source, "rocket": rocket_source}[name]()
    hue = rng.uniform(-180, 180) if name == "cup" and rng.random() < 0.6 else rng.uniform(-25, 25)
    return hue_rotate(rgb, hue, rng.uniform(0.5, 1.3), rng.uniform(0.7, 1.2)), mask
