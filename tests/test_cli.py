"""The convert and predict command lines (eclipse_napari.convert, eclipse_napari.predict)."""

import json

import numpy as np
import pytest
import skimage.io
import tifffile
import torch
from PIL import Image
from reference_weights import official_state_dict

from eclipse_napari.cli import convert as convert_cli
from eclipse_napari.cli import predict as predict_cli
from model.data.categories import class_list
from model.io.model_files import load_model, save_model
from model.io.official_checkpoint import convert_official
from model.io.panoptic_format import rgb2id
from model.network.build import build_model
from model.network.config import tiny_config


class NotATensor:
    """Pickled into a checkpoint: the weights-only loader must refuse it."""

    def __init__(self):
        self.payload = "anything"


# --------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def step1_checkpoint(reference_dir, tmp_path_factory):
    state = official_state_dict(reference_dir / "manifest_step1.json")
    path = tmp_path_factory.mktemp("official") / "model_final.pth"
    torch.save({"model": state, "iteration": 5}, path)
    return path, state


def test_convert_step1(step1_checkpoint, tmp_path, capsys):
    path, state = step1_checkpoint
    out = tmp_path / "converted"
    assert convert_cli.main([str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resnet50" in printed and "step 1: 10 classes" in printed and "10 prompts" in printed
    assert "base.safetensors" in printed and "step_001.safetensors" in printed and "model.json" in printed
    assert sorted(p.name for p in out.iterdir()) == ["base.safetensors", "model.json", "step_001.safetensors"]

    model = load_model(out)
    names = [c.name for c in class_list("ade20k")]
    assert model.num_steps == 1 and model.num_classes == 110
    assert [c.name for c in model.classes] == names[:110]
    assert model.deltas == pytest.approx([0.4, 0.5])
    direct = convert_official(state, class_list("ade20k")).state_dict()
    ours = model.state_dict()
    assert set(ours) == set(direct)
    assert all(torch.equal(ours[k], direct[k]) for k in direct)


def test_convert_with_base_checkpoint_and_deltas(step1_checkpoint, reference_dir, tmp_path, capsys):
    path, state = step1_checkpoint
    base_state = official_state_dict(reference_dir / "manifest_step0.json")
    base_path = tmp_path / "step0.pth"
    torch.save({"model": base_state}, base_path)
    out = tmp_path / "converted"
    argv = [str(path), "--out", str(out), "--base-checkpoint", str(base_path), "--deltas", "0.3,0.6"]
    assert convert_cli.main(argv) == 0
    assert "deltas: 0.3, 0.6" in capsys.readouterr().out
    model = load_model(out)
    assert model.deltas == pytest.approx([0.3, 0.6])
    direct = convert_official(state, class_list("ade20k"), [0.3, 0.6], base_state=base_state).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in direct.items())
    model.remove_last_step()
    assert model.deltas == pytest.approx([0.3])

    # A step checkpoint is not a base checkpoint.
    assert convert_cli.main([str(path), "--out", str(tmp_path / "x"), "--base-checkpoint", str(path)]) == 1
    assert "step-0" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_convert_refuses_existing_folder_and_bad_deltas(step1_checkpoint, tmp_path, capsys):
    path, _ = step1_checkpoint
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert convert_cli.main([str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    fresh = tmp_path / "fresh"
    assert convert_cli.main([str(path), "--out", str(fresh), "--deltas", "0.4,0.5,0.6"]) == 1
    assert "3" in capsys.readouterr().err and not fresh.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_convert_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": NotATensor()}, path)
    out = tmp_path / "out"
    assert convert_cli.main([str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "refused" in err and str(path) in err
    assert not out.exists()


def test_convert_missing_file(tmp_path, capsys):
    assert convert_cli.main([str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")]) == 1
    assert "nope.pth" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    torch.manual_seed(0)
    names = ["wall", "person", "car", "sky"]
    model = build_model(tiny_config(), names, [False, True, True, False])
    with torch.no_grad():
        # Make every query predict a real class, so that the images get segments.
        model.groups[0].no_object_head.layers[2].bias.fill_(-20.0)
    folder = tmp_path_factory.mktemp("tiny_model")
    save_model(model, folder)
    return folder, load_model(folder)


def _images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "photo.png"
    skimage.io.imsave(rgb, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), check_contrast=False)
    grey = tmp_path / "scan.png"
    skimage.io.imsave(grey, (rng.integers(0, 4096, (33, 47)) * 3).astype(np.uint16), check_contrast=False)
    return [rgb, grey]


def test_predict_writes_coco_panoptic(tiny_model_folder, tmp_path, capsys):
    folder, model = tiny_model_folder
    images = _images(tmp_path)
    out = tmp_path / "pred"
    argv = ["--model", str(folder), *map(str, images), "--out", str(out), "--threads", "1"]
    assert predict_cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("segments" in line for line in lines) == 2

    data = json.loads((out / "predictions.json").read_text())
    assert data["categories"] == [
        {"id": i, "name": c.name, "isthing": int(c.is_thing), "color": list(c.color)}
        for i, c in enumerate(model.classes, start=1)
    ]
    assert [a["image_id"] for a in data["annotations"]] == ["photo", "scan"]
    total_segments = 0
    for ann, image, shape in zip(data["annotations"], images, [(40, 56), (33, 47)]):
        assert ann["file_name"] == image.stem + ".png"
        with Image.open(out / "panoptic" / ann["file_name"]) as im:
            assert im.mode == "RGB"
            ids = rgb2id(np.array(im))
        assert ids.shape == shape
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments)
        for sid, s in segments.items():
            ys, xs = np.nonzero(ids == sid)
            assert s["area"] == len(ys)
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert 1 <= s["category_id"] <= model.num_classes
            assert s["isthing"] == int(model.classes[s["category_id"] - 1].is_thing)
            assert 0.0 <= s["score"] <= 1.0
        total_segments += len(segments)
        with Image.open(out / "overlay" / ann["file_name"]) as im:
            assert im.size == (shape[1], shape[0]) and im.mode == "RGB"
    assert total_segments > 0

    # The PNG is exactly what the model predicts on the rescaled image.
    grey = predict_cli.load_image(images[1])
    assert grey.dtype == np.uint8 and grey.shape == (33, 47, 3) and grey.min() == 0 and grey.max() == 255
    expected = model.eval().predict(grey).panoptic_seg.numpy()
    with Image.open(out / "panoptic" / "scan.png") as im:
        assert np.array_equal(rgb2id(np.array(im)), expected)


@pytest.mark.parametrize("kind", ["npy", "tif", "missing", "garbage"])
def test_predict_refuses_bad_images(tiny_model_folder, tmp_path, capsys, kind):
    folder, _ = tiny_model_folder
    good = _images(tmp_path)[0]
    bad = tmp_path / f"bad_{kind}.{ {'npy': 'npy', 'tif': 'tif'}.get(kind, 'png') }"
    volume = np.zeros((2, 3, 16, 16), dtype=np.uint8)
    if kind == "npy":
        np.save(bad, volume)
    elif kind == "tif":
        tifffile.imwrite(bad, volume, photometric="minisblack")
    elif kind == "garbage":
        bad.write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert predict_cli.main(["--model", str(folder), str(good), str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and bad.name in err
    assert not out.exists()  # refused before anything was written

