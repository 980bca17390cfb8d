"""Hand-computed checks of PanopticQuality (panopticapi rules), SemanticIoU and helpers."""

import math

import numpy as np
import pytest

from model.evaluation.metrics import (
    ClassPQ,
    GroupPQ,
    PanopticQuality,
    SemanticIoU,
    format_pq_table,
    panoptic_to_semantic,
    to_jsonable,
)

THING, STUFF = True, False
EXACT = dict(rel=1e-12, abs=1e-12)


def segs(*pairs, crowd=()):
    """[(id, category_id), ...] -> segment dicts; ids in `crowd` get iscrowd=1."""
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


def row(*values):
    return np.array([values], dtype=np.int64)


def scores(r: ClassPQ):
    return (r.pq, r.sq, r.rq, r.tp, r.fp, r.fn)


def test_perfect_prediction_is_pq_one():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = np.array([[7, 7, 9, 9], [7, 7, 9, 9]])  # different ids, same segments
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((7, 1), (9, 2)))
    res = m.compute()
    assert scores(res[1]) == (1.0, 1.0, 1.0, 1, 0, 0)
    assert scores(res[2]) == (1.0, 1.0, 1.0, 1, 0, 0)
    s = m.summary()
    assert (s["All"].pq, s["All"].sq, s["All"].rq, s["All"].n) == (1.0, 1.0, 1.0, 2)


def test_shifted_segment_has_known_iou():
    # 8x8: a 4x4 thing block on stuff; the prediction shifts the block one column right.
    gt = np.full((8, 8), 2)
    gt[2:6, 1:5] = 1
    pred = np.full((8, 8), 20)
    pred[2:6, 2:6] = 10
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((10, 1), (20, 2)))
    res = m.compute()
    # thing: inter 12, union 16 + 16 - 12 = 20 -> 0.6; stuff: inter 64 - 20 = 44, union 48 + 48 - 44 = 52.
    assert res[1].pq == pytest.approx(0.6, **EXACT)
    assert res[1].iou_sum == pytest.approx(0.6, **EXACT)
    assert (res[1].rq, res[1].tp) == (1.0, 1)
    assert res[2].pq == pytest.approx(44 / 52, **EXACT)
    assert m.summary()["All"].pq == pytest.approx((0.6 + 44 / 52) / 2, **EXACT)


def test_iou_exactly_half_is_not_a_match():
    # gt thing cols 0-5, stuff cols 6-7; pred thing cols 2-7 (inter 4, union 8), stuff cols 0-1.
    gt = row(1, 1, 1, 1, 1, 1, 2, 2)
    pred = row(8, 8, 5, 5, 5, 5, 5, 5)
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((5, 1), (8, 2)))
    res = m.compute()
    assert scores(res[1]) == (0.0, 0.0, 0.0, 0, 1, 1)
    assert scores(res[2]) == (0.0, 0.0, 0.0, 0, 1, 1)


def test_just_above_half_is_a_match():
    # gt thing cols 0-4 (5 px), pred thing cols 0-5 (6 px): inter 5, union 6 + 5 - 5 = 6 -> 5/6.
    gt = row(1, 1, 1, 1, 1, 2, 2, 2)
    pred = row(5, 5, 5, 5, 5, 5, 8, 8)
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((5, 1), (8, 2)))
    res = m.compute()
    assert res[1].pq == pytest.approx(5 / 6, **EXACT)
    assert res[2].pq == pytest.approx(2 / 3, **EXACT)  # inter 2, union 3 + 2 - 2


def test_void_in_gt_reduces_the_union():
    # A plain IoU would be 3/8 (no match); without the pred's 5 void pixels the union is 3 -> IoU 1.
    gt = row(1, 1, 1, 0, 0, 0, 0, 0)
    pred = row(4, 4, 4, 4, 4, 4, 4, 4)
    m = PanopticQuality({1: THING})
    m.update(gt, segs((1, 1)), pred, segs((4, 1)))
    assert scores(m.compute()[1]) == (1.0, 1.0, 1.0, 1, 0, 0)

    # Partly excused: inter 4, pred 8, gt 4, pred-on-void 2 -> union 6 -> IoU 2/3; stuff gt is a FN.
    gt = row(1, 1, 1, 1, 2, 2, 0, 0)
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((4, 1)))
    res = m.compute()
    assert res[1].pq == pytest.approx(2 / 3, **EXACT)
    assert scores(res[2]) == (0.0, 0.0, 0.0, 0, 0, 1)


