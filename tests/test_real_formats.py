"""The benchmark end to end on the real datasets' file formats: a tiny ADEChallengeData2016 folder (the
release's images/, annotations/ and annotations_instance/ layout and encodings) converted with
convert_ade20k, and a tiny COCO panoptic 2017 folder; then one step of ade-panoptic, ade-semantic (mIoU)
and coco-panoptic with a tiny model, checking the table and the JSON."""

import json

import numpy as np
import pytest
from PIL import Image

from eclipse_napari.cli import convert_ade20k
from eclipse_napari.cli.bench import main as bench
from model.data.ade20k import ade20k_instance_mapping
from model.data.categories import coco_panoptic_categories
from model.io.panoptic_format import id2rgb

pytestmark = pytest.mark.slow
SIZE = 48
TINY = ["--train-base", "--backbone", "tiny", "--base-iterations", "2", "--iterations", "2", "--batch-size", "2",
        "--threads", "2", "--max-eval-images", "2", "--max-steps", "1"]

# ADE20K 150-class ids: stuff wall 1, floor 4, poster 101 (a step-1 class of 100-x); things person 13,
# van 103 (step 1). The instance PNG's R channel holds the instance category the ADE mapping reads.
WALL, FLOOR, POSTER, PERSON, VAN = 1, 4, 101, 13, 103


def _instance_code(ade_id: int) -> int:
    return min(r for r, c in ade20k_instance_mapping().items() if c == ade_id)


