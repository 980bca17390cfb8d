"""Panoptic post-processing: bit-exact against the official fixture, plus small hand-made cases."""

import json

import numpy as np
import pytest
import torch

from model.network.postprocess import (
    PanopticResult,
    Segment,
    panoptic_merge,
    resize_mask_logits,
    semantic_from_panoptic,
)

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact

# Full-model geometry from the reference README: padded input, image, requested output.
FULL_PADDED, FULL_IMAGE, FULL_OUTPUT = (256, 320), (250, 300), (200, 240)


def _thing_flags(reference_dir, num_classes):
    """is_thing indexed by class id - 1, from the ADE thing ids the reference used."""
    ids = set(json.loads((reference_dir / "run_report.json").read_text())["thing_category_ids"])
    return [c in ids for c in range(1, num_classes + 1)]


def _segment_rows(result):
    return np.array([[s.id, s.category_id, int(s.is_thing)] for s in result.segments], dtype=np.int64).reshape(-1, 3)


def _run(reference_dir, logits, masks, padded, image, output, thr):
    num_classes = logits.shape[-1] - 1
    up = resize_mask_logits(torch.from_numpy(masks), padded, image, output)
    return panoptic_merge(
        torch.from_numpy(logits), up, _thing_flags(reference_dir, num_classes),
        object_threshold=thr, overlap_threshold=thr,
    )


def _check(result, expected_seg, expected_rows):
    pan = result.panoptic_seg.numpy()
    assert pan.dtype == np.int32
    assert np.array_equal(pan, expected_seg)
    assert np.array_equal(_segment_rows(result), expected_rows.astype(np.int64))
    # Areas are the pixel counts of each id in the map (merged stuff included).
    for s in result.segments:
        assert s.area == int((pan == s.id).sum()) > 0


@pytest.mark.parametrize("prefix,thr", [("thr0", 0.0), ("thr08", 0.8)])
def test_official_postproc_fixture(reference_dir, prefix, thr):
    d = np.load(reference_dir / "postproc_fixture.npz")
    img_h, img_w, pad_h, pad_w, out_h, out_w = (int(v) for v in d["in_sizes"])
    result = _run(reference_dir, d["in_pred_logits"][0], d["in_pred_masks"][0],
                  (pad_h, pad_w), (img_h, img_w), (out_h, out_w), thr)
    _check(result, d[f"{prefix}_panoptic_seg"], d[f"{prefix}_segments"])


def test_official_postproc_fixture_merges_stuff(reference_dir):
    """At 0/0 the fixture has void pixels and merged stuff; make sure both paths really ran."""
    d = np.load(reference_dir / "postproc_fixture.npz")
    img_h, img_w, pad_h, pad_w, out_h, out_w = (int(v) for v in d["in_sizes"])
    masks = torch.from_numpy(d["in_pred_masks"][0])
    logits = torch.from_numpy(d["in_pred_logits"][0])
    up = resize_mask_logits(masks, (pad_h, pad_w), (img_h, img_w), (out_h, out_w))
    # Batched input gives the same values as unbatched.
    up_b = resize_mask_logits(masks[None], (pad_h, pad_w), (img_h, img_w), (out_h, out_w))
    assert torch.equal(up_b[0], up)
    flags = _thing_flags(reference_dir, logits.shape[-1] - 1)
    result = panoptic_merge(logits, up, flags)
    assert (result.panoptic_seg == 0).any()
    scores, labels = logits.sigmoid().max(-1)
    kept_stuff = [int(c) for c in labels[labels.ne(logits.shape[-1] - 1)] if not flags[int(c)]]
    n_stuff_segments = sum(not s.is_thing for s in result.segments)
    assert len(kept_stuff) > n_stuff_segments


def test_full_step1_outputs(reference_dir):
    d = np.load(reference_dir / "full_outputs_step1.npz")
    result = _run(reference_dir, d["pred_logits"][0], d["pred_masks"][0],
                  FULL_PADDED, FULL_IMAGE, FULL_OUTPUT, 0.0)
    _check(result, d["panoptic_seg"], d["segments"])


