"""The peer a napari user would reach for instead of Learn: a random-forest pixel classifier on a filter
bank (what napari-convpaint, APOC and ilastik do), then instances from the foreground.

Features: `skimage.feature.multiscale_basic_features` (Gaussian intensity, gradient magnitude and
Hessian-eigenvalue texture at scales 1..16, per colour channel). Training pixels: the painted instances
(positive) and the known background (negative: every unpainted pixel of a completely painted image, or
the painted background strokes), subsampled to at most `max_pixels` per side. Prediction: foreground
where the forest says so (p > 0.5); a stuff class is one segment; a thing class is split by a watershed
on the distance transform of the foreground, seeded by its local maxima at least `min_distance` apart
(half the median painted instance radius), dropping segments smaller than a quarter of the smallest
painted instance. Every post-processing number is fixed from the painting, before any held-out image
is seen. Needs scikit-learn (`pip install -e '.[bench]'`).
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def features(image: np.ndarray) -> np.ndarray:
    """[H, W, F] float32 filter responses of a uint8 grey or RGB image."""
    from skimage.feature import multiscale_basic_features

    channel_axis = -1 if image.ndim == 3 else None
    f = multiscale_basic_features(image, channel_axis=channel_axis, sigma_min=1, sigma_max=16)
    return f.astype(np.float32)


@dataclass
class PixelClassifier:
    is_thing: bool
    max_pixels: int = 30_000
    trees: int = 100
    seed: int = 0

    def fit(self, examples) -> "PixelClassifier":
        """examples: objects with `image`, `instances` and `background` (None = painted completely)."""
        from sklearn.ensemble import RandomForestClassifier

        rng = np.random.default_rng(self.seed)
        xs, ys, areas = [], [], []
        for e in examples:
            inst = np.asarray(e.instances)
            bg = (np.asarray(e.background, bool) if e.background is not None and np.any(e.background) else inst == 0)
            bg &= inst == 0
            f = features(np.asarray(e.image))
            f = f.reshape(-1, f.shape[-1])
            for mask, label in ((inst.ravel() > 0, 1), (bg.ravel(), 0)):
                idx = np.flatnonzero(mask)
                if len(idx) > self.max_pixels:
                    idx = rng.choice(idx, self.max_pixels, replace=False)
                xs.append(f[idx])
                ys.append(np.full(len(idx), label))
            if self.is_thing:
                areas += [a for a in np.bincount(inst.ravel())[1:] if a > 0]
            else:
                areas.append(int((inst > 0).sum()))
        self.forest = RandomForestClassifier(self.trees, max_depth=16, n_jobs=2, random_state=self.seed)
        self.forest.fit(np.concatenate(xs), np.concatenate(ys))
        radius = np.sqrt(np.median(areas) / np.pi)
        self.min_distance = max(2, int(round(radius / 2)))
        self.min_area = max(4.0, min(areas) / 4) if self.is_thing else max(4.0, float(np.median(areas)) / 50)
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Instance map int32 [H, W] (0 = not the class)."""
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        image = np.asarray(image)
        f = features(image)
        p = self.forest.predict_proba(f.reshape(-1, f.shape[-1]))[:, 1].reshape(image.shape[:2])
        fg = p > 0.5
        if not self.is_thing:
            labels = fg.astype(np.int32)
        else:
            distance = ndimage.distance_transform_edt(fg)
            components, _ = ndimage.label(fg)
            peaks = peak_local_max(distance, min_distance=self.min_distance, labels=components, exclude_border=False)
            markers = np.zeros(fg.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
            labels = watershed(-distance, markers, mask=fg)
        areas = np.bincount(labels.ravel())
        labels[np.isin(labels, np.flatnonzero(areas < self.min_area))] = 0
        return labels.astype(np.int32)

