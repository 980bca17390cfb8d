"""Fitting a dense step's pixel stage (see `model.network.pixel_stage`) once its head has trained.

The painted images and the context images (each as painted: unknown pixels say nothing) give a table
of known pixels: each pixel's filter responses and the head's logits there, and its label (0: known
background, k: the step's k-th class). A sample of it, at most `positives` pixels of each class and
`negatives` of the background per image, fits a scikit-learn random forest with balanced class
weights (as the peers in benchmarks/peers.py and the head's own loss balance them), which the stage
then keeps as tensors. Learn draws half of each sample within a few pixels of another known label (a
uniform sample holds few such pixels, and there a forest's boundaries are decided), the other half
uniformly; the forest's share of the blend is judged on the uniform half only. The images are the
ones painted, not augmented: the forest reads colours and fine texture, which the head's colour and
scale jitter would blur.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..network.forest import import_scikit_learn
from .dense import UNKNOWN


@dataclass(frozen=True)
class PixelFitConfig:
    trees: int = 100  # fitted as two cross-fitting halves of trees // 2 each (at least 1)
    max_depth: int = 16
    min_samples_leaf: int = 1
    positives: int = 1000  # at most this many pixels of each class per image
    negatives: int = 2000  # and this many of its known background (Learn sets both: LearnConfig)
    # Of each label's sample, at most this share is drawn from its pixels within `boundary_width` pixels
    # of another known label, where a forest's boundary errors are (the rest uniformly: `sample_known`).
    boundary_share: float = 0.0
    boundary_width: int = 3
    seed: int = 0
    # Per class of the step, the forest's share set in advance instead of chosen on the painting (None,
    # or no entry: chosen). Learn sets stuff classes' (LearnConfig.dense_stuff_share).
    fixed_shares: tuple[float | None, ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.boundary_share <= 1.0 or self.boundary_width < 1:
            raise ValueError(f"boundary_share must lie in [0, 1] and boundary_width be at least 1, got "
                             f"{self.boundary_share}, {self.boundary_width}")


BLOCK = 64  # side of the squares that cross-fitting holds out together (neighbouring pixels look alike)


def _fold(entry: int, index: np.ndarray, width: int) -> np.ndarray:
    """Which of the two cross-fitting folds each pixel (flat `index` into a `width`-wide map) of entry
    `entry` falls in: a checkerboard of BLOCK-sized squares."""
    return (entry + (index // width) // BLOCK + (index % width) // BLOCK) % 2


@torch.no_grad()
def pixel_table(head, entries: Sequence, config: PixelFitConfig
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features [N, F] float32, labels [N] int64, folds [N], uniform [N] bool) of a sample of the known
    pixels of `entries` ((DenseInputs, labels [H, W]) pairs at the padded size; labels -1 unknown, 0
    background, k class); `folds`: each pixel's cross-fitting fold (`_fold`); `uniform`: whether it was
    drawn uniformly (not for being near a boundary: `sample_known`)."""
    rng = np.random.default_rng(config.seed)
    stage = head.pixel_stage
    rows, targets, folds, uniform = [], [], [], []
    for n, (inputs, labels) in enumerate(entries):
        grid = labels.reshape(labels.shape[-2:]).cpu().numpy()
        flat = grid.reshape(-1)
        chosen = sample_known(grid, config, rng)
        if not chosen:
            continue
        index = np.concatenate([i for i, _ in chosen])
        uniform.append(np.concatenate([u for _, u in chosen]))
        features = stage.features(*head.pixel_inputs(inputs))[0]  # [F, H, W]
        picked = torch.from_numpy(index).to(features.device)
        rows.append(features.reshape(features.shape[0], -1)[:, picked].T.float().cpu().numpy())
        targets.append(flat[index])
        folds.append(_fold(n, index, labels.shape[-1]))
    if not rows:
        raise ValueError("no painted pixels to fit the pixel stage on")
    return (np.concatenate(rows), np.concatenate(targets).astype(np.int64), np.concatenate(folds),
            np.concatenate(uniform))


