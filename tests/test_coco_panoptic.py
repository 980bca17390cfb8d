"""PanopticDataset over a tiny COCO-panoptic folder written here, its checks, and build_targets."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from model.data.coco_panoptic import PanopticDataset, PanopticSample, build_targets
from model.io.panoptic_format import write_panoptic_png

# Gapped dataset ids, in this file order: two things, two stuff.
CATEGORIES = [
    {"id": 5, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 17, "name": "grass", "isthing": 0, "color": [0, 200, 0]},
    {"id": 2, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 40, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
]
CLASS_OF = {5: 1, 17: 2, 2: 3, 40: 4}  # learning order
BIG = 0x030201  # a segment id that uses all three PNG channels


def id_map_a():
    """6x8: sky on top (BIG), grass below, two persons, one crowd of cars, a void column."""
    m = np.zeros((6, 8), dtype=np.int64)
    m[:2, :] = BIG
    m[2:, :] = 7
    m[3:5, 1:3] = 1
    m[3:5, 4:6] = 2
    m[5, 5:7] = 9  # crowd
    m[:, 7] = 0  # void
    return m


def id_map_b():
    """4x5: a car on sky."""
    m = np.full((4, 5), 3, dtype=np.int64)
    m[1:3, 1:4] = 4
    return m


def seg(sid, cat, crowd=0):
    return {"id": sid, "category_id": cat, "iscrowd": crowd, "area": 1, "bbox": [0, 0, 1, 1]}


def write_fixture(root, segments_a=None, id_a=None, image_a_shape=None, image_b_mode="L"):
    """Images (a: RGB png under a .jpg name; b: grey/RGBA), PNGs and the JSON; returns the three paths."""
    img_dir, pan_dir = root / "images", root / "panoptic"
    img_dir.mkdir()
    pan_dir.mkdir()
    id_a = id_map_a() if id_a is None else id_a
    h, w = image_a_shape or id_a.shape
    rgb = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    Image.fromarray(rgb).save(img_dir / "a.png")  # JSON says a.jpg: found by the suffix fallback
    b = id_map_b()
    grey = (b * 40).astype(np.uint8)
    im_b = Image.fromarray(grey, mode="L") if image_b_mode == "L" else Image.fromarray(grey).convert("RGBA")
    im_b.save(img_dir / "b.png")
    write_panoptic_png(pan_dir / "a.png", id_a)
    write_panoptic_png(pan_dir / "b.png", b)
    if segments_a is None:
        segments_a = [seg(BIG, 40), seg(7, 17), seg(1, 5), seg(2, 5), seg(9, 2, crowd=1)]
    data = {
        "images": [
            {"id": 11, "file_name": "a.jpg", "height": h, "width": w},
            {"id": "b", "file_name": "b.png"},
        ],
        "annotations": [
            {"image_id": 11, "file_name": "a.png", "segments_info": segments_a},
            {"image_id": "b", "file_name": "b.png", "segments_info": [seg(3, 40), {"id": 4, "category_id": 2}]},
        ],
        "categories": CATEGORIES,
    }
    json_path = root / "panoptic.json"
    json_path.write_text(json.dumps(data))
    return json_path, img_dir, pan_dir


@pytest.fixture
def dataset(tmp_path):
    return PanopticDataset(*write_fixture(tmp_path))


def test_reads_images_pngs_and_segments(dataset):
    assert len(dataset) == 2
    assert dataset.image_ids == [11, "b"]
    assert [c["id"] for c in dataset.categories] == [5, 17, 2, 40]
    s = dataset[0]
    assert isinstance(s, PanopticSample) and isinstance(dataset, torch.utils.data.Dataset)
    assert s.image_id == 11 and s.file_name == "a.jpg"
    assert s.image.dtype == np.uint8 and s.image.shape == (6, 8, 3)
    assert np.array_equal(s.image.reshape(-1), np.arange(6 * 8 * 3, dtype=np.uint8))
    assert s.id_map.dtype == np.int64 and np.array_equal(s.id_map, id_map_a())
    assert [(g["id"], g["category_id"], g["iscrowd"]) for g in s.segments] == [
        (BIG, 40, 0), (7, 17, 0), (1, 5, 0), (2, 5, 0), (9, 2, 1)
    ]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_rgba_images_become_rgb(tmp_path, mode):
    s = PanopticDataset(*write_fixture(tmp_path, image_b_mode=mode))[1]
    assert s.image.shape == (4, 5, 3) and s.image.dtype == np.uint8
    expected = (id_map_b() * 40).astype(np.uint8)
    for c in range(3):
        assert np.array_equal(s.image[..., c], expected)


def test_missing_area_and_bbox_are_filled_from_pixels(dataset):
    car = next(g for g in dataset[1].segments if g["id"] == 4)
    assert car["iscrowd"] == 0 and car["area"] == 6 and car["bbox"] == [1, 1, 3, 2]


def test_annotation_reads_no_pixels_and_subset_shares_the_json(tmp_path):
    json_path, img_dir, pan_dir = write_fixture(tmp_path)
    ds = PanopticDataset(json_path, img_dir, pan_dir)
    shutil.rmtree(pan_dir)
    shutil.rmtree(img_dir)
    json_path.unlink()
    assert {g["category_id"] for g in ds.annotation(11)} == {40, 17, 5, 2}
    ds.annotation(11)[0]["category_id"] = 999  # a copy: the dataset is unchanged
    assert ds.annotation(11)[0]["category_id"] == 40
    sub = ds.subset(["b"])
    assert len(sub) == 1 and sub.image_ids == ["b"] and sub.categories == ds.categories
    assert sub.annotation("b")[0]["id"] == 3
    with pytest.raises(ValueError, match="unknown image id"):
        ds.subset([12])
    with pytest.raises(ValueError, match="unknown image id"):
        ds.annotation(12)
    with pytest.raises(ValueError, match="image 11: .*not found"):
        ds[0]


def test_image_ids_select_and_order(tmp_path):
    ds = PanopticDataset(*write_fixture(tmp_path), image_ids=["b", 11])
    assert ds.image_ids == ["b", 11] and ds[0].image_id == "b"


def test_unlisted_segment_id_is_an_error(tmp_path):
    segments = [seg(BIG, 40), seg(7, 17), seg(1, 5), seg(9, 2, crowd=1)]  # 2 is in the PNG only
    ds = PanopticDataset(*write_fixture(tmp_path, segments_a=segments))
    with pytest.raises(ValueError, match=r"image 11 .*\[2\] not listed in segments_info"):
        ds[0]
    ds[1]  # the other image is fine


def test_listed_but_absent_segment_id_is_an_error(tmp_path):
    segments = [seg(BIG, 40), seg(7, 17), seg(1, 5), seg(2, 5), seg(9, 2, crowd=1), seg(33, 5)]
    ds = PanopticDataset(*write_fixture(tmp_path, segments_a=segments))
    with pytest.raises(ValueError, match=r"image 11 .*lists id\(s\) \[33\] that do not occur"):
        ds[0]


def test_image_and_png_size_mismatch_is_an_error(tmp_path):
    ds = PanopticDataset(*write_fixture(tmp_path, image_a_shape=(6, 9)))
    with pytest.raises(ValueError, match=r"image 11 .*image is \(6, 9\) but its panoptic PNG is \(6, 8\)"):
        ds[0]


def test_unknown_category_and_duplicate_ids_are_errors(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    segments = [seg(BIG, 40), seg(7, 17), seg(1, 5), seg(2, 77), seg(9, 2, crowd=1)]
    with pytest.raises(ValueError, match="image 11 .*segment 2 has unknown category_id 77"):
        PanopticDataset(*write_fixture(tmp_path / "x", segments_a=segments))
    segments = [seg(BIG, 40), seg(7, 17), seg(1, 5), seg(1, 5)]
    with pytest.raises(ValueError, match="image 11 .*segment id 1 is listed twice"):
        PanopticDataset(*write_fixture(tmp_path / "y", segments_a=segments))


def test_missing_png_and_annotation_without_image_are_errors(tmp_path):
    json_path, img_dir, pan_dir = write_fixture(tmp_path)
    (pan_dir / "b.png").unlink()
    with pytest.raises(ValueError, match="image 'b': panoptic PNG .*b.png not found"):
        PanopticDataset(json_path, img_dir, pan_dir)[1]
    data = json.loads(json_path.read_text())
    data["images"] = data["images"][:1]
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 'b' .*no entry in 'images'"):
        PanopticDataset(json_path, img_dir, pan_dir)


def test_build_targets_maps_labels_and_drops_crowd(dataset):
    s = dataset[0]
    t = build_targets(s, CLASS_OF)
    assert t["labels"].dtype == torch.int64 and t["masks"].dtype == torch.bool
    assert t["labels"].tolist() == [4, 2, 1, 1]  # sky, grass, person, person; the crowd car is gone
    assert t["masks"].shape == (4, 6, 8)
    for label_mask, sid in zip(t["masks"], [BIG, 7, 1, 2]):
        assert torch.equal(label_mask, torch.from_numpy(s.id_map == sid))
    assert not t["masks"].any(0)[torch.from_numpy(s.id_map == 9)].any()  # crowd pixels: no target


def test_build_targets_keeps_only_the_current_step(dataset):
    s = dataset[0]
    t = build_targets(s, {5: 3}, keep={5})  # only persons; other categories need no class
    assert t["labels"].tolist() == [3, 3]
    covered = t["masks"].any(0).numpy()
    assert np.array_equal(covered, np.isin(s.id_map, [1, 2]))  # sky and grass deleted, not background
    empty = build_targets(s, CLASS_OF, keep={2})  # only the crowd car: nothing left
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 6, 8)
    assert empty["masks"].dtype == torch.bool


def test_build_targets_needs_a_class_for_every_kept_category(dataset):
    with pytest.raises(ValueError, match="image 11: category_id 17 has no class"):
        build_targets(dataset[0], {5: 1, 40: 2})
    with pytest.raises(ValueError, match="start at 1"):
        build_targets(dataset[0], {5: 0}, keep={5})