def test_crowd_region_absorbs_false_positive_and_is_never_fn():
    # gt: crowd of thing class 1 on cols 0-5, stuff class 2 on cols 6-7.
    gt = row(1, 1, 1, 1, 1, 1, 2, 2)
    gt_segs = segs((1, 1), (2, 2), crowd=(1,))
    # pred 7 (class 1) lies wholly on the crowd -> ignored; pred 8 (class 2): inter 2, union 3.
    pred = row(7, 7, 7, 7, 7, 8, 8, 8)
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, gt_segs, pred, segs((7, 1), (8, 2)))
    res = m.compute()
    assert scores(res[1]) == (0.0, 0.0, 0.0, 0, 0, 0)
    assert res[2].pq == pytest.approx(2 / 3, **EXACT)
    assert m.summary()["All"].n == 1  # class 1 has no tp/fp/fn and is left out

    # A perfect cover of the crowd is not a TP (crowds are never matched) and not a FP either.
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, gt_segs, row(7, 7, 7, 7, 7, 7, 8, 8), segs((7, 1), (8, 2)))
    assert scores(m.compute()[1]) == (0.0, 0.0, 0.0, 0, 0, 0)

    # A crowd of another class does not excuse: pred 7 as class 3 on the class-1 crowd is a FP.
    m = PanopticQuality({1: THING, 2: STUFF, 3: THING})
    m.update(gt, gt_segs, pred, segs((7, 3), (8, 2)))
    assert scores(m.compute()[3]) == (0.0, 0.0, 0.0, 0, 1, 0)


@pytest.mark.parametrize(
    "pred, fp_expected",
    [
        (row(0, 3, 3, 3, 3, 0, 0, 0), 0),  # 3 of 4 pixels on void: ignored
        (row(0, 0, 3, 3, 3, 3, 0, 0), 1),  # exactly half on void: not > 0.5, so a FP
    ],
)
def test_unmatched_pred_on_void_ignored_or_fp(pred, fp_expected):
    gt = row(0, 0, 0, 0, 2, 2, 2, 2)
    m = PanopticQuality({1: THING, 2: STUFF})
    m.update(gt, segs((2, 2)), pred, segs((3, 1)))
    res = m.compute()
    assert scores(res[1]) == (0.0, 0.0, 0.0, 0, fp_expected, 0)
    assert scores(res[2]) == (0.0, 0.0, 0.0, 0, 0, 1)  # unmatched gt -> FN
    assert m.summary()["All"].n == 1 + fp_expected


def _four_class_metric() -> PanopticQuality:
    """Two images over classes 1 (thing), 2 (stuff), 3 (thing), 4 (stuff), 5 (thing, absent)."""
    m = PanopticQuality({1: THING, 2: STUFF, 3: THING, 4: STUFF, 5: THING})
    # Image A: class 1 perfect; class 2 IoU 12/16; a class-4 pred row on class-2 gt is a FP.
    gt = np.zeros((4, 8), dtype=np.int64)
    gt[:, :4], gt[:, 4:] = 1, 2
    pred = gt * 10
    pred[3, 4:] = 12
    m.update(gt, segs((1, 1), (2, 2)), pred, segs((10, 1), (20, 2), (12, 4)))
    # Image B: class 3 missed (FN); class 4 IoU 4/5.
    m.update(row(1, 1, 2, 2, 2, 2), segs((1, 3), (2, 4)), row(0, 9, 9, 9, 9, 9), segs((9, 4)))
    return m


def test_things_stuff_groups_and_absent_class():
    m = _four_class_metric()
    res = m.compute()
    assert scores(res[1]) == (1.0, 1.0, 1.0, 1, 0, 0)
    assert res[2].pq == pytest.approx(0.75, **EXACT)
    assert scores(res[3]) == (0.0, 0.0, 0.0, 0, 0, 1)
    assert (res[4].tp, res[4].fp, res[4].fn) == (1, 1, 0)
    assert res[4].pq == pytest.approx(0.8 / 1.5, **EXACT)
    assert res[4].sq == pytest.approx(0.8, **EXACT)
    assert res[4].rq == pytest.approx(2 / 3, **EXACT)
    assert scores(res[5]) == (0.0, 0.0, 0.0, 0, 0, 0)
    assert m.num_images == 2

    s = m.summary({"old": [1, 2], "new": [3, 4, 5]})
    assert list(s) == ["All", "Things", "Stuff", "old", "new"]
    expect = {
        "All": ((1 + 0.75 + 0 + 0.8 / 1.5) / 4, (1 + 0.75 + 0 + 0.8) / 4, (1 + 1 + 0 + 2 / 3) / 4, 4),
        "Things": (0.5, 0.5, 0.5, 2),  # class 5 is in neither gt nor pred: excluded
        "Stuff": ((0.75 + 0.8 / 1.5) / 2, (0.75 + 0.8) / 2, (1 + 2 / 3) / 2, 2),
        "old": (0.875, 0.875, 1.0, 2),
        "new": ((0.8 / 1.5) / 2, 0.4, (2 / 3) / 2, 2),
    }
    for name, (pq, sq, rq, n) in expect.items():
        g = s[name]
        assert (g.pq, g.sq, g.rq) == pytest.approx((pq, sq, rq), **EXACT), name
        assert g.n == n, name