def sample_known(labels: np.ndarray, config: PixelFitConfig, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per known label of `labels` [H, W] (-1 unknown), the flat indices of its pixels to fit on, and
    whether each was drawn uniformly: at most `config.negatives` of the background (0) and
    `config.positives` of each class, `config.boundary_share` of them drawn from its pixels near another
    known label (those are not uniform: a forest's share of the blend is judged on the uniform ones, which
    stand for the painting as it is)."""
    flat = labels.reshape(-1)
    square = np.ones((2 * config.boundary_width + 1,) * 2, bool)
    chosen = []
    for value in np.unique(flat):
        if value == UNKNOWN:
            continue
        where = np.flatnonzero(flat == value)
        limit = config.negatives if value == 0 else config.positives
        if where.size <= limit:
            chosen.append((where, np.ones(where.size, bool)))
            continue
        from_edge = 0
        if config.boundary_share > 0:
            near = ndimage.binary_dilation((labels != value) & (labels != UNKNOWN), square).reshape(-1)
            edge = where[near[where]]
            from_edge = min(edge.size, int(round(config.boundary_share * limit)))
        uniform = rng.choice(where, limit - from_edge, replace=False)
        index = uniform
        if from_edge:  # a pixel near the edge that the uniform draw took stays uniform
            rest = edge[~np.isin(edge, uniform)]
            index = np.concatenate([uniform, rng.choice(rest, min(from_edge, rest.size), replace=False)])
        order = np.argsort(index)
        chosen.append((index[order], order < uniform.size))
    return chosen


def _forest(config: PixelFitConfig, trees: int, threads: int, seed: int):
    import_scikit_learn()
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(trees, max_depth=config.max_depth, min_samples_leaf=config.min_samples_leaf,
                                  class_weight="balanced", n_jobs=max(int(threads), 1), random_state=seed)


def _shares(forest, x: np.ndarray, classes: int) -> np.ndarray:
    """[N, classes] probabilities of every label 0..classes-1 (those the forest never saw: 0)."""
    out = np.zeros((len(x), classes))
    out[:, forest.classes_] = forest.predict_proba(x)
    return out


@torch.no_grad()
def fit_pixel_stage(head, entries: Sequence, config: PixelFitConfig = PixelFitConfig(), threads: int = 1,
                    honest: int = 0) -> list[torch.Tensor]:
    """Fits `head.pixel_stage`'s forest on the known pixels of `entries` (see `pixel_table`) and each
    class's share of it in the blend with the head. Where the forest has no share in any class it is
    dropped (the stage then changes nothing and costs nothing).

    Cross-fitting: two forests of half the trees each are fitted, each on the pixels of one fold of a
    checkerboard of BLOCK-sized squares, and each predicts the other fold (a pixel's own neighbours,
    which look like it, are held out with it: a forest's out-of-bag votes, whose trees saw the pixel
    next door, proved as optimistic as its fit). The share is chosen on those honest predictions (but
    where `config.fixed_shares` sets it); the stage then keeps both forests' trees as one forest (every
    pixel seen by half of them), so the honest predictions cost no extra fit. Returns, for the first
    `honest` entries, the stage's logits [1, 2C, H, W] made the same way (each pixel's forest part from
    the forest that did not see its square): what thresholds are chosen on without the forest's memory
    of the painting deciding them."""
    if len(config.fixed_shares) > head.num_classes:
        raise ValueError(f"fixed_shares names {len(config.fixed_shares)} classes; the step has {head.num_classes}")
    features, labels, folds, uniform = pixel_table(head, entries, config)
    if not (labels == 0).any() or not (labels > 0).any():
        raise ValueError("the pixel stage needs pixels of the classes and of known background")
    c = head.num_classes
    stage = head.pixel_stage
    halves = []
    for fold in (0, 1):
        seen = folds == fold
        usable = (labels[seen] == 0).any() and (labels[seen] > 0).any()
        halves.append(_forest(config, max(config.trees // 2, 1), threads, config.seed + 1 + fold)
                      .fit(features[seen], labels[seen]) if usable else None)
    held = np.zeros((len(labels), c + 1))
    judged = np.zeros(len(labels), bool)  # the share is judged on uniformly drawn pixels only
    for fold in (0, 1):
        other = halves[1 - fold]
        rows = (folds == fold) & uniform
        if other is not None and rows.any():
            held[rows] = _shares(other, features[rows], c + 1)
            judged |= rows
    head_probs = 1 / (1 + np.exp(-features[:, -2 * c:][:, :c].astype(np.float64)))
    weights = blend_weights(held[judged, 1:], head_probs[judged], labels[judged]) if judged.any() else [0.0] * c
    weights = [w if f is None else float(f) for w, f in zip(weights, [*config.fixed_shares, *[None] * c])]
    stage.blend.copy_(torch.as_tensor(weights, dtype=stage.blend.dtype))
    if not any(weights):  # the head alone is better: no forest to keep or evaluate
        stage.forest.resize(0, 0)
        return [head.pixel_inputs(inputs)[1] for inputs, _ in entries[:honest]]
    if all(h is not None for h in halves):
        stage.forest.set_trees(halves, c + 1)
        forest = None
    else:  # a fold held one kind of pixel only (a tiny painting): one forest on every pixel
        forest = _forest(config, config.trees, threads, config.seed).fit(features, labels)
        stage.forest.set_trees(forest, c + 1)
    return [_honest_logits(head, inputs, n, halves, forest) for n, (inputs, _) in enumerate(entries[:honest])]


@torch.no_grad()
def _honest_logits(head, inputs, entry: int, halves: list, forest) -> torch.Tensor:
    """The stage's logits of one entry with each pixel's forest part from the fold forest that did not
    see its square (`forest`, fitted on every pixel, where a fold had nothing to fit)."""
    stage = head.pixel_stage
    image, logits = head.pixel_inputs(inputs)
    if not stage.forest.fitted:
        return logits
    c = head.num_classes
    x = stage.features(image, logits)[0]
    h, w = x.shape[-2:]
    x = x.reshape(x.shape[0], -1).T.float().cpu().numpy()
    index = np.arange(h * w)
    fold = _fold(entry, index, w)
    probs = np.zeros((h * w, c + 1))
    for k in (0, 1):
        rows = fold == k
        if rows.any():
            probs[rows] = _shares(halves[1 - k] or forest, x[rows], c + 1)
    return stage.blended(torch.from_numpy(probs[:, 1:].T.reshape(1, c, h, w)).to(logits), logits)


BLEND_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_weights(forest: np.ndarray, head: np.ndarray, labels: np.ndarray, candidates=BLEND_CANDIDATES) -> list[float]:
    """Per class, the forest's share w of the blend w * forest + (1 - w) * head that best predicts the
    table's pixels (balanced log-loss: the class's pixels and the rest weigh half each). The forest's
    probabilities must be honest ones (cross-fitted: see `fit_pixel_stage`), so a forest that merely
    memorised the painting does not win. Ties go to the middle (0.5)."""
    weights = []
    for k in range(head.shape[1]):
        positive = labels == k + 1
        if not positive.any() or positive.all():
            weights.append(0.5)
            continue
        best, best_loss = 0.5, np.inf
        for w in sorted(candidates, key=lambda v: abs(v - 0.5)):
            p = np.clip(w * forest[:, k] + (1 - w) * head[:, k], 1e-4, 1 - 1e-4)
            loss = -0.5 * (np.log(p[positive]).mean() + np.log(1 - p[~positive]).mean())
            if loss < best_loss - 1e-9:
                best, best_loss = w, loss
        weights.append(best)
    return weights
