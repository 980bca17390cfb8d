"""Dense steps' post-processing: which pixels a step may claim, instance splitting, snapping to queries."""

import numpy as np
import pytest
import torch

from model.network.dense_segments import InstanceRule, dense_maps, dense_segments, snap_to_queries

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def maps(shape, objects):
    """Foreground probability 0.99 on the objects, distance 1 at their centres falling to 0 at the edge."""
    probs = np.zeros((1, *shape))
    dist = np.zeros((1, *shape))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx, r in objects:
        m = disc(shape, cy, cx, r)
        probs[0][m] = 0.99
        dist[0][m] = np.maximum(dist[0][m], 1 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)[m] / r)
    return probs, dist


def test_touching_instances_split_and_small_ones_dropped():
    probs, dist = maps((64, 64), [(20, 20, 10), (20, 39, 10), (50, 50, 2)])
    segs = dense_segments(probs, dist, [True], InstanceRule(min_area=30))
    assert len(segs) == 2 and all(200 < s.mask.sum() < 400 for s in segs)


def test_claim_foreign_ceiling_spares_what_another_class_holds_not_look_alikes():
    probs, dist = maps((40, 80), [(20, 20, 8), (20, 60, 8)])
    held = np.zeros((40, 80))
    owner = np.zeros((40, 80), np.int64)
    held[disc((40, 80), 20, 20, 8)], owner[disc((40, 80), 20, 20, 8)] = 0.7, 3  # a look-alike holds the left
    held[disc((40, 80), 20, 60, 8)], owner[disc((40, 80), 20, 60, 8)] = 0.7, 5  # another class the right
    old = dense_segments(probs, dist, [True], InstanceRule(), held, owner)  # files before the ceiling
    assert len(old) == 2
    rule = InstanceRule(look_alikes=(3,), foreign_ceiling=0.5)
    segs = dense_segments(probs, dist, [True], rule, held, owner)
    assert len(segs) == 1 and segs[0].mask[20, 20] and not segs[0].mask[20, 60]
    held[:] = np.where(held > 0, 0.3, 0)  # held weakly: both may be taken
    assert len(dense_segments(probs, dist, [True], rule, held, owner)) == 2


def test_snapping_takes_the_query_mask_and_joins_fragments_of_one_query():
    shape = (48, 48)
    labels = np.zeros(shape, np.int32)
    labels[10:20, 10:30] = 1  # two fragments of one object
    labels[20:30, 10:30] = 2
    labels[40:46, 40:46] = 3  # no query matches this one
    query = np.zeros((2, *shape), bool)
    query[0, 9:31, 9:31] = True  # the object, slightly larger than the head's pixels
    query[1, 0:5, 0:5] = True
    out, n = snap_to_queries(labels, 3, query, 0.4, np.ones(shape, bool))
    assert n == 2
    ids = set(np.unique(out)) - {0}
    assert len(ids) == 2
    assert (out[query[0]] == out[15, 15]).all() and out[15, 15] == out[25, 15]
    assert (out[40:46, 40:46] > 0).all() and out[2, 2] == 0
    blocked = np.ones(shape, bool)
    blocked[9, :] = False  # the query mask is cut where the step may not claim
    out, _ = snap_to_queries(labels, 3, query, 0.4, blocked)
    assert not (out[9] > 0).any()


def test_rule_round_trips_and_old_files_keep_their_behaviour():
    rule = InstanceRule(min_area=12.0, look_alikes=(2, 7), foreign_ceiling=0.5, snap_iou=0.5, detect=0.3,
                        relative=0.4)
    assert InstanceRule.from_json(rule.to_json()) == rule
    old = {"foreground": 0.5, "core": 0.5, "min_area": 9.0, "override_margin": 0.1}  # before look-alikes
    loaded = InstanceRule.from_json(old)
    assert loaded.look_alikes == () and loaded.foreign_ceiling == 1.0 and loaded.snap_iou == 0.0


