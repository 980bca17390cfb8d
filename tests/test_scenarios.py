"""Continual scenarios: counts, orders, id maps, overlap selection, eval groups, errors."""

import dataclasses

import pytest

from model.data.categories import COCO_83_ORDER, coco_panoptic_categories
from model.data.scenarios import (
    SCENARIOS,
    Scenario,
    eval_groups,
    get_scenario,
    scenario_table,
    scene_scenario,
    select_step_images,
    step_keep_ids,
)

EXPECTED = {  # name: (classes, base, increment, steps, queries, prompts, iterations per step)
    "ade-panoptic-100-5": (150, 100, 5, 10, 100, 10, 12_000),
    "ade-panoptic-100-10": (150, 100, 10, 5, 100, 10, 16_000),
    "ade-panoptic-100-50": (150, 100, 50, 1, 100, 50, 80_000),
    "ade-panoptic-50-10": (150, 50, 10, 10, 50, 10, 24_000),
    "ade-panoptic-50-20": (150, 50, 20, 5, 50, 20, 32_000),
    "ade-panoptic-50-50": (150, 50, 50, 2, 50, 50, 120_000),
    "ade-semantic-100-5": (150, 100, 5, 10, 100, 5, 12_000),
    "ade-semantic-100-10": (150, 100, 10, 5, 100, 10, 24_000),
    "ade-semantic-100-50": (150, 100, 50, 1, 100, 50, 120_000),
    "coco-panoptic-83-5": (133, 83, 5, 10, 100, 10, 8_000),
    "coco-panoptic-83-10": (133, 83, 10, 5, 100, 10, 32_000),
    "scenes-16-2": (24, 16, 2, 4, None, None, None),
    "scenes-16-8": (24, 16, 8, 1, None, None, None),
    "scenes-20-4": (24, 20, 4, 1, None, None, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_and_settings(name):
    classes, base, inc, steps, queries, prompts, it_step = EXPECTED[name]
    s = SCENARIOS[name]
    assert (s.num_classes, s.num_base, s.increment, s.num_steps) == (classes, base, inc, steps)
    assert len(s.deltas) == steps + 1
    assert sum(len(s.step_classes(t)) for t in range(steps + 1)) == classes
    assert all(len(s.step_classes(t)) == inc for t in range(1, steps + 1))
    if queries is not None:
        assert (s.num_queries, s.prompts_per_step, s.iterations_per_step) == (queries, prompts, it_step)


def test_exact_names_and_paper_settings():
    assert set(SCENARIOS) == set(EXPECTED)
    ade = SCENARIOS["ade-panoptic-100-5"]
    assert ade.class_order == tuple(range(1, 151))
    assert ade.deltas == (0.4,) + (0.6,) * 10
    assert (ade.backbone, ade.batch_size, ade.iterations_base, ade.base_lr, ade.step_lr) == (
        "resnet50", 8, 160_000, 1e-4, 5e-4)
    assert SCENARIOS["ade-panoptic-50-50"].deltas == (0.5, -0.4, -0.4)
    assert SCENARIOS["ade-panoptic-100-50"].deltas == (-0.4, -0.6)
    sem = SCENARIOS["ade-semantic-100-10"]
    assert (sem.task, sem.metric, sem.backbone, sem.batch_size, sem.step_lr) == (
        "semantic", "miou", "resnet101", 16, 1e-3)
    assert sem.deltas == (0.1,) + (0.7,) * 5
    assert SCENARIOS["coco-panoptic-83-10"].iterations_base == 240_000
    assert SCENARIOS["coco-panoptic-83-5"].deltas == (0.5,) + (0.6,) * 10


def test_coco_order_matches_eclipse_md():
    s = SCENARIOS["coco-panoptic-83-5"]
    file_id = {c["contiguous_id"]: c["id"] for c in coco_panoptic_categories()}
    assert COCO_83_ORDER[:6] == (1, 3, 10, 47, 58, 9)
    assert COCO_83_ORDER[83:86] == (12, 101, 108) and COCO_83_ORDER[-1] == 4
    assert s.class_order == tuple(file_id[c] for c in COCO_83_ORDER)
    assert s.class_order[:4] == (1, 3, 10, file_id[47])
    assert s.step_classes(1) == tuple(file_id[c] for c in (12, 101, 108, 125, 123))
    assert sorted(s.class_order) == sorted(file_id.values())


@pytest.mark.parametrize("name", ["ade-panoptic-50-20", "coco-panoptic-83-10", "scenes-16-2"])
def test_id_round_trips(name):
    s = SCENARIOS[name]
    class_of = s.class_of
    for lid in range(1, s.num_classes + 1):
        did = s.dataset_id(lid)
        assert s.learning_id(did) == lid == class_of[did]
        step = next(t for t in range(s.num_steps + 1) if did in s.step_classes(t))
        assert s.classes_up_to(step - 1) < lid <= s.classes_up_to(step) if step else lid <= s.num_base
    class_of.clear()  # a copy: the scenario is unaffected
    assert s.learning_id(s.class_order[0]) == 1


def test_step_boundaries():
    s = SCENARIOS["ade-panoptic-100-5"]
    assert s.classes_up_to(0) == 100 and s.classes_up_to(3) == 115
    with pytest.raises(ValueError, match="learning id"):
        s.dataset_id(0)
    with pytest.raises(ValueError, match="learning id"):
        s.dataset_id(151)
    with pytest.raises(ValueError, match="step"):
        s.step_classes(11)
    with pytest.raises(ValueError, match="not in this scenario"):
        SCENARIOS["coco-panoptic-83-5"].learning_id(12)  # a gap in the COCO file ids


def _seg(cat, crowd=0):
    return {"id": cat * 7, "category_id": cat, "iscrowd": crowd, "area": 10, "bbox": [0, 0, 1, 1]}


def test_overlap_selection_and_keep_ids():
    s = scene_scenario(4, 2, category_ids=range(1, 11))  # base 1..4, steps {5,6} {7,8} {9,10}
    anns = {
        "old_only": [_seg(1), _seg(3)],
        "step1_with_old_and_future": [_seg(2), _seg(5), _seg(9)],
        "step1_crowd_only": [_seg(6, crowd=1), _seg(1)],
        "future_only": [_seg(7)],
        "empty": [],
        "both_step1": [_seg(6), _seg(5)],
    }
    assert select_step_images(anns, s, 1) == ["step1_with_old_and_future", "both_step1"]
    assert select_step_images(anns, s, 2) == ["future_only"]
    assert select_step_images(anns, s, 3) == ["step1_with_old_and_future"]
    assert select_step_images(anns, s, 0) == ["old_only", "step1_with_old_and_future", "step1_crowd_only"]
    assert step_keep_ids(s, 1) == frozenset({5, 6})
    assert step_keep_ids(s, 0) == frozenset({1, 2, 3, 4})


def test_eval_groups():
    s = SCENARIOS["ade-panoptic-100-10"]
    final = eval_groups(s)
    assert final["old"] == list(range(1, 101)) and final["new"] == list(range(101, 151))
    assert final["all"] == list(range(1, 151))
    assert eval_groups(s, 5) == final
    mid = eval_groups(s, 2)
    assert mid["new"] == list(range(101, 121)) and mid["all"] == list(range(1, 121))
    assert eval_groups(s, 0) == {"old": list(range(1, 101)), "new": [], "all": list(range(1, 101))}
    with pytest.raises(ValueError):
        eval_groups(s, 6)


def test_get_scenario_and_aliases():
    assert get_scenario("100-5") is SCENARIOS["ade-panoptic-100-5"]
    assert get_scenario(" ADE-Semantic-100-50 ") is SCENARIOS["ade-semantic-100-50"]
    assert get_scenario("83-10") is SCENARIOS["coco-panoptic-83-10"]
    assert get_scenario("20-4") is SCENARIOS["scenes-20-4"]
    with pytest.raises(ValueError, match="unknown scenario 'ade-100-7'.*ade-panoptic-100-5.*scenes-20-4"):
        get_scenario("ade-100-7")


def test_scenario_table_lists_everything():
    table = scenario_table()
    lines = table.splitlines()
    assert len(lines) == len(SCENARIOS) + 2 and "steps" in lines[0]
    assert all(name in table for name in SCENARIOS)
    assert "160k" in table and "resnet101" in table


def test_class_order_must_be_a_tuple():
    with pytest.raises(TypeError, match="must be a tuple"):
        _valid(class_order=list(range(1, 25)))


def test_scene_scenario_builder():
    s = scene_scenario(16, 4, category_ids=range(1, 27))  # 26 ids: 16 + 2*4 = 24 used, 2 left out
    assert s.num_steps == 2 and s.class_order == tuple(range(1, 25)) and 25 not in s.class_of
    assert scene_scenario(16, 4, category_ids=range(1, 27), num_steps=1).num_classes == 20
    assert scene_scenario(20, 4).name == "scenes-20-4"  # lazy import or the 1..24 fallback
    with pytest.raises(ValueError, match="do not hold"):
        scene_scenario(20, 8, category_ids=range(1, 25))


def _valid(**changes):
    base = {f.name: getattr(SCENARIOS["scenes-20-4"], f.name) for f in dataclasses.fields(Scenario)}
    base.update(changes)
    return Scenario(**base)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"class_order": tuple(range(1, 24)) + (3,)}, "repeats ids \\[3\\]"),
        ({"num_base": 21}, "do not split"),
        ({"num_base": 24, "deltas": (0.5,)}, "do not split"),
        ({"increment": 3}, "do not split"),
        ({"class_order": tuple(range(24))}, "positive ints"),
        ({"dataset": "cityscapes"}, "dataset must be one of"),
        ({"task": "instance"}, "task must be one of"),
        ({"deltas": (0.5,)}, "deltas must be a tuple of 2"),
        ({"num_queries": 0}, "num_queries must be a positive int"),
        ({"step_lr": 0.0}, "learning rates"),
    ],
)
def test_invalid_scenarios(changes, message):
    assert _valid().name == "scenes-20-4"
    with pytest.raises(ValueError, match=message):
        _valid(**changes)
