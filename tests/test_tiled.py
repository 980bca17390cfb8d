"""Tiled inference: the grid, seams stitched without duplicated or cut objects, progress and cancel."""

import numpy as np
import pytest
import torch

from model.network.postprocess import PanopticResult, Segment
from model.network.tiled import TileConfig, predict_tiled, tile_grid

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact

THING, STUFF = 1, 2


def scene_with_seam_objects(height=300, width=340):
    """Ground truth: stuff (class 2) everywhere, and things (class 1): discs on tile seams and on a
    crossing of four tiles, a long bar through several tiles, and touching discs."""
    truth = np.full((height, width), 1, np.int32)  # segment 1: stuff
    segments = [Segment(1, STUFF, False, 0.9, 0)]
    yy, xx = np.mgrid[:height, :width]
    shapes = [((yy - 150) ** 2 + (xx - 170) ** 2) < 20**2,  # on the crossing of four tiles
              ((yy - 40) ** 2 + (xx - 165) ** 2) < 15**2,  # on a vertical seam
              ((yy - 155) ** 2 + (xx - 30) ** 2) < 12**2,  # on a horizontal seam
              (abs(yy - 260) < 6) & (xx > 10) & (xx < 330),  # a bar longer than a tile
              ((yy - 230) ** 2 + (xx - 150) ** 2) < 10**2,  # two touching discs across a seam
              ((yy - 230) ** 2 + (xx - 170) ** 2) < 10**2]
    for k, shape in enumerate(shapes, start=2):
        truth[shape] = k
        segments.append(Segment(k, THING, True, 0.8, 0))
    return truth, segments


def oracle(truth, segments, offsets):
    """A `predict_tile` that returns the truth inside the tile, renumbered from 1 as a model would."""
    by_id = {s.id: s for s in segments}

    def predict(crop):
        y0, x0 = offsets[crop.shape]  # crops are views: find where this one starts
        local = truth[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        ids = [int(i) for i in np.unique(local) if i > 0][::-1]  # another order than the truth's
        out = np.zeros(local.shape, np.int32)
        segs = []
        for k, i in enumerate(ids, start=1):
            out[local == i] = k
            segs.append(Segment(k, by_id[i].category_id, by_id[i].is_thing, by_id[i].score, int((local == i).sum())))
        return PanopticResult(torch.from_numpy(out), segs, torch.from_numpy((out > 0).astype(np.float32)))

    return predict


def run_oracle(truth, segments, config):
    image = np.zeros((*truth.shape, 3), np.uint8)
    starts = iter([(t.y0, t.x0) for t in tile_grid(*truth.shape, config)])

    def predict(crop):
        y0, x0 = next(starts)
        return oracle(truth, segments, {crop.shape: (y0, x0)})(crop)

    return predict_tiled(predict, image, config)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the ids one to one."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_grid_cores_partition_the_image_and_tiles_overlap():
    config = TileConfig(size=128, overlap=32)
    tiles = tile_grid(300, 340, config)
    cover = np.zeros((300, 340), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert t.y0 <= y0 < y1 <= t.y1 and t.x0 <= x0 < x1 <= t.x1
        assert t.y1 - t.y0 <= 128 and t.x1 - t.x0 <= 128
    assert (cover == 1).all()
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 128 - 32 for a, b in zip(xs, xs[1:]))  # neighbours share >= the overlap
    assert tile_grid(100, 90, config)[0].core == (0, 100, 0, 90)  # small: one tile


def test_objects_on_seams_come_out_whole_and_once():
    truth, segments = scene_with_seam_objects()
    config = TileConfig(size=128, overlap=48, whole_up_to=0)
    assert len(tile_grid(*truth.shape, config)) >= 9  # seams run through the objects
    result = run_oracle(truth, segments, config)
    out = result.panoptic_seg.numpy()
    assert same_partition(out, truth)
    things = [s for s in result.segments if s.is_thing]
    assert len(things) == len(segments) - 1  # no duplicate, no object cut in two
    assert len([s for s in result.segments if not s.is_thing]) == 1  # stuff: one segment per class
    for s in result.segments:
        assert s.area == int((out == s.id).sum())
    # Segments ids are 1..N and the semantic map matches the truth's classes.
    assert sorted(s.id for s in result.segments) == list(range(1, len(result.segments) + 1))
    truth_semantic = np.where(truth == 1, STUFF, THING)
    assert (result.semantic.numpy() == truth_semantic).all()


def test_touching_objects_of_one_class_stay_apart_across_a_seam():
    truth, segments = scene_with_seam_objects()
    result = run_oracle(truth, segments, TileConfig(size=128, overlap=48, whole_up_to=0))
    out = result.panoptic_seg.numpy()
    assert out[230, 150] != out[230, 170]  # the two touching discs are two instances


def test_progress_counts_tiles_and_cancel_stops_between_tiles():
    truth, segments = scene_with_seam_objects()
    config = TileConfig(size=128, overlap=48, whole_up_to=0)
    total = len(tile_grid(*truth.shape, config))
    calls, seen = [], []
    starts = iter([(t.y0, t.x0) for t in tile_grid(*truth.shape, config)])

    def predict(crop):
        calls.append(crop.shape)
        y0, x0 = next(starts)
        return oracle(truth, segments, {crop.shape: (y0, x0)})(crop)

    image = np.zeros((*truth.shape, 3), np.uint8)
    result = predict_tiled(predict, image, config, progress=lambda done, n: seen.append((done, n)),
                           cancel=lambda: len(calls) >= 3)
    assert result is None and len(calls) == 3  # stopped before the fourth tile
    assert seen == [(1, total), (2, total), (3, total)]


def test_small_images_are_not_tiled():
    config = TileConfig()
    assert not config.tiles_needed(1024, 1024)
    assert config.tiles_needed(4000, 4000)
    with pytest.raises(ValueError, match="overlap"):
        TileConfig(size=64, overlap=64)


def test_model_predict_image_tiled_matches_whole_on_one_tile_and_reports_progress(tiny_model):
    image = (np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)
    whole = tiny_model.predict(image)
    seen = []
    same = tiny_model.predict_image(image, TileConfig(size=128, overlap=32, whole_up_to=0),
                                    progress=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 1)]
    assert same_partition(same.panoptic_seg.numpy(), whole.panoptic_seg.numpy())
    tiled = tiny_model.predict_image(image, TileConfig(size=48, overlap=16, whole_up_to=0),
                                     progress=lambda d, n: seen.append((d, n)))
    assert tiled.panoptic_seg.shape == (96, 80) and seen[-1][0] == seen[-1][1] > 1
    assert tiny_model.predict_image(image, cancel=lambda: True) is None


@pytest.fixture(scope="module")
def tiny_model():
    from model.network.build import build_model
    from model.network.config import tiny_config

    torch.manual_seed(0)
    return build_model(tiny_config(), ["bar", "sky"], [True, False], backbone_weights="random").eval()
