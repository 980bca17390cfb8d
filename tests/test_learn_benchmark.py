"""The pieces of benchmarks/learn_quality.py: the crowded scenes, the hand-made coins labels, the
random-forest peer and the one-class PQ."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from model.data.crowded import MAX_INSTANCES, MIN_INSTANCES, background_strokes, crowded_scene  # noqa: E402
from model.interactive.config import Example  # noqa: E402
from model.io.images import read_image  # noqa: E402

COINS = Path(__file__).parent / "data" / "coins" / "instances.png"


def test_crowded_scenes_are_deterministic_crowded_and_touching():
    image, instances = crowded_scene(3)
    again, same = crowded_scene(3)
    assert np.array_equal(image, again) and np.array_equal(instances, same)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    counts = [int(crowded_scene(i)[1].max()) for i in range(6)]
    assert all(MIN_INSTANCES * 0.5 <= c <= MAX_INSTANCES for c in counts) and max(counts) > 60
    # Touching: some instance pixels have a pixel of another instance as a 4-neighbour.
    a, b = instances[:, :-1], instances[:, 1:]
    assert ((a > 0) & (b > 0) & (a != b)).sum() > 20
    strokes = background_strokes(instances, count=5, seed=1)
    assert strokes.sum() > 100 and not (strokes & (instances > 0)).any()


def test_coins_labels_match_the_photo():
    from skimage import data

    labels = read_image(COINS)
    assert labels.shape == data.coins().shape and int(labels.max()) == 24
    areas = np.bincount(labels.ravel())[1:]
    assert len(areas) == 24 and areas.min() > 900  # every coin labelled, none a fragment
    # The coins are bright on a dark background: the labels follow them.
    coins = data.coins()
    assert coins[labels > 0].mean() > coins[labels == 0].mean() + 60


def test_peer_and_one_class_pq():
    pytest.importorskip("sklearn")
    from learn_quality import add_one_class, one_class_pq, summary
    from pixel_classifier import PixelClassifier

    image, instances = crowded_scene(1, size=128)
    peer = PixelClassifier(True, max_pixels=5000, trees=20).fit([Example(image, instances)])
    predicted = peer.predict(image)
    assert predicted.shape == instances.shape and predicted.max() > 5
    pq = one_class_pq(True)
    add_one_class(pq, instances, instances, True)
    assert summary(pq)["pq"] == 100.0
    pq = one_class_pq(True)
    add_one_class(pq, instances, np.zeros_like(instances), True)
    s = summary(pq)
    assert s["pq"] == 0.0 and s["fn"] == instances.max() and s["fp"] == 0
    pq = one_class_pq(True)  # a false positive on background counts
    fake = np.zeros_like(instances)
    fake[instances == 0] = 1
    add_one_class(pq, np.zeros_like(instances), fake, True)
    assert summary(pq)["fp"] == 1