def test_full_step0_outputs(reference_dir):
    # Step 0's pred_masks are step 1's base-query masks (README: bit-exact).
    d0 = np.load(reference_dir / "full_outputs_step0.npz")
    masks = np.load(reference_dir / "full_outputs_step1.npz")["pred_masks"][0, :100]
    result = _run(reference_dir, d0["pred_logits"][0], masks,
                  FULL_PADDED, FULL_IMAGE, FULL_OUTPUT, 0.0)
    _check(result, d0["panoptic_seg"], d0["segments"])


# ---- hand-made cases (K = 3 classes: class 1 stuff, 2 thing, 3 stuff; column 3 is no-object) ----

IS_THING = [False, True, False]


def _logits(*rows):
    """One row per query: (best column, its logit); everything else at -5."""
    out = torch.full((len(rows), 4), -5.0)
    for q, (col, val) in enumerate(rows):
        out[q, col] = val
    return out


def _box_masks(shape, boxes, inside=5.0, outside=-5.0):
    masks = torch.full((len(boxes),) + shape, outside)
    for q, (y0, y1, x0, x1) in enumerate(boxes):
        masks[q, y0:y1, x0:x1] = inside
    return masks


def test_no_kept_query_is_all_void():
    logits = _logits((3, 4.0), (3, 2.0))  # both queries prefer no-object
    masks = _box_masks((6, 8), [(0, 6, 0, 8), (0, 3, 0, 3)])
    result = panoptic_merge(logits, masks, IS_THING)
    assert result.segments == []
    assert result.panoptic_seg.dtype == torch.int32
    assert not result.panoptic_seg.any()
    assert not result.semantic.any()


def test_object_threshold_drops_low_scores():
    logits = _logits((1, -1.0))  # sigmoid(-1) ~ 0.27
    masks = _box_masks((4, 4), [(0, 4, 0, 4)])
    assert len(panoptic_merge(logits, masks, IS_THING, object_threshold=0.0).segments) == 1
    assert panoptic_merge(logits, masks, IS_THING, object_threshold=0.5).segments == []


def test_two_stuff_queries_of_one_class_merge():
    # Queries 0 and 2 are class 1 (stuff) on disjoint halves; query 1 is a thing in the middle.
    logits = _logits((0, 3.0), (1, 4.0), (0, 2.0))
    masks = _box_masks((6, 8), [(0, 6, 0, 4), (2, 4, 3, 5), (0, 6, 4, 8)])
    result = panoptic_merge(logits, masks, IS_THING)
    assert [(s.id, s.category_id, s.is_thing) for s in result.segments] == [(1, 1, False), (2, 2, True)]
    pan = result.panoptic_seg
    assert set(pan.unique().tolist()) == {1, 2}
    stuff = result.segments[0]
    assert stuff.area == int((pan == 1).sum()) == 48 - 4
    # The merged segment keeps the first query's score.
    assert stuff.score == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_two_thing_queries_of_one_class_stay_separate():
    logits = _logits((1, 3.0), (1, 2.0))
    masks = _box_masks((6, 8), [(0, 6, 0, 4), (0, 6, 4, 8)])
    result = panoptic_merge(logits, masks, IS_THING)
    assert [(s.id, s.category_id) for s in result.segments] == [(1, 2), (2, 2)]


def test_overlap_threshold_drops_mostly_covered_query():
    # Query 1 (weaker) sits mostly under query 0: it wins only 8 of its 24 foreground pixels.
    logits = _logits((1, 4.0), (2, 1.0))
    masks = _box_masks((8, 8), [(0, 8, 0, 6), (0, 4, 2, 8)])
    loose = panoptic_merge(logits, masks, IS_THING, overlap_threshold=0.0)
    assert [s.category_id for s in loose.segments] == [2, 3]
    assert loose.segments[1].area == 8  # columns 6-7, rows 0-3
    strict = panoptic_merge(logits, masks, IS_THING, overlap_threshold=0.8)
    assert [s.category_id for s in strict.segments] == [2]
    # Its 8 pixels become void, next to the 8 background pixels below it that nobody claims.
    assert int((strict.panoptic_seg == 0).sum()) == 16
    assert not (strict.panoptic_seg[:4, 6:] != 0).any()


