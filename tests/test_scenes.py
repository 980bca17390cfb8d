"""Generated panoptic scenes (model.data.scenes) and their command line (eclipse_napari.make_scenes)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from eclipse_napari.cli import make_scenes
from model.data.scenes import (
    MIN_VISIBLE_FRACTION,
    SCENE_CATEGORIES,
    VAL_INDEX_OFFSET,
    generate_scene,
    write_scenes,
)
from model.evaluation.pq_compute import pq_compute
from model.io.panoptic_format import read_panoptic_json, read_panoptic_png, rgb2id

ISTHING = {c["id"]: bool(c["isthing"]) for c in SCENE_CATEGORIES}


@pytest.fixture(scope="module")
def many_scenes():
    """200 scenes at 128x128 (about a second)."""
    return [generate_scene(i, seed=0, size=128) for i in range(200)]


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# --------------------------------------------------------------------------- categories


def test_categories_are_interleaved_things_and_stuff():
    ids = [c["id"] for c in SCENE_CATEGORIES]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 24
    things = [c["isthing"] for c in SCENE_CATEGORIES]
    assert sum(things) >= 16 and len(things) - sum(things) >= 8
    assert len({c["name"] for c in SCENE_CATEGORIES}) == len(ids)
    assert len({tuple(c["color"]) for c in SCENE_CATEGORIES}) == len(ids)
    for k in range(3, len(ids) - 2):  # any base/new split past the first few keeps both kinds on both sides
        assert 0 < sum(things[:k]) < k and 0 < sum(things[k:]) < len(ids) - k


# --------------------------------------------------------------------------- one scene


def test_deterministic_and_index_dependent():
    a = generate_scene(7, seed=3, size=96)
    b = generate_scene(7, seed=3, size=96)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    for other in (generate_scene(8, seed=3, size=96), generate_scene(7, seed=4, size=96)):
        assert not np.array_equal(a[0], other[0])


def test_shapes_types_and_sizes():
    image, id_map, _ = generate_scene(1, size=(80, 120))
    assert image.shape == (80, 120, 3) and image.dtype == np.uint8
    assert id_map.shape == (80, 120) and np.issubdtype(id_map.dtype, np.integer)
    with pytest.raises(ValueError):
        generate_scene(0, size=8)
    with pytest.raises(ValueError):
        generate_scene(-1)


def test_segments_match_the_map_exactly(many_scenes):
    for image, id_map, segments in many_scenes[:40]:
        ids = [s["id"] for s in segments]
        assert len(set(ids)) == len(ids)
        assert set(np.unique(id_map).tolist()) - {0} == set(ids)
        stuff_cats = [s["category_id"] for s in segments if not ISTHING[s["category_id"]]]
        assert len(stuff_cats) == len(set(stuff_cats))  # one segment per stuff class
        for s in segments:
            mask = id_map == s["id"]
            assert s["area"] == int(mask.sum()) > 0
            assert s["bbox"] == _bbox(mask)
            assert s["category_id"] in ISTHING and s["iscrowd"] in (0, 1)
            assert s["iscrowd"] == 0 or ISTHING[s["category_id"]]
            assert s["area"] <= s["shape_area"]


def test_every_class_things_stuff_void_and_crowd_appear(many_scenes):
    counts = Counter(s["category_id"] for _, _, segs in many_scenes for s in segs)
    assert set(counts) == set(ISTHING)
    for _, _, segs in many_scenes:
        assert any(not ISTHING[s["category_id"]] for s in segs)
    with_things = sum(any(ISTHING[s["category_id"]] for s in segs) for _, _, segs in many_scenes)
    assert with_things >= 0.95 * len(many_scenes)
    assert any((id_map == 0).any() for _, id_map, _ in many_scenes)  # void clutter
    assert any(s["iscrowd"] for _, _, segs in many_scenes for s in segs)
    # Zipf-like: frequent and rare thing classes
    thing_counts = sorted(v for k, v in counts.items() if ISTHING[k])
    assert thing_counts[-1] >= 3 * thing_counts[0]


def test_occlusion_happens_and_hidden_things_are_dropped(many_scenes):
    things = [s for _, _, segs in many_scenes for s in segs if ISTHING[s["category_id"]]]
    occluded = [s for s in things if s["area"] < s["shape_area"]]
    assert len(occluded) >= 0.05 * len(things)
    assert all(s["area"] >= MIN_VISIBLE_FRACTION * s["shape_area"] for s in things)


def test_images_are_not_flat_colour(many_scenes):
    for image, id_map, segments in many_scenes[:20]:
        for s in segments:
            pixels = image[id_map == s["id"]].astype(np.float32)
            if s["area"] >= 400:
                assert pixels.std(axis=0).max() > 2  # texture and noise, not a flat fill


# --------------------------------------------------------------------------- files


def _check_split(paths, split, expected_ids, size):
    data = read_panoptic_json(paths[f"{split}_json"])
    assert data["categories"] == SCENE_CATEGORIES
    assert [im["id"] for im in data["images"]] == expected_ids
    assert [a["image_id"] for a in data["annotations"]] == expected_ids
    for im, ann in zip(data["images"], data["annotations"]):
        assert set(im) == {"id", "file_name", "height", "width"} and (im["height"], im["width"]) == (size, size)
        image, id_map, segments = generate_scene(im["id"], seed=5, size=size)
        with Image.open(paths[f"{split}_images"] / im["file_name"]) as f:
            assert np.array_equal(np.asarray(f), image)
        with Image.open(paths[f"{split}_panoptic"] / ann["file_name"]) as f:
            assert np.array_equal(rgb2id(np.asarray(f)), id_map)
        assert np.array_equal(read_panoptic_png(paths[f"{split}_panoptic"] / ann["file_name"]), id_map)
        assert all(set(s) == {"id", "category_id", "iscrowd", "area", "bbox"} for s in ann["segments_info"])
        assert ann["segments_info"] == [{k: s[k] for k in ann["segments_info"][0]} for s in segments]


def test_write_scenes_coco_panoptic(tmp_path):
    paths = write_scenes(tmp_path / "ds", num_train=5, num_val=3, seed=5, size=64)
    assert {p.name for p in (tmp_path / "ds").iterdir()} == {
        "scenes_train.json", "scenes_val.json", "scenes_train", "scenes_val", "images_train", "images_val"
    }  # fmt: skip
    _check_split(paths, "train", list(range(5)), 64)
    _check_split(paths, "val", list(range(VAL_INDEX_OFFSET, VAL_INDEX_OFFSET + 3)), 64)
    # Our evaluator reads it: the gt against itself is perfect.
    res = pq_compute(paths["val_json"], paths["val_panoptic"], paths["val_json"], paths["val_panoptic"])
    assert res["num_images"] == 3 and res["summary"]["All"]["pq"] == pytest.approx(1.0)


def test_workers_give_identical_files(tmp_path):
    one = write_scenes(tmp_path / "a", 4, 2, seed=1, size=48, workers=1)
    two = write_scenes(tmp_path / "b", 4, 2, seed=1, size=48, workers=2)
    for key in ("train_json", "val_json"):
        assert one[key].read_bytes() == two[key].read_bytes()
    for key in ("train_images", "val_panoptic"):
        for f in sorted(one[key].iterdir()):
            assert f.read_bytes() == (two[key] / f.name).read_bytes()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert make_scenes.main(["--out", str(out), "--train", "3", "--val", "2", "--tune", "2", "--size", "48",
                             "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "3 train + 2 val + 2 tune scenes" in printed and "24 categories" in printed
    assert len(list((out / "images_train").iterdir())) == 3 and len(list((out / "scenes_val").iterdir())) == 2
    # The tuning split: as many scenes, other pictures (its own seed), never a copy of a validation scene.
    val, tune = sorted((out / "images_val").iterdir()), sorted((out / "images_tune").iterdir())
    assert len(tune) == 2 and all(a.read_bytes() != b.read_bytes() for a in val for b in tune)
    assert "seed 1002" in (out / "scenes_tune.json").read_text()
    assert make_scenes.main(["--out", str(out), "--size", "8"]) == 1
    assert "error" in capsys.readouterr().err


def test_size_changes_resolution_not_layout():
    for index in (0, 1, 2):
        (_, small, s_segs), (_, big, b_segs) = generate_scene(index, size=64), generate_scene(index, size=128)
        cats_small = np.zeros_like(small)
        cats_big = np.zeros_like(big)
        for s in s_segs:
            cats_small[small == s["id"]] = s["category_id"]
        for s in b_segs:
            cats_big[big == s["id"]] = s["category_id"]
        assert (cats_small == cats_big[::2, ::2]).mean() > 0.9
