"""The pixel classifiers a napari user would reach for instead of Learn, as peers in learn_quality.py.

- `filter forest`: a random forest on a filter bank, what ilastik and APOC do (`multiscale_basic_features`:
  Gaussian intensity, gradient magnitude and Hessian-eigenvalue texture at scales 1..16, per channel).
- `cnn forest`: a random forest on pretrained CNN features upsampled to the pixels, what napari-convpaint
  does; here the same frozen features Learn's head reads (the shipped model's EfficientNet-Lite0 levels
  at strides 4..32, bilinearly upsampled).
- `cnn+filter forest`: both feature sets together (convpaint's option to add filters).

Training pixels: each class's painted pixels and the known background, read exactly as Learn reads the
painting (`model.interactive.examples.known_background`: every unpainted pixel of a complete image; else
the painted strokes and a thin band around each painted thing instance); at most `max_pixels` per class
and image, the classes weighted to balance (as Learn's loss balances them).
A peer gets nothing else (Learn also takes what the base model holds confidently as negatives).

Instances from the predicted class map, by one of two post-processings: "components" (each connected
component of a class is an instance) or "watershed" (a distance-transform watershed seeded by its local
maxima at least half the median painted radius apart). learn_quality.py fixes which one each peer uses
per case on the tuning split, before any held-out image is scored. Segments smaller than a quarter of
the smallest painted instance are dropped (a stuff class: a fiftieth of its median painted region); a
stuff class is one segment. Every number is fixed from the painting. Needs scikit-learn.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from model.interactive.examples import class_index_map, known_background, merge_classes

PEERS = ("filter forest", "cnn forest", "cnn+filter forest")
POSTPROCESSING = ("components", "watershed")


def filter_features(image: np.ndarray) -> np.ndarray:
    """[H, W, F] float32 filter responses of a uint8 grey or RGB image."""
    from skimage.feature import multiscale_basic_features

    channel_axis = -1 if image.ndim == 3 else None
    return multiscale_basic_features(image, channel_axis=channel_axis, sigma_min=1, sigma_max=16).astype(np.float32)


class CNNFeatures:
    """The frozen backbone levels of a model, upsampled to the pixels: [H, W, F] float32."""

    def __init__(self, model):
        self.model = model

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from model.network.eclipse import to_chw_tensor

        with torch.no_grad():
            x, (h, w) = self.model.preprocess(to_chw_tensor(image)[None])
            levels = self.model.backbone(x)
            up = [F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False) for v in levels.values()]
            return torch.cat(up, 1)[0, :, :h, :w].permute(1, 2, 0).numpy().astype(np.float32)


@dataclass
class ForestPeer:
    """A random-forest pixel classifier for the classes of one step (see the module's docstring).
    `features(image)` -> [H, W, F]; `is_thing` per class."""

    name: str
    features: object
    is_thing: list[bool]
    max_pixels: int = 30_000
    trees: int = 100
    seed: int = 0
    min_distance: list[int] = field(default_factory=list)
    min_area: list[float] = field(default_factory=list)

    def fit(self, painted: list[list]) -> "ForestPeer":
        """painted: per class, its examples (objects with image, instances, background, complete)."""
        from sklearn.ensemble import RandomForestClassifier

        from model.interactive.config import NewClass

        rng = np.random.default_rng(self.seed)
        merged = merge_classes([NewClass(str(k), t, list(ex)) for k, (t, ex) in enumerate(zip(self.is_thing, painted))])
        xs, ys = [], []
        areas: list[list[int]] = [[] for _ in self.is_thing]
        for e in merged:
            inst = np.asarray(e.instances)
            classes = class_index_map(e)
            target = np.full(inst.shape, -1, np.int64)  # -1: unknown
            target[known_background(e, self.is_thing)] = 0
            for i, k in classes.items():
                target[inst == i] = k + 1
            f = self.features(np.asarray(e.image)).reshape(inst.size, -1)
            for label in range(len(self.is_thing) + 1):
                idx = np.flatnonzero(target.ravel() == label)
                if len(idx) > self.max_pixels:
                    idx = rng.choice(idx, self.max_pixels, replace=False)
                xs.append(f[idx])
                ys.append(np.full(len(idx), label))
            sizes = np.bincount(inst.ravel())
            for k, thing in enumerate(self.is_thing):
                ids = [i for i, c in classes.items() if c == k]
                if thing:
                    areas[k] += [int(sizes[i]) for i in ids if sizes[i] > 0]
                elif ids:
                    areas[k].append(int(np.isin(inst, ids).sum()))
        y = np.concatenate(ys)
        if not (y == 0).any():
            raise ValueError("nothing says where the classes are not: a pixel classifier needs background")
        # Balanced classes: a completely painted image holds far more background than class pixels, and
        # an unbalanced forest then finds nothing (Learn's loss balances them too).
        self.forest = RandomForestClassifier(self.trees, max_depth=16, n_jobs=2, random_state=self.seed,
                                             class_weight="balanced")
        self.forest.fit(np.concatenate(xs), y)
        self.min_distance = [max(2, int(round(np.sqrt(np.median(a) / np.pi) / 2))) if a else 2 for a in areas]
        self.min_area = [(max(4.0, min(a) / 4) if thing else max(4.0, float(np.median(a)) / 50)) if a else 4.0
                         for a, thing in zip(areas, self.is_thing)]
        return self

    def class_map(self, image: np.ndarray) -> np.ndarray:
        """int [H, W]: 0 = none of the classes, k = class k (1-based)."""
        image = np.asarray(image)
        f = self.features(image)
        labels = self.forest.predict(f.reshape(-1, f.shape[-1])).reshape(image.shape[:2])
        return labels.astype(np.int32)

    def predict(self, image: np.ndarray, postprocessing: str, class_map: np.ndarray | None = None) -> list[np.ndarray]:
        """Per class, an instance map int32 [H, W] (0 = not the class)."""
        if postprocessing not in POSTPROCESSING:
            raise ValueError(f"unknown post-processing {postprocessing!r}; choose from {POSTPROCESSING}")
        labels = self.class_map(image) if class_map is None else class_map
        return [instances(labels == k + 1, thing, postprocessing, self.min_distance[k], self.min_area[k])
                for k, thing in enumerate(self.is_thing)]


def instances(foreground: np.ndarray, is_thing: bool, postprocessing: str, min_distance: int,
              min_area: float) -> np.ndarray:
    """Instances of one class from its foreground (see the module's docstring)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if not is_thing:
        labels = foreground.astype(np.int32)
    elif postprocessing == "components":
        labels = ndimage.label(foreground)[0]
    else:
        distance = ndimage.distance_transform_edt(foreground)
        components, _ = ndimage.label(foreground)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
        markers = np.zeros(foreground.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)
    areas = np.bincount(labels.ravel())
    labels = np.where(np.isin(labels, np.flatnonzero(areas < min_area)), 0, labels)
    return labels.astype(np.int32)


def build_peer(name: str, is_thing: list[bool], model=None) -> ForestPeer:
    """A peer by name; the CNN peers read `model`'s frozen backbone."""
    if name == "filter forest":
        return ForestPeer(name, filter_features, list(is_thing))
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")
    if model is None:
        raise ValueError(f"the {name} reads a model's frozen features: give the model")
    cnn = CNNFeatures(model)
    if name == "cnn forest":
        return ForestPeer(name, cnn, list(is_thing))
    return ForestPeer(name, lambda image: np.concatenate([cnn(image), filter_features(image)], -1), list(is_thing))
