"""Fitting a dense step's pixel stage (see `model.network.pixel_stage`) once its head has trained.

The painted images and the context images (each as painted: unknown pixels say nothing) give a table
of known pixels: each pixel's filter responses and the head's logits there, and its label (0: known
background, k: the step's k-th class). A sample of it, at most `positives` pixels of each class and
`negatives` of the background per image, fits a scikit-learn random forest with balanced class
weights (as the peers in benchmarks/peers.py and the head's own loss balance them), which the stage
then keeps as tensors. The images are the ones painted, not augmented: the forest
reads colours and fine texture, which the head's colour and scale jitter would blur.
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .dense import UNKNOWN


@dataclass(frozen=True)
class PixelFitConfig:
    trees: int = 50
    max_depth: int = 16
    min_samples_leaf: int = 1
    positives: int = 2000  # at most this many pixels of each class per image
    negatives: int = 4000  # and this many of its known background
    seed: int = 0


@torch.no_grad()
def pixel_table(head, entries: Sequence, config: PixelFitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float32, labels [N] int64) of a sample of the known pixels of `entries`
    ((DenseInputs, labels [H, W]) pairs at the padded size; labels -1 unknown, 0 background, k class)."""
    rng = np.random.default_rng(config.seed)
    stage = head.pixel_stage
    rows, targets = [], []
    for inputs, labels in entries:
        flat = labels.reshape(-1).cpu().numpy()
        chosen = []
        for value in np.unique(flat):
            if value == UNKNOWN:
                continue
            where = np.flatnonzero(flat == value)
            limit = config.negatives if value == 0 else config.positives
            if where.size > limit:
                where = np.sort(rng.choice(where, limit, replace=False))
            chosen.append(where)
        if not chosen:
            continue
        index = torch.from_numpy(np.concatenate(chosen))
        features = stage.features(*head.pixel_inputs(inputs))[0]  # [F, H, W]
        rows.append(features.reshape(features.shape[0], -1)[:, index.to(features.device)].T.float().cpu().numpy())
        targets.append(flat[index.numpy()])
    if not rows:
        raise ValueError("no painted pixels to fit the pixel stage on")
    return np.concatenate(rows), np.concatenate(targets).astype(np.int64)


def fit_pixel_stage(head, entries: Sequence, config: PixelFitConfig = PixelFitConfig(), threads: int = 1) -> None:
    """Fits `head.pixel_stage`'s forest on the known pixels of `entries` (see `pixel_table`), and each
    class's share of the forest in the blend (`blend_weights`). Where the forest has no share in any
    class, it is dropped (the stage then changes nothing and costs nothing)."""
    from sklearn.ensemble import RandomForestClassifier

    features, labels = pixel_table(head, entries, config)
    if not (labels == 0).any() or not (labels > 0).any():
        raise ValueError("the pixel stage needs pixels of the classes and of known background")
    forest = RandomForestClassifier(config.trees, max_depth=config.max_depth, min_samples_leaf=config.min_samples_leaf,
                                    class_weight="balanced", n_jobs=max(int(threads), 1), random_state=config.seed,
                                    oob_score=True)
    with warnings.catch_warnings():  # a few pixels drawn into every tree's sample have no out-of-bag vote
        warnings.simplefilter("ignore", UserWarning)
        forest.fit(features, labels)
    c = head.num_classes
    stage = head.pixel_stage
    stage.forest.set_trees(forest, c + 1)
    votes = np.nan_to_num(forest.oob_decision_function_, nan=0.0)
    voted = votes.sum(1) > 0.5  # pixels no tree left out have no estimate (NaN or zeros, by version)
    out_of_bag = np.zeros((int(voted.sum()), c + 1))
    out_of_bag[:, forest.classes_] = votes[voted]
    head_probs = 1 / (1 + np.exp(-features[voted][:, -2 * c:][:, :c].astype(np.float64)))
    weights = blend_weights(out_of_bag[:, 1:], head_probs, labels[voted], BLEND_CANDIDATES)
    stage.blend.copy_(torch.as_tensor(weights, dtype=stage.blend.dtype))
    if not any(weights):  # the head alone is better: no forest to keep or evaluate
        stage.forest.resize(0, 0)


BLEND_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_weights(forest: np.ndarray, head: np.ndarray, labels: np.ndarray, candidates=BLEND_CANDIDATES) -> list[float]:
    """Per class, the forest's share w of the blend w * forest + (1 - w) * head that best predicts the
    table's pixels (balanced log-loss: the class's pixels and the rest weigh half each). The forest's
    probabilities are its out-of-bag ones, each pixel predicted by the trees that did not see it, so a
    forest that merely memorised the painting does not win. Ties go to the middle (0.5)."""
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
