"""pq_compute over COCO-panoptic folders, the file format helpers, and the evaluate command line."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from eclipse_napari.cli.evaluate import main
from model.evaluation.pq_compute import pq_compute
from model.io.panoptic_format import (
    id2rgb,
    read_panoptic_json,
    read_panoptic_png,
    rgb2id,
    write_panoptic_json,
    write_panoptic_png,
)

EXACT = dict(rel=1e-12, abs=1e-12)
# Gapped COCO-style ids, listed in the gt json in this order.
CATEGORIES = [
    {"id": 5, "name": "person", "isthing": 1},
    {"id": 17, "name": "grass", "isthing": 0},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 40, "name": "sky", "isthing": 0},
]
BIG = 0x030201  # a segment id that uses all three PNG channels


def seg(sid, cat, crowd=0):
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def make_dataset(root):
    """Two images. Image 1: person perfect, grass IoU 12/16, a sky FP. Image 2: car FN, sky IoU 4/5."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt1 = np.zeros((4, 8), dtype=np.int64)
    gt1[:, :4], gt1[:, 4:] = 1, BIG
    pred1 = np.where(gt1 == 1, 10, 20)
    pred1[3, 4:] = 12
    gt2 = np.array([[1, 1, 2, 2, 2, 2]] * 2)
    pred2 = np.array([[0, 9, 9, 9, 9, 9]] * 2)
    for d, (a, b) in ((gt_dir, (gt1, gt2)), (pred_dir, (pred1, pred2))):
        write_panoptic_png(d / "a.png", a)
        write_panoptic_png(d / "b.png", b)
    gt_json = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "categories": CATEGORIES,
        "annotations": [
            {"image_id": 1, "file_name": "a.png", "segments_info": [seg(1, 5), seg(BIG, 17)]},
            {"image_id": 2, "file_name": "b.png", "segments_info": [seg(1, 2), seg(2, 40)]},
        ],
    }
    pred_json = {
        "annotations": [
            {"image_id": 2, "file_name": "b.png", "segments_info": [seg(9, 40)]},
            {"image_id": 1, "file_name": "a.png", "segments_info": [seg(10, 5), seg(20, 17), seg(12, 40)]},
        ]
    }
    write_panoptic_json(root / "gt.json", gt_json)
    write_panoptic_json(root / "pred.json", pred_json)
    return root / "gt.json", gt_dir, root / "pred.json", pred_dir


def test_rgb_id_round_trip_and_png(tmp_path):
    ids = np.array([[0, 1, 255], [256, BIG, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [1, 2, 3]
    assert rgb2id(rgb).tolist() == ids.tolist()
    write_panoptic_png(tmp_path / "x.png", ids)
    assert read_panoptic_png(tmp_path / "x.png").tolist() == ids.tolist()
    assert os.listdir(tmp_path) == ["x.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="ids must lie in"):
        id2rgb(np.array([[256**3]]))
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8), mode="L").save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="must be mode RGB, got mode 'L'"):
        read_panoptic_png(tmp_path / "grey.png")


def test_json_round_trip_and_validation(tmp_path):
    data = {"annotations": [{"image_id": np.int64(3), "file_name": "c.png", "segments_info": []}]}
    write_panoptic_json(tmp_path / "p.json", data)
    assert read_panoptic_json(tmp_path / "p.json")["annotations"][0]["image_id"] == 3
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] has no 'file_name'"):
        read_panoptic_json(tmp_path / "bad.json")


