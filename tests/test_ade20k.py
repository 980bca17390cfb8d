"""ADEChallengeData2016 -> COCO-panoptic (model.data.ade20k, eclipse_napari.convert_ade20k) on a tiny fake tree."""

import json

import numpy as np
import pytest
from PIL import Image

from eclipse_napari.cli import convert_ade20k as cli
from model.data.ade20k import (
    ade20k_instance_mapping,
    ade_image_to_panoptic,
    convert_ade20k_panoptic,
)
from model.data.categories import ade20k_categories
from model.io.panoptic_format import rgb2id

H, W = 32, 40
# 150-class ids (stuff: wall 1, sky 3, floor 4; things: person 13, door 15, chair 20, car 21) and the
# instance-category ids (PNG channel R) that the ADE mapping sends to those things.
WALL, SKY, FLOOR, PERSON, DOOR, CHAIR, CAR = 1, 3, 4, 13, 15, 20, 21
R_PERSON, R_DOOR, R_CHAIR, R_CAR = 4, 5, 8, 9


def _image_a():
    """Stuff, two persons (one over the wall, one on its own semantic pixels), a chair over wall and floor."""
    sem = np.zeros((H, W), np.uint8)
    sem[0:10], sem[10:24], sem[24:32] = SKY, WALL, FLOOR
    sem[0:4, 0:5] = 0  # void
    sem[12:20, 20:25] = PERSON  # covered by person 2
    sem[26:30, 30:36] = PERSON  # thing pixels with no instance: void
    ins = np.zeros((H, W, 3), np.uint8)
    ins[12:20, 5:10] = (R_PERSON, 1, 0)  # over the wall: the thing wins
    ins[12:20, 20:25] = (R_PERSON, 2, 0)
    ins[22:28, 10:15] = (R_CHAIR, 3, 0)  # over wall rows 22-23 and floor rows 24-27

    expected = np.zeros((H, W), np.int64)
    expected[10:24] = 1  # wall
    expected[0:10] = 2  # sky
    expected[24:32] = 3  # floor
    expected[0:4, 0:5] = 0
    expected[26:30, 30:36] = 0
    expected[12:20, 5:10] = 4
    expected[12:20, 20:25] = 5
    expected[22:28, 10:15] = 6
    segments = [
        {"id": 1, "category_id": WALL, "area": 560 - 40 - 40 - 10, "bbox": [0, 10, 40, 14], "iscrowd": 0},
        {"id": 2, "category_id": SKY, "area": 400 - 20, "bbox": [0, 0, 40, 10], "iscrowd": 0},
        {"id": 3, "category_id": FLOOR, "area": 320 - 20 - 24, "bbox": [0, 24, 40, 8], "iscrowd": 0},
        {"id": 4, "category_id": PERSON, "area": 40, "bbox": [5, 12, 5, 8], "iscrowd": 0},
        {"id": 5, "category_id": PERSON, "area": 40, "bbox": [20, 12, 5, 8], "iscrowd": 0},
        {"id": 6, "category_id": CHAIR, "area": 30, "bbox": [10, 22, 5, 6], "iscrowd": 0},
    ]
    return sem, ins, expected, segments


def _image_b():
    """Sky entirely under a door (dropped); door and person share instance id 1; R without G is ignored."""
    sem = np.full((H, W), FLOOR, np.uint8)
    sem[0:4, 0:4] = SKY
    ins = np.zeros((H, W, 3), np.uint8)
    ins[0:6, 0:6] = (R_DOOR, 1, 0)  # R 5 is listed twice in the mapping, both times -> door
    ins[20:26, 30:36] = (R_PERSON, 1, 0)
    ins[10:12, 10:12] = (R_CHAIR, 0, 0)  # no instance id: not an instance, stays floor

    expected = np.ones((H, W), np.int64)
    expected[20:26, 30:36] = 2  # things in (instance id, category) order: person R 4 before door R 5
    expected[0:6, 0:6] = 3
    segments = [
        {"id": 1, "category_id": FLOOR, "area": H * W - 72, "bbox": [0, 0, 40, 32], "iscrowd": 0},
        {"id": 2, "category_id": PERSON, "area": 36, "bbox": [30, 20, 6, 6], "iscrowd": 0},
        {"id": 3, "category_id": DOOR, "area": 36, "bbox": [0, 0, 6, 6], "iscrowd": 0},
    ]
    return sem, ins, expected, segments


def _image_c():
    """All void except one car."""
    sem = np.zeros((H, W), np.uint8)
    ins = np.zeros((H, W, 3), np.uint8)
    ins[5:9, 30:39] = (R_CAR, 7, 0)
    expected = np.zeros((H, W), np.int64)
    expected[5:9, 30:39] = 1
    segments = [{"id": 1, "category_id": CAR, "area": 36, "bbox": [30, 5, 9, 4], "iscrowd": 0}]
    return sem, ins, expected, segments


