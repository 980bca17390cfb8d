"""The annotation project folder: round trips, COCO exports, validation, atomic writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from eclipse_napari.plugin.project import Annotation, Project, ProjectError
from model.io.panoptic_format import read_panoptic_json, read_panoptic_png, rgb2id

RNG = np.random.default_rng(0)


def rgb_image(h=20, w=30):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def things(h=20, w=30):
    """Three instances (ids 1, 2, 7) of one thing class."""
    m = np.zeros((h, w), dtype=np.int32)
    m[2:6, 3:9] = 1
    m[10:15, 4:6] = 2
    m[12:18, 20:28] = 7
    return m


def stuff(h=20, w=30):
    """Two separate regions with different labels: still ONE stuff segment."""
    m = np.zeros((h, w), dtype=np.int32)
    m[0:3, :] = 1
    m[15:20, 0:10] = 2
    return m


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path / "proj")
    assert p.ensure_category("cell", True, (255, 0, 0)) == 1
    assert p.ensure_category("background", False, (0, 0, 255)) == 2
    return p


def test_categories_ids_and_kinds(project):
    assert project.ensure_category("cell", True) == 1  # existing: same id, color kept
    assert project.categories == [
        {"id": 1, "name": "cell", "isthing": 1, "color": [255, 0, 0]},
        {"id": 2, "name": "background", "isthing": 0, "color": [0, 0, 255]},
    ]
    assert project.ensure_category("nucleus", True) == 3
    assert len(project.categories[2]["color"]) == 3
    with pytest.raises(ProjectError, match="already a thing"):
        project.ensure_category("cell", False)
    with pytest.raises(ProjectError, match="empty"):
        project.ensure_category("  ", True)
    with pytest.raises(ProjectError, match="color"):
        project.ensure_category("x", True, (0, 0, 300))
    assert project.ensure_category("cell", True, (1, 2, 3)) == 1
    assert Project(project.root).categories[0]["color"] == [1, 2, 3]


def test_round_trip_through_reopened_project(project):
    rgb, grey = rgb_image(), RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    big = things()
    big[0, 0] = 65535  # the largest storable instance id
    project.save_annotation("b.tif", rgba, big, "cell")
    project.save_annotation("b.tif", rgb, stuff(), "background")
    project.save_annotation("a.tif", grey, things().astype(np.uint16), "cell")

    anns = Project(project.root).annotations()
    assert [(a.image_key, a.class_name) for a in anns] == [
        ("a.tif", "cell"),
        ("b.tif", "background"),
        ("b.tif", "cell"),
    ]
    expected = {
        ("a.tif", "cell"): (grey, things()),
        ("b.tif", "background"): (rgb, stuff()),
        ("b.tif", "cell"): (rgb, big),
    }
    for a in anns:
        assert isinstance(a, Annotation)
        image, instances = expected[(a.image_key, a.class_name)]
        assert a.image.dtype == np.uint8 and a.image.shape == image.shape
        np.testing.assert_array_equal(a.image, image)
        assert a.instances.dtype == np.int32
        np.testing.assert_array_equal(a.instances, instances)

    cells = Project(project.root).examples_for("cell")
    assert [a.image_key for a in cells] == ["a.tif", "b.tif"]
    assert project.examples_for("nothing") == []
    # The mask file is a lossless 16-bit PNG.
    entry = json.loads((project.root / "project.json").read_text())["annotations"][0]
    with Image.open(project.root / entry["file"]) as im:
        assert im.mode == "I;16"


def test_image_written_only_when_changed(project):
    img = rgb_image()
    project.save_annotation("k", img, things(), "cell")
    (path,) = (project.root / "images").iterdir()
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    project.save_annotation("k", img, stuff(), "background")
    assert path.stat().st_mtime_ns == before - 10**9  # untouched
    changed = img.copy()
    changed[0, 0] ^= 1
    project.save_annotation("k", changed, things(), "cell")
    assert path.stat().st_mtime_ns != before - 10**9
    np.testing.assert_array_equal(np.array(Image.open(path)), changed)


def test_panoptic_export(project):
    img = rgb_image()
    project.save_annotation("img 1", img, things(), "cell")
    project.save_annotation("img 2", img, stuff(), "background")
    root = project.root
    data = read_panoptic_json(root / "panoptic.json")
    assert [c["id"] for c in data["categories"]] == [1, 2]
    assert [c["isthing"] for c in data["categories"]] == [1, 0]
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 2 and len(data["annotations"]) == 2
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        assert (im["width"], im["height"]) == (30, 20)
        assert (root / "images" / im["file_name"]).is_file()
        id_map = read_panoptic_png(root / "panoptic" / ann["file_name"])
        with Image.open(root / "panoptic" / ann["file_name"]) as pil:  # decode by hand too
            np.testing.assert_array_equal(rgb2id(np.array(pil)), id_map)
        segs = ann["segments_info"]
        assert len({s["id"] for s in segs}) == len(segs)
        assert set(np.unique(id_map).tolist()) - {0} == {s["id"] for s in segs}
        for s in segs:
            m = id_map == s["id"]
            assert s["area"] == int(m.sum()) and s["bbox"] == bbox(m) and s["iscrowd"] == 0
        if im["image_key"] == "img 1":
            assert [s["category_id"] for s in segs] == [1, 1, 1]  # one segment per instance
            masks = sorted((id_map == s["id"]).tobytes() for s in segs)
            assert masks == sorted((things() == k).tobytes() for k in (1, 2, 7))
        else:
            assert len(segs) == 1 and segs[0]["category_id"] == 2  # stuff: a single segment
            np.testing.assert_array_equal(id_map == segs[0]["id"], stuff() > 0)
            assert (id_map > 0).sum() == (stuff() > 0).sum()


def test_instances_export_rle(project):
    img = rgb_image()
    project.save_annotation("x", img, things(), "cell")
    project.save_annotation("x", img, stuff(), "background")
    data = json.loads((project.root / "instances.json").read_text())
    anns = data["annotations"]
    assert len(anns) == 4 and len({a["id"] for a in anns}) == 4
    by_cat = {1: [], 2: []}
    for a in anns:
        assert a["iscrowd"] == 0 and a["image_id"] == data["images"][0]["id"]
        assert isinstance(a["segmentation"]["counts"], str)
        m = mask_utils.decode(a["segmentation"])
        assert a["area"] == int(m.sum()) and a["bbox"] == [float(v) for v in bbox(m)]
        by_cat[a["category_id"]].append(m.tobytes())
    assert sorted(by_cat[1]) == sorted((things() == k).astype(np.uint8).tobytes() for k in (1, 2, 7))
    assert by_cat[2] == [(stuff() > 0).astype(np.uint8).tobytes()]
    # pycocotools reads the file as a COCO dataset.
    from pycocotools.coco import COCO

    coco = COCO(str(project.root / "instances.json"))
    assert len(coco.getAnnIds()) == 4
    assert coco.annToMask(coco.loadAnns([anns[0]["id"]])[0]).sum() == anns[0]["area"]


def test_overlap_later_saved_wins(project):
    img = rgb_image()
    cells = things()
    bg = np.zeros((20, 30), np.int32)
    bg[0:8, 0:30] = 3  # covers instance 1 entirely
    project.save_annotation("x", img, cells, "cell")
    project.save_annotation("x", img, bg, "background")

    def panoptic():
        data = read_panoptic_json(project.root / "panoptic.json")
        (ann,) = data["annotations"]
        id_map = read_panoptic_png(project.root / "panoptic" / ann["file_name"])
        cat = np.zeros_like(id_map)
        for s in ann["segments_info"]:
            cat[id_map == s["id"]] = s["category_id"]
            assert s["area"] == int((id_map == s["id"]).sum())
        return ann["segments_info"], cat

    segs, cat = panoptic()
    assert (cat[bg > 0] == 2).all() and (cat[(cells > 0) & (bg == 0)] == 1).all()
    assert sorted(s["category_id"] for s in segs) == [1, 1, 2]  # instance 1 is hidden, not listed
    # Re-saving the cells makes them the latest: now they win.
    project.save_annotation("x", img, cells, "cell")
    segs, cat = panoptic()
    assert (cat[cells > 0] == 1).all() and (cat[(bg > 0) & (cells == 0)] == 2).all()
    assert sorted(s["category_id"] for s in segs) == [1, 1, 1, 2]
    # The instances export keeps both classes whole.
    inst = json.loads((project.root / "instances.json").read_text())["annotations"]
    (bg_ann,) = [a for a in inst if a["category_id"] == 2]
    np.testing.assert_array_equal(mask_utils.decode(bg_ann["segmentation"]), (bg > 0).astype(np.uint8))
    assert sum(a["category_id"] == 1 for a in inst) == 3


def test_empty_annotation_removes_entry(project):
    img = rgb_image()
    project.save_annotation("x", img, things(), "cell")
    project.save_annotation("x", img, stuff(), "background")
    project.save_annotation("y", img, things(), "cell")
    mask_file = project.root / json.loads((project.root / "project.json").read_text())["annotations"][0]["file"]
    assert mask_file.is_file()
    project.save_annotation("x", img, np.zeros((20, 30), np.int64), "cell")
    assert not mask_file.exists()
    assert [(a.image_key, a.class_name) for a in Project(project.root).annotations()] == [
        ("x", "background"),
        ("y", "cell"),
    ]
    data = read_panoptic_json(project.root / "panoptic.json")
    assert sorted(s["category_id"] for a in data["annotations"] for s in a["segments_info"]) == [1, 1, 1, 2]
    # Removing the last class on an image drops the image and its panoptic PNG.
    project.remove_annotation("x", "background")
    project.remove_annotation("x", "background")  # no-op
    assert len(list((project.root / "images").iterdir())) == 1
    assert len(list((project.root / "panoptic").iterdir())) == 1
    assert [im["image_key"] for im in read_panoptic_json(project.root / "panoptic.json")["images"]] == ["y"]
    # An all-zero save of a new image stores nothing at all.
    before = snapshot(project.root)
    project.save_annotation("z", img, np.zeros((20, 30), np.int32), "cell")
    assert snapshot(project.root) == before


@pytest.mark.parametrize(
    "key, image, instances, cls, match",
    [
        ("k", rgb_image(), things()[:, :-1], "cell", "image is"),
        ("k", rgb_image(), things()[None], "cell", "2-D"),
        ("k", rgb_image(), things().astype(np.float32), "cell", "integer"),
        ("k", rgb_image(), things() > 0, "cell", "integer"),
        ("k", rgb_image(), -things(), "cell", ">= 0"),
        ("k", rgb_image(), things() * 10000, "cell", "65535"),
        ("k", rgb_image().astype(np.float32), things(), "cell", "uint8"),
        ("k", rgb_image()[..., :2], things(), "cell", "shape"),
        ("k", rgb_image(), things(), "", "empty"),
        ("", rgb_image(), things(), "cell", "empty"),
        ("k", rgb_image(), things(), "dog", "ensure_category"),
        ("old", rgb_image(25, 30), np.ones((25, 30), np.int32), "cell", "20x30"),
    ],
)
def test_bad_inputs_raise_and_write_nothing(project, key, image, instances, cls, match):
    project.save_annotation("old", rgb_image(), stuff(), "background")
    before = snapshot(project.root)
    with pytest.raises(ProjectError, match=match):
        project.save_annotation(key, image, instances, cls)
    assert snapshot(project.root) == before
    assert len(Project(project.root).annotations()) == 1


def test_corrupt_project_json_names_the_file(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "project.json").write_text('{"version": 1, "categories": [')
    with pytest.raises(ProjectError, match=r"project\.json.*JSON"):
        Project(root)
    (root / "project.json").write_text(
        json.dumps(
            {"version": 1, "categories": [], "images": [], "annotations": [{"image": "x", "class": "c", "file": "m"}]}
        )
    )
    with pytest.raises(ProjectError, match=r"project\.json.*annotations\[0\]"):
        Project(root)
    (root / "project.json").write_text(
        json.dumps(
            {
                "version": 1,
                "categories": [{"id": 1, "name": "c", "isthing": 1, "color": [1, 2, 3]}],
                "images": [{"id": 1, "key": "x", "file": "../../etc/passwd", "width": 1, "height": 1, "sha256": ""}],
                "annotations": [],
            }
        )
    )
    with pytest.raises(ProjectError, match="not a path under images"):
        Project(root)


def test_weird_names(tmp_path):
    p = Project(tmp_path / "p")
    names = ["a class/with slash", "ß ünïcödé 細胞", "..", "Cell", "cell"]
    for i, n in enumerate(names):
        p.ensure_category(n, i % 2 == 0)
    keys = ["dir/sub dir/img 1.tif", "../escape", "画像 ✓.png", "KEY", "key"]
    img = rgb_image()
    for k in keys:
        for j, n in enumerate(names):
            p.save_annotation(k, img, things() if j % 2 == 0 else stuff(), n)
    files = [f for f in p.root.rglob("*") if f.is_file()]
    assert all(f.resolve().is_relative_to(p.root.resolve()) for f in files)
    assert all(f.name.isascii() for f in files)
    assert len(list((p.root / "images").iterdir())) == len(keys)
    assert len(list((p.root / "masks").iterdir())) == len(names)
    anns = Project(p.root).annotations()
    assert [(a.image_key, a.class_name) for a in anns] == sorted((k, n) for k in keys for n in names)
    for a in anns:
        np.testing.assert_array_equal(a.instances, things() if names.index(a.class_name) % 2 == 0 else stuff())
    assert {c["name"] for c in read_panoptic_json(p.root / "panoptic.json")["categories"]} == set(names)


def test_failed_write_keeps_previous_project_json(project, monkeypatch):
    img = rgb_image()
    project.save_annotation("x", img, things(), "cell")
    before = (project.root / "project.json").read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "project.json":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        project.save_annotation("y", img, stuff(), "background")
    with pytest.raises(OSError, match="disk full"):
        project.remove_annotation("x", "cell")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (project.root / "project.json").read_bytes() == before
    assert not [f for f in project.root.rglob("*.tmp")]  # temp files cleaned up
    reopened = Project(project.root)
    ((key, cls, inst),) = [(a.image_key, a.class_name, a.instances) for a in reopened.annotations()]
    assert (key, cls) == ("x", "cell")
    np.testing.assert_array_equal(inst, things())
    # The in-memory state did not adopt the failed change either.
    assert [a.image_key for a in project.annotations()] == ["x"]


def test_export_failure_then_recovery(project, monkeypatch):
    """A crash while exporting leaves project.json saved; the next change regenerates every export."""
    img = rgb_image()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "instances.json":
            raise OSError("crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        project.save_annotation("x", img, things(), "cell")
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((project.root / "instances.json").read_text())["annotations"] == []  # stale
    reopened = Project(project.root)
    assert len(reopened.annotations()) == 1
    reopened.save_annotation("y", img, stuff(), "background")
    data = json.loads((project.root / "instances.json").read_text())
    assert len(data["annotations"]) == 4 and len(data["images"]) == 2


def test_panoptic_export_reads_as_dataset(project):
    """The repo's own COCO-panoptic reader accepts the export (run apart: it imports torch)."""
    img = rgb_image()
    project.save_annotation("x", img, things(), "cell")
    project.save_annotation("x", img, stuff(), "background")
    project.save_annotation("y", img[..., 0], things(), "cell")
    code = (
        "import sys; from pathlib import Path; from model.data.coco_panoptic import PanopticDataset\n"
        "r = Path(sys.argv[1]); ds = PanopticDataset(r / 'panoptic.json', r / 'images', r / 'panoptic')\n"
        "print(len(ds), sum(len(ds[i].segments) for i in range(len(ds))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(project.root)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert out.stdout.split() == ["2", "7"]


def test_module_imports_no_gui_or_torch():
    code = "import sys, eclipse_napari.plugin.project; print(sorted({'torch', 'napari', 'qtpy', 'PyQt5'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


def test_painted_background_round_trips_and_can_stand_alone(project):
    image = rgb_image()
    project.ensure_category("cell", True)
    background = np.zeros((20, 30), bool)
    background[:, :2] = True
    background[3, 5] = True  # under instance 1: the instance wins
    project.save_annotation("img", image, things(), "cell", background)
    again = Project(project.root).examples_for("cell")
    assert len(again) == 1 and np.array_equal(again[0].instances, things())
    assert again[0].background is not None and again[0].background.sum() == 40 and not again[0].background[3, 5]
    entry = json.loads((project.root / "project.json").read_text())["annotations"][0]
    assert entry["background"].endswith(".background.png") and (project.root / entry["background"]).is_file()
    # COCO exports hold only the instances.
    assert len(json.loads((project.root / "instances.json").read_text())["annotations"]) == 3
    # Background alone (an image without the class) is kept; removing the background drops its file.
    project.save_annotation("empty", rgb_image(), np.zeros((20, 30), np.int32), "cell", background)
    assert {a.image_key for a in project.examples_for("cell")} == {"img", "empty"}
    project.save_annotation("img", image, things(), "cell", None)
    assert not (project.root / entry["background"]).exists()
    assert Project(project.root).examples_for("cell")[1].background is None
    with pytest.raises(ProjectError, match="background mask is"):
        project.save_annotation("img", image, things(), "cell", np.zeros((5, 5), bool))


def test_the_complete_mark_round_trips_and_old_projects_keep_their_meaning(project, tmp_path):
    """An image marked complete (every instance painted) keeps the mark through a reopen, even with
    nothing painted (an example without the class); entries written before the mark existed read as
    complete where no background was painted, as they were meant then."""
    image = np.full((20, 30), 100, np.uint8)
    project.ensure_category("cell", True)
    cells = np.zeros((20, 30), np.int32)
    cells[2:6, 2:6] = 1
    project.save_annotation("a", image, cells, "cell", complete=True)
    project.save_annotation("b", image + 1, cells, "cell")
    project.save_annotation("c", image + 2, np.zeros_like(cells), "cell", complete=True)
    again = Project(project.root)
    marks = {a.image_key: a.complete for a in again.examples_for("cell")}
    assert marks == {"a": True, "b": False, "c": True}
    strokes = np.zeros((20, 30), bool)
    strokes[10:12] = True
    project.save_annotation("d", image + 3, cells, "cell", strokes)
    data = json.loads((project.root / "project.json").read_text())
    for e in data["annotations"]:
        del e["complete"]  # as the previous version wrote it
    (project.root / "project.json").write_text(json.dumps(data))
    legacy = {a.image_key: a.complete for a in Project(project.root).annotations()}
    assert legacy == {"a": True, "b": True, "c": True, "d": False}
    data["annotations"][0]["complete"] = "yes"
    (project.root / "project.json").write_text(json.dumps(data))
    with pytest.raises(ProjectError, match="complete must be true or false"):
        Project(project.root)