def test_thresholds_are_searched_as_pairs(monkeypatch):
    """The foreground and core thresholds are chosen together: a pair that a search of one threshold at a
    time would miss (its foreground loses at the default core) is found."""
    from types import SimpleNamespace

    from model.interactive import negatives
    from model.interactive.config import Example

    def score(images, rule, is_thing):  # best at (0.8, 0.3); at core 0.5 foreground 0.5 looks best
        table = {(0.5, 0.5): 0.6, (0.8, 0.3): 0.9}
        return table.get((round(rule.foreground, 2), round(rule.core, 2)), 0.1)

    monkeypatch.setattr(negatives, "_painted_quality", score)
    group = SimpleNamespace(rule=InstanceRule())
    raw = SimpleNamespace(dense_logits=[torch.zeros(1, 2, 8, 8)], dense_strides=[4], padded_size=(32, 32),
                          image_size=(32, 32))
    reference = SimpleNamespace(confidence=torch.zeros(32, 32), semantic=torch.zeros(32, 32, dtype=torch.long))
    example = Example(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.int32), complete=True)
    chosen = negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example], [True])
    assert chosen == (0.8, 0.3) and (group.rule.foreground, group.rule.core) == (0.8, 0.3)
    # A stuff-only step has no core to choose: it keeps its own.
    group.rule = InstanceRule(core=0.4)
    assert negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example], [False]) == (0.5, 0.4)
    # Things cut by their own peak: the foreground changes no thing segment, so only the core is searched.
    seen = []
    monkeypatch.setattr(negatives, "_painted_quality", lambda images, rule, is_thing: seen.append(rule) or 0.0)
    group.rule = InstanceRule(detect=0.3, relative=0.5)
    negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example], [True])
    assert {r.foreground for r in seen} == {0.5} and len(seen) == len(negatives.CORE_CANDIDATES)
    # Ties go to the pair nearest the defaults, and between equally near ones to the higher thresholds.
    monkeypatch.setattr(negatives, "_painted_quality", lambda images, rule, is_thing: float(rule.core in (0.3, 0.7)))
    assert negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example], [True]) == (0.5, 0.7)
    monkeypatch.setattr(negatives, "_painted_quality", lambda images, rule, is_thing: float(rule.core != 0.5))
    assert negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example], [True]) == (0.5, 0.6)


def test_weak_things_cut_at_their_own_peak():
    """With `detect` on, a thing the head is unsure of (peak 0.5, below the foreground threshold 0.6) is
    found whole, cut at half its peak; a sure one is cut at half its peak too, but never above the
    foreground threshold; what never reaches `detect` stays out; stuff and a rule with `detect` off
    (older step files) are cut at the foreground threshold."""
    shape = (64, 96)
    yy, xx = np.mgrid[: shape[0], : shape[1]]

    def cone(cy, cx, peak, r):
        return peak * np.clip(1 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r, 0, 1)

    strong, weak, faint = cone(32, 20, 0.99, 14), cone(32, 60, 0.5, 14), cone(10, 85, 0.18, 6)
    probs = np.maximum.reduce([strong, weak, faint])[None]
    dist = probs / probs.max()
    off = InstanceRule(foreground=0.6, core=0.2, min_area=4)
    on = InstanceRule(foreground=0.6, core=0.2, min_area=4, detect=0.2, relative=0.5)
    before = dense_segments(probs, dist, [True], off)
    assert len(before) == 1
    np.testing.assert_array_equal(before[0].mask, strong > 0.6)
    after = dense_segments(probs, dist, [True], on)
    assert len(after) == 2
    found_strong = next(s for s in after if s.mask[32, 20])
    found_weak = next(s for s in after if s.mask[32, 60])
    np.testing.assert_array_equal(found_strong.mask, strong > 0.5 * 0.99)
    np.testing.assert_array_equal(found_weak.mask, weak > 0.25)
    assert not any(s.mask[10, 85] for s in after)
    stuff = dense_segments(probs, dist, [False], on)
    assert len(stuff) == 1
    np.testing.assert_array_equal(stuff[0].mask, probs[0] > 0.6)
    assert InstanceRule.from_json({"foreground": 0.6}).detect == 1.0  # older rules: off
    # The cut's bounds: a sure thing with `relative` 0.8 is cut at the foreground threshold (not 0.79); a
    # weak one whose half peak is below `detect` is cut at `detect`.
    capped = dense_segments(probs, dist, [True], InstanceRule(foreground=0.6, core=0.2, min_area=4, detect=0.2,
                                                              relative=0.8))
    np.testing.assert_array_equal(next(s for s in capped if s.mask[32, 20]).mask, strong > 0.6)
    floor = InstanceRule(foreground=0.6, core=0.2, min_area=4, detect=0.3, relative=0.5)
    floored = next(s for s in dense_segments(probs, dist, [True], floor) if s.mask[32, 60])
    np.testing.assert_array_equal(floored.mask, weak > 0.3)