def test_overlap_ratio_uses_argmax_area():
    # Official rule: argmax area / (sigmoid >= 0.5 area), not final-mask area. Query 1 wins columns 4-7
    # (4 px) but only columns 4-5 are its foreground (of 2-5): 4/4 passes 0.8, although 2/4 would not.
    logits = _logits((1, 4.0), (2, 1.0))
    masks = torch.tensor([[[5.0, 5, 5, 5, -5, -5, -5, -5]], [[-1.0, -1, 5, 5, 5, 5, -1, -1]]])
    result = panoptic_merge(logits, masks, IS_THING, overlap_threshold=0.8)
    assert [(s.category_id, s.area) for s in result.segments] == [(2, 4), (3, 2)]
    assert result.panoptic_seg.tolist() == [[1, 1, 1, 1, 2, 2, 0, 0]]


def test_semantic_map_values():
    logits = _logits((0, 3.0), (1, 4.0), (2, 3.0), (0, 2.0))
    masks = _box_masks((4, 6), [(0, 2, 0, 3), (0, 2, 3, 6), (2, 4, 0, 3), (2, 4, 3, 5)])
    result = panoptic_merge(logits, masks, IS_THING)
    expected = torch.tensor([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 2, 2, 2],
        [3, 3, 3, 1, 1, 0],
        [3, 3, 3, 1, 1, 0],
    ])
    assert torch.equal(result.semantic, expected)
    assert torch.equal(semantic_from_panoptic(result), expected)
    # Segment ids differ from class ids: merged stuff (class 1) shares id 1 in both places.
    assert result.panoptic_seg[3, 3].item() == result.panoptic_seg[0, 0].item() == 1


def test_semantic_from_hand_built_result():
    pan = torch.tensor([[0, 2], [5, 2]], dtype=torch.int32)
    res = PanopticResult(pan, [Segment(2, 7, True, 0.9, 2), Segment(5, 110, False, 0.5, 1)])
    assert torch.equal(semantic_from_panoptic(res), torch.tensor([[0, 7], [110, 7]]))


def test_resize_order_and_shapes():
    x = torch.randn(3, 8, 10)
    out = resize_mask_logits(x, (32, 40), (30, 36), (15, 18))
    assert out.shape == (3, 15, 18)
    up = torch.nn.functional.interpolate(x[None], size=(32, 40), mode="bilinear", align_corners=False)
    ref = torch.nn.functional.interpolate(up[:, :, :30, :36], size=(15, 18), mode="bilinear",
                                          align_corners=False)[0]
    assert torch.equal(out, ref)


def test_semantic_inference_sums_class_and_mask_probabilities():
    """Per pixel: sum over queries of sigmoid(class) x sigmoid(mask); a query whose best column is
    no-object adds nothing; scoring a few rows at a time changes nothing."""
    from model.network.postprocess import semantic_inference

    big = 8.0
    # 3 classes + no-object. q0: class 1 (prob .9); q1: class 2 (prob .6); q2: no-object wins (class 3 at .7).
    logits = torch.tensor([[2.197, -big, -big, -big], [-big, 0.405, -big, -big], [-big, -big, 0.847, 3.0]])
    masks = torch.full((3, 4, 6), -big)
    masks[0, :, :3] = big  # q0 covers the left half
    masks[1, :, 2:] = big  # q1 the right part, overlapping q0 on column 2
    masks[2] = big  # q2 everywhere, but it is no-object
    out = semantic_inference(logits, masks)
    assert out.dtype == torch.int64 and out.shape == (4, 6)
    assert (out[:, :3] == 1).all() and (out[:, 3:] == 2).all()  # column 2: .9 beats .6
    assert torch.equal(semantic_inference(logits, masks, rows=1), out)
    nothing = semantic_inference(logits[2:], masks[2:])
    assert (nothing == 0).all()  # only a no-object query: no class anywhere