def _ade_sample(k: int):
    """Semantic and instance PNG contents of image k: wall over floor, a person, and from k = 1 on a van
    and a poster (the new classes)."""
    rng = np.random.default_rng(k)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    sem = np.full((SIZE, SIZE), WALL, np.uint8)
    sem[SIZE // 2:] = FLOOR
    sem[:3, :3] = 0  # void
    ins = np.zeros((SIZE, SIZE, 3), np.uint8)
    o = k % 5
    sem[10 + o:30 + o, 4:12] = PERSON
    ins[10 + o:30 + o, 4:12] = (_instance_code(PERSON), 1, 0)
    if k >= 1:
        sem[28:40, 20 + o:40 + o] = VAN
        ins[28:40, 20 + o:40 + o] = (_instance_code(VAN), 2, 0)
        sem[4:14, 30:44] = POSTER
    if k >= 2:
        sem[41:46, 2:8] = VAN  # van pixels without an instance id: void in the panoptic conversion
    image[sem == VAN] = (200, 40, 40)
    image[sem == POSTER] = (40, 200, 200)
    return image, sem, ins


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    """ADEChallengeData2016 as released, converted in place (its images/ stay where they are)."""
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    for split, prefix, count in (("training", "ADE_train", 6), ("validation", "ADE_val", 2)):
        for sub in ("images", "annotations", "annotations_instance"):
            (root / sub / split).mkdir(parents=True)
        for k in range(count):
            image, sem, ins = _ade_sample(k if split == "training" else k + 1)
            stem = f"{prefix}_{k + 1:08d}"
            Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(sem, mode="L").save(root / "annotations" / split / f"{stem}.png")
            Image.fromarray(ins, mode="RGB").save(root / "annotations_instance" / split / f"{stem}.png")
    assert convert_ade20k.main([str(root), "--out", str(root)]) == 0
    return root


def _run(args, out, capsys) -> tuple[dict, str]:
    assert bench([*args, "--out", str(out), *TINY]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    return json.loads((out / "results.json").read_text()), printed


def test_ade_panoptic_one_step_from_the_release_layout(ade_root, tmp_path, capsys):
    data, printed = _run(["--scenario", "ade-panoptic-100-50", "--data-root", str(ade_root),
                          "--methods", "eclipse", "joint"], tmp_path / "run", capsys)
    assert data["scenario"] == "ade-panoptic-100-50" and data["metric"] == "pq" and data["task"] == "panoptic"
    assert data["settings"]["augment"]["crop_size"] == [640, 640]  # the paper's ADE panoptic augmentation
    assert data["settings"]["loss"]["num_points"] == 12544
    assert data["test_size"] == [640, 2560]  # evaluated at short side 640, as published
    eclipse = data["methods"]["eclipse"][-1]
    assert eclipse["step"] == 1 and set(eclipse["pq"]) >= {"old", "new", "all"} and not eclipse["miou"]
    assert "PQ old" in printed and "ECLIPSE (delta auto)" in printed and "joint" in printed
    assert (tmp_path / "run" / "pq_per_step.png").exists()


def test_ade_semantic_reports_miou_of_semantic_inference(ade_root, tmp_path, capsys):
    data, printed = _run(["--scenario", "ade-semantic-100-50", "--data-root", str(ade_root),
                          "--methods", "eclipse", "--delta", "paper"], tmp_path / "run", capsys)
    assert data["metric"] == "miou" and data["task"] == "semantic"
    assert data["settings"]["augment"]["crop_size"] == [512, 512]
    eclipse = data["methods"]["eclipse"][-1]
    assert not eclipse["pq"] and set(eclipse["miou"]) >= {"old", "new", "all"}
    assert all(0.0 <= (eclipse["miou"][g]["miou"] or 0.0) <= 1.0 for g in ("old", "new", "all"))
    assert data["base"]["miou"]["old"]["n"] >= 1  # wall, floor and person are in the validation images
    assert "mIoU old" in printed and "PQ" not in printed.split("mIoU old")[1].splitlines()[0]
    assert eclipse["deltas"] == pytest.approx([0.0, -0.1])  # the published values of ade-semantic-100-50
    assert (tmp_path / "run" / "miou_per_step.png").exists()


def test_ade_semantic_ground_truth_is_the_releases_semantic_annotation(ade_root):
    """mIoU is scored against annotations/validation/*.png, as published, not against the panoptic
    conversion (where thing pixels without an instance id are void)."""
    from eclipse_napari.cli.bench_setup import open_datasets, semantic_folder
    from model.data.labelled import labelled_images
    from model.data.scenarios import get_scenario

    scenario = get_scenario("ade-semantic-100-50")
    folder = semantic_folder(scenario, ade_root)
    assert folder == ade_root / "annotations" / "validation"
    assert semantic_folder(get_scenario("ade-panoptic-100-50"), ade_root) is None
    _, val = open_datasets(scenario, ade_root)
    items = list(labelled_images(val, scenario, semantic_folder=folder))
    second = items[1]  # sample k = 2
    van = scenario.learning_id(VAN)
    assert (second.gt_semantic[41:46, 2:8] == van).all() and (second.gt_ids[41:46, 2:8] == 0).all()
    assert (second.gt_semantic[:3, :3] == 0).all() and (second.gt_semantic[SIZE - 1] == scenario.learning_id(FLOOR)).all()


# COCO panoptic file ids: things person 1, car 3, stop sign 13 (step 1 of 83-x); stuff road 149 (step 1).
PERSON_C, CAR_C, STOP_C, ROAD_C = 1, 3, 13, 149


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """The official panoptic 2017 layout: annotations/panoptic_{split}2017.json and PNG folders,
    images in {split}2017/."""
    root = tmp_path_factory.mktemp("coco")
    categories = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in coco_panoptic_categories()]
    for split, count in (("train", 6), ("val", 2)):
        (root / f"{split}2017").mkdir()
        (root / "annotations" / f"panoptic_{split}2017").mkdir(parents=True)
        images, annotations = [], []
        for k in range(count):
            rng = np.random.default_rng(100 + k)
            image = rng.integers(0, 255, (SIZE, SIZE + 8, 3), dtype=np.uint8)
            ids = np.zeros((SIZE, SIZE + 8), np.int64)
            segments = [(1, ROAD_C, (slice(SIZE // 2, SIZE), slice(0, SIZE + 8))),
                        (2, PERSON_C, (slice(4, 20), slice(4 + k, 14 + k))),
                        (3, CAR_C, (slice(30, 40), slice(20, 40)))]
            if k % 2 or split == "val":
                segments.append((4, STOP_C, (slice(5, 15), slice(30, 40))))
            info = []
            for seg_id, cat, where in segments:
                ids[where] = seg_id
            for seg_id, cat, _ in segments:
                ys, xs = np.nonzero(ids == seg_id)
                info.append({"id": seg_id, "category_id": cat, "iscrowd": 0, "area": int(len(ys)),
                             "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
            image_id = 1000 * (split == "val") + k + 1
            name = f"{image_id:012d}"
            Image.fromarray(image).save(root / f"{split}2017" / f"{name}.jpg", quality=95)
            Image.fromarray(id2rgb(ids)).save(root / "annotations" / f"panoptic_{split}2017" / f"{name}.png")
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": SIZE, "width": SIZE + 8})
            annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": info})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))
    return root


def test_coco_panoptic_one_step_from_the_release_layout(coco_root, tmp_path, capsys):
    data, printed = _run(["--scenario", "coco-panoptic-83-5", "--data-root", str(coco_root),
                          "--methods", "eclipse"], tmp_path / "run", capsys)
    assert data["scenario"] == "coco-panoptic-83-5-first1" and data["num_steps"] == 1
    assert data["settings"]["augment"]["short_sides"] == [800] and data["settings"]["augment"]["max_size"] == 1333
    eclipse = data["methods"]["eclipse"][-1]
    assert eclipse["step"] == 1 and eclipse["trainable_parameters"] > 0
    assert set(eclipse["pq"]) >= {"old", "new", "all"} and len(eclipse["deltas"]) == 2
    assert "coco-panoptic-83-5-first1" in printed and "PQ new" in printed