CASES = {
    ("training", "ADE_train_00000001"): _image_a,
    ("training", "ADE_train_00000002"): _image_b,
    ("validation", "ADE_val_00000001"): _image_c,
}


def _write_sample(root, split, stem, sem, ins):
    for sub in ("images", "annotations", "annotations_instance"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / split / f"{stem}.jpg")
    Image.fromarray(sem, mode="L").save(root / "annotations" / split / f"{stem}.png")
    Image.fromarray(ins, mode="RGB").save(root / "annotations_instance" / split / f"{stem}.png")


@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for (split, stem), make in CASES.items():
        sem, ins, _, _ = make()
        _write_sample(root, split, stem, sem, ins)
    return root


def test_mapping_is_package_data():
    mapping = ade20k_instance_mapping()
    things = {c["id"] for c in ade20k_categories() if c["isthing"]}
    assert len(mapping) == 100 and set(mapping.values()) == things
    assert mapping[R_PERSON] == PERSON and mapping[R_DOOR] == DOOR and mapping[R_CAR] == CAR


@pytest.mark.parametrize("make", list(CASES.values()), ids=[stem for _, stem in CASES])
def test_image_to_panoptic(make):
    sem, ins, expected, segments = make()
    id_map, got = ade_image_to_panoptic(sem, ins)
    np.testing.assert_array_equal(id_map, expected)
    assert got == segments


def test_image_to_panoptic_rejects_bad_values():
    sem = np.zeros((4, 5), np.uint8)
    ins = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="151"):
        ade_image_to_panoptic(np.full((4, 5), 151, np.uint8), ins)
    bad = ins.copy()
    bad[0, 0] = (200, 1, 0)
    with pytest.raises(ValueError, match="instance category 200"):
        ade_image_to_panoptic(sem, bad)
    with pytest.raises(ValueError, match="instance map is"):
        ade_image_to_panoptic(sem, ins[:3])


def test_convert_cli(ade_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(ade_root), "--out", str(out), "--workers", "2"]) == 0
    assert "training: 2/2 images" in capsys.readouterr().err

    for split, short in (("training", "train"), ("validation", "val")):
        data = json.loads((out / f"ade20k_panoptic_{short}.json").read_text())
        cats = data["categories"]
        assert [c["id"] for c in cats] == list(range(1, 151))
        assert sum(c["isthing"] for c in cats) == 100 and cats[8] == {
            "id": 9, "name": "window", "isthing": 1, "color": [230, 230, 230]
        }
        stems = [stem for (s, stem) in CASES if s == split]
        assert data["images"] == [{"id": s, "file_name": f"{s}.jpg", "height": H, "width": W} for s in stems]
        assert [a["image_id"] for a in data["annotations"]] == stems
        for ann in data["annotations"]:
            _, _, expected, segments = CASES[(split, ann["image_id"])]()
            assert ann["file_name"] == f"{ann['image_id']}.png"
            assert ann["segments_info"] == segments
            with Image.open(out / f"ade20k_panoptic_{short}" / ann["file_name"]) as im:
                assert im.mode == "RGB"
                np.testing.assert_array_equal(rgb2id(np.asarray(im)), expected)


def test_rerun_and_single_worker_give_identical_files(ade_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = convert_ade20k_panoptic(ade_root, a, "training", workers=2, progress=False)
    first.unlink()  # as if interrupted before the JSON: the PNGs are simply rewritten
    convert_ade20k_panoptic(ade_root, a, "training", workers=2, progress=False)
    again = convert_ade20k_panoptic(ade_root, b, "training", workers=1, progress=False)
    assert first.read_bytes() == again.read_bytes()
    for png in sorted((a / "ade20k_panoptic_train").iterdir()):
        assert png.read_bytes() == (b / "ade20k_panoptic_train" / png.name).read_bytes()
    assert not list(a.rglob("*.tmp"))


def test_cli_errors(ade_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert "error: ADE20K root folder not found" in capsys.readouterr().err

    (ade_root / "annotations_instance" / "validation" / "ADE_val_00000001.png").unlink()
    (ade_root / "annotations_instance" / "validation").rmdir()
    assert cli.main([str(ade_root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "annotations_instance/validation" in err
    assert not out.exists() or not list(out.iterdir())  # checked before any work

    sem = np.zeros((H, W + 1), np.uint8)
    _write_sample(ade_root, "training", "ADE_train_00000003", sem, np.zeros((H, W, 3), np.uint8))
    assert cli.main([str(ade_root), "--out", str(out), "--splits", "training", "--workers", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "ADE_train_00000003.png" in err
    assert not (out / "ade20k_panoptic_train.json").exists()  # the JSON is written last


def test_missing_annotation_names_the_file(ade_root, tmp_path, capsys):
    (ade_root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    assert cli.main([str(ade_root), "--out", str(tmp_path / "o"), "--splits", "training", "--quiet"]) == 1
    assert "annotations/training/ADE_train_00000002.png" in capsys.readouterr().err