def test_empty_group_is_nan_and_json_none():
    m = _four_class_metric()
    s = m.summary({"unseen": [5]})
    assert s["unseen"].n == 0 and math.isnan(s["unseen"].pq)
    assert to_jsonable(s)["unseen"] == {"pq": None, "sq": None, "rq": None, "n": 0}


def test_format_pq_table_matches_panopticapi_layout():
    table = format_pq_table({"All": GroupPQ(0.5708333, 0.6375001, 2 / 3, 4), "new": GroupPQ(0.0, 0.0, 0.0, 0)})
    assert table.splitlines() == [
        "          |    PQ     SQ     RQ     N",
        "--------------------------------------",
        "All       |  57.1   63.8   66.7     4",
        "new       |   0.0    0.0    0.0     0",
    ]
    assert format_pq_table({"x": {"pq": None, "sq": None, "rq": None, "n": 0}}).splitlines()[2] == (
        "x         |   nan    nan    nan     0"
    )


@pytest.mark.parametrize(
    "gt_segs, pred, pred_segs, message",
    [
        (segs((1, 1)), row(4, 4), segs((4, 9)), "unknown category_id 9"),
        (segs((1, 1)), row(4, 4), segs((4, 1), (6, 1)), r"segment ids \[6\] are listed but have no pixels"),
        (segs((1, 1)), row(4, 5), segs((4, 1)), r"segment ids \[5\], which are not in the segment list"),
        (segs((1, 1), (1, 1)), row(4, 4), segs((4, 1)), "listed twice"),
        (segs((1, 7)), row(4, 4), segs((4, 1)), "gt: segment 1 has unknown category_id 7"),
        (segs((1, 1)), np.array([[4, 4]], dtype=np.float32), segs((4, 1)), "integer array"),
        (segs((1, 1)), row(4, 4, 4), segs((4, 1)), "shape"),
    ],
)
def test_bad_input_raises_clear_error(gt_segs, pred, pred_segs, message):
    m = PanopticQuality({1: THING})
    with pytest.raises(ValueError, match=message):
        m.update(row(1, 1), gt_segs, pred, pred_segs, where="img42")
    with pytest.raises(ValueError, match="img42"):
        m.update(row(1, 1), gt_segs, pred, pred_segs, where="img42")


def test_bad_groups_and_categories():
    with pytest.raises(ValueError, match="0 is void"):
        PanopticQuality({0: THING})
    m = PanopticQuality({1: THING})
    with pytest.raises(ValueError, match=r"group 'new' has unknown category ids \[2\]"):
        m.summary({"new": [2]})


def test_semantic_iou_confusion_with_void_ignored():
    gt = np.array([[1, 1, 2, 0], [2, 2, 3, 0]])
    pred = np.array([[1, 2, 2, 1], [2, 0, 3, 3]])  # the last column lies on gt void: ignored
    m = SemanticIoU(4)
    m.update(gt, pred)
    iou = m.compute()
    # class 1: inter 1, gt 2, pred 1 -> 1/2; class 2: inter 2, gt 3, pred 3 -> 2/4; class 3: 1/1.
    assert iou[1] == 0.5 and iou[2] == 0.5 and iou[3] == 1.0
    assert math.isnan(iou[4])  # no gt and no pred pixels
    s = m.summary({"old": [1, 2], "new": [3, 4]})
    assert (s["All"].miou, s["All"].n) == (pytest.approx(2 / 3, **EXACT), 3)
    assert (s["old"].miou, s["old"].n) == (0.5, 2)
    assert (s["new"].miou, s["new"].n) == (1.0, 1)
    m.update(gt, gt)  # accumulates: class 1 now inter 3, gt 4, pred 3 -> 3/4
    assert m.compute()[1] == 0.75
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\]"):
        m.update(gt, pred + 2)


def test_panoptic_to_semantic():
    ids = np.array([[0, 5, 5], [9, 9, 0]])
    sem = panoptic_to_semantic(ids, segs((5, 3), (9, 1)))
    assert sem.tolist() == [[0, 3, 3], [1, 1, 0]]
    with pytest.raises(ValueError, match=r"\[9\] are not in the segment list"):
        panoptic_to_semantic(ids, segs((5, 3)))