def test_pq_compute_over_folders(tmp_path):
    paths = make_dataset(tmp_path)
    r = pq_compute(*paths, groups={"old": [5, 17], "new": [2, 40]})
    assert r["num_images"] == 2
    pc = r["per_class"]
    assert list(pc) == ["5", "17", "2", "40"]
    assert pc["5"] == {"name": "person", "isthing": True, "pq": 1.0, "sq": 1.0, "rq": 1.0,
                       "tp": 1, "fp": 0, "fn": 0, "iou_sum": 1.0}
    assert pc["17"]["pq"] == pytest.approx(0.75, **EXACT)
    assert (pc["2"]["tp"], pc["2"]["fp"], pc["2"]["fn"], pc["2"]["pq"]) == (0, 0, 1, 0.0)
    assert (pc["40"]["tp"], pc["40"]["fp"], pc["40"]["fn"]) == (1, 1, 0)
    assert pc["40"]["pq"] == pytest.approx(0.8 / 1.5, **EXACT)
    s = r["summary"]
    assert list(s) == ["All", "Things", "Stuff", "old", "new"]
    assert s["All"]["pq"] == pytest.approx((1 + 0.75 + 0.8 / 1.5) / 4, **EXACT)
    assert s["Things"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2}
    assert s["Stuff"]["rq"] == pytest.approx((1 + 2 / 3) / 2, **EXACT)
    assert s["old"] == {"pq": 0.875, "sq": 0.875, "rq": 1.0, "n": 2}
    assert s["new"]["sq"] == pytest.approx(0.4, **EXACT)
    json.dumps(r, allow_nan=False)  # JSON-serialisable as is


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    gt_json, gt_dir, pred_json, pred_dir = make_dataset(tmp_path)
    out = tmp_path / "results.json"
    args = ["--gt-json", str(gt_json), "--gt-folder", str(gt_dir), "--pred-json", str(pred_json),
            "--pred-folder", str(pred_dir)]
    assert main(args + ["--num-base", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # All: PQ 57.08, SQ 63.75, RQ 66.67; old = person, grass (gt json order); new = car, sky.
    assert lines[:7] == [
        "          |    PQ     SQ     RQ     N",
        "--------------------------------------",
        "All       |  57.1   63.7   66.7     4",
        "Things    |  50.0   50.0   50.0     2",
        "Stuff     |  64.2   77.5   83.3     2",
        "old       |  87.5   87.5  100.0     2",
        "new       |  26.7   40.0   33.3     2",
    ]
    saved = json.loads(out.read_text())
    assert saved["groups"] == {"old": [5, 17], "new": [2, 40]}
    assert saved["summary"]["old"] == {"pq": 0.875, "sq": 0.875, "rq": 1.0, "n": 2}
    assert saved["per_class"]["40"]["fp"] == 1

    # A learning order that puts car and sky first swaps the groups.
    assert main(args + ["--num-base", "2", "--class-order", "2,40,5,17"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[5:7] == ["old       |  26.7   40.0   33.3     2", "new       |  87.5   87.5  100.0     2"]

    assert main(args + ["--num-base", "2", "--class-order", "2,40,5"]) == 1
    assert "missing [17]" in capsys.readouterr().err


def _rewrite(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda d: d["annotations"].pop(1), ValueError, "no prediction for the gt image with id 1"),
        (lambda d: d["annotations"][1]["segments_info"][0].update(category_id=99), ValueError,
         "image id 1 prediction: segment 10 has unknown category_id 99"),
        (lambda d: d["annotations"][1]["segments_info"].append(seg(77, 5)), ValueError,
         r"image id 1 prediction: segment ids \[77\] are listed but have no pixels"),
        (lambda d: d["annotations"][1]["segments_info"].pop(2), ValueError,
         r"image id 1 prediction: pixels have segment ids \[12\], which are not in the segment list"),
        (lambda d: d["annotations"][0].update(file_name="gone.png"), FileNotFoundError,
         "prediction PNG for image id 2 not found"),
    ],
)
def test_bad_prediction_raises_clear_error(tmp_path, capsys, edit, error, message):
    gt_json, gt_dir, pred_json, pred_dir = make_dataset(tmp_path)
    _rewrite(pred_json, edit)
    with pytest.raises(error, match=message):
        pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    args = ["--gt-json", str(gt_json), "--gt-folder", str(gt_dir), "--pred-json", str(pred_json),
            "--pred-folder", str(pred_dir)]
    assert main(args) == 1
    assert message.replace("\\", "") in capsys.readouterr().err