def test_weak_things_found_per_class():
    """Two thing classes: each class's regions are cut at their own peak, within the pixels where that
    class is the most probable."""
    shape = (32, 64)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = 0.5 * np.clip(1 - np.sqrt((yy - 16) ** 2 + (xx - 16) ** 2) / 10, 0, 1)
    b = 0.9 * np.clip(1 - np.sqrt((yy - 16) ** 2 + (xx - 48) ** 2) / 10, 0, 1)
    probs = np.stack([a, b])
    rule = InstanceRule(foreground=0.6, core=0.2, min_area=4, detect=0.2, relative=0.5)
    segments = dense_segments(probs, probs / 0.9, [True, True], rule)
    assert sorted(s.class_index for s in segments) == [0, 1]
    np.testing.assert_array_equal(next(s for s in segments if s.class_index == 0).mask, (a > 0.25) & (a >= b))
    np.testing.assert_array_equal(next(s for s in segments if s.class_index == 1).mask, (b > 0.45) & (b > a))


def test_the_painting_can_choose_not_to_split_its_instances():
    """A painted instance whose distance map has two peaks (two discs joined by a bridge) is cut in two
    by every core threshold that seeds the discs apart; the painting, one instance, chooses a core of 0
    (each connected region one instance), which then predicts it whole."""
    from types import SimpleNamespace

    from model.interactive import negatives
    from model.interactive.config import Example

    yy, xx = np.mgrid[:64, :64]
    left, right = np.hypot(yy - 32, xx - 18), np.hypot(yy - 32, xx - 46)
    bridge = (abs(yy - 32) <= 3) & (xx > 18) & (xx < 46)
    painted = (left <= 10) | (right <= 10) | bridge
    distance = np.clip(np.maximum(1 - left / 10, 1 - right / 10), 0.05, 0.95)
    fg = np.where(painted, 8.0, -8.0)
    logits = torch.from_numpy(np.stack([fg, np.log(distance / (1 - distance))]).astype(np.float32))[None]
    raw = SimpleNamespace(dense_logits=[logits], dense_strides=[1], padded_size=(64, 64), image_size=(64, 64))
    reference = SimpleNamespace(confidence=torch.zeros(64, 64), semantic=torch.zeros(64, 64, dtype=torch.long))
    example = Example(np.zeros((64, 64), np.uint8), painted.astype(np.int32), complete=True)
    group = SimpleNamespace(rule=InstanceRule())
    split = dense_segments(*dense_maps(logits[0], 1, (64, 64), (64, 64), (64, 64)), [True], group.rule)
    assert len(split) == 2  # the default core (0.5) cuts it at the bridge
    foreground, core = negatives.choose_thresholds(SimpleNamespace(groups=[group]), [raw], [reference], [example],
                                                   [True])
    assert core == 0.0 and group.rule.core == 0.0
    whole = dense_segments(*dense_maps(logits[0], 1, (64, 64), (64, 64), (64, 64)), [True], group.rule)
    assert len(whole) == 1 and (whole[0].mask == painted).all()
