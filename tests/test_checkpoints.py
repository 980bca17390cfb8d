"""Base and step files: bit-exact round trips, step export/import, and every refusal path."""

import json

import pytest
import torch
from safetensors import safe_open

from model.io.model_files import (
    BASE_FILE,
    MANIFEST_FILE,
    base_fingerprint,
    load_base,
    load_model,
    load_step,
    save_base,
    save_model,
    save_step,
    step_file_name,
)
from model.io.tensor_files import CheckpointError
from model.network.build import build_model
from model.network.config import tiny_config

# Bit-identical results: scripts/run_tests.sh runs these again under other BLAS kernels.
pytestmark = pytest.mark.exact

BASE_NAMES = ["person", "car", "sky", "road"]
BASE_THING = [True, True, False, False]
BASE_COLORS = [(220, 20, 60), (0, 0, 142), (70, 130, 180), (128, 64, 128)]
STEPS = [  # (names, is_thing, colours, prompts)
    (["bicycle", "grass"], [True, False], [(119, 11, 32), (107, 142, 35)], 3),
    (["dog", "wall", "tree"], [True, False, False], None, 2),
]
FINAL_DELTAS = [0.3, 0.6, 0.7]


def _base(seed: int = 0, names=BASE_NAMES):
    torch.manual_seed(seed)
    model = build_model(tiny_config(), names, BASE_THING, BASE_COLORS, backbone_weights="random")
    return model.eval()


@torch.no_grad()
def _add_trained_step(model, t: int, seed: int):
    """Adds step t (1-based) and perturbs its tensors, as training would, so steps are distinguishable."""
    names, is_thing, colors, prompts = STEPS[t - 1]
    group = model.add_step(names, is_thing, prompts, colors=colors)
    g = torch.Generator().manual_seed(seed)
    for p in group.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    return group


def _image(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8, generator=g).numpy()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _assert_same_predictions(a, b, image):
    x = torch.as_tensor(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        ia, ib = a.infer(x), b.infer(x)
    assert torch.equal(ia.logits, ib.logits)
    assert torch.equal(ia.mask_logits, ib.mask_logits)
    pa, pb = a.predict(image), b.predict(image)
    assert torch.equal(pa.panoptic_seg, pb.panoptic_seg)
    assert pa.segments == pb.segments


def _snapshot(model):
    return model.num_steps, list(model.deltas), list(model.classes), _state(model)


def _assert_unchanged(model, snapshot):
    steps, deltas, classes, state = snapshot
    assert model.num_steps == steps
    assert model.deltas == deltas
    assert model.classes == classes
    _assert_same_state(_state(model), state)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """Model A with two steps and retuned deltas, saved with save_model; plus its state after step 1."""
    model = _base(0)
    _add_trained_step(model, 1, seed=11)
    after_step1 = _snapshot(model)
    _add_trained_step(model, 2, seed=22)
    model.set_deltas(FINAL_DELTAS)
    folder = save_model(model, tmp_path_factory.mktemp("two_steps") / "model")
    return model, folder, after_step1


# --------------------------------------------------------------------------- round trips


def test_base_round_trip(tmp_path):
    model = _base(0)
    path = tmp_path / "base.safetensors"
    save_base(model, path)
    loaded = load_base(path).eval()
    _assert_same_state(model.state_dict(), loaded.state_dict())
    assert loaded.config == model.config
    assert loaded.num_steps == 0
    assert [c.name for c in loaded.classes] == BASE_NAMES
    assert [c.is_thing for c in loaded.classes] == BASE_THING
    assert [c.color for c in loaded.classes] == BASE_COLORS
    assert loaded.classes == model.classes
    assert base_fingerprint(loaded) == base_fingerprint(model)
    result = loaded.predict(_image())
    assert result.panoptic_seg.shape == (37, 53)
    _assert_same_predictions(model, loaded, _image())


def test_model_round_trip_with_two_steps(two_steps):
    model, folder, _ = two_steps
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest == {"base": BASE_FILE, "steps": [step_file_name(1), step_file_name(2)]}
    loaded = load_model(folder).eval()
    assert loaded.num_steps == 2
    assert loaded.deltas == model.deltas
    assert loaded.deltas == pytest.approx(FINAL_DELTAS)
    assert loaded.classes == model.classes
    assert [c.name for c in loaded.classes] == BASE_NAMES + STEPS[0][0] + STEPS[1][0]
    assert [g.num_queries for g in loaded.groups] == [g.num_queries for g in model.groups]
    _assert_same_state(model.state_dict(), loaded.state_dict())
    _assert_same_predictions(model, loaded, _image(1))
    # After loading, only the newest step trains, as after add_step.
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("decoder.groups.2.") for n in trainable)


def test_step_files_are_small_and_hold_only_their_step(two_steps):
    model, folder, _ = two_steps
    base_path = folder / BASE_FILE
    with safe_open(str(base_path), framework="pt") as f:
        base_keys = set(f.keys())
    assert not any(k.startswith(("decoder.groups.1.", "decoder.groups.2.")) for k in base_keys)
    assert any(k.startswith("backbone.") for k in base_keys)
    assert "decoder.groups.0.content" in base_keys
    base_size = base_path.stat().st_size
    for t in (1, 2):
        path = folder / step_file_name(t)
        assert path.stat().st_size * 5 < base_size, (path.stat().st_size, base_size)
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            own = model.decoder.groups[t].state_dict()
            assert keys == set(own)
            for k in keys:
                assert torch.equal(f.get_tensor(k), own[k]), k
        assert not any(k.startswith(("backbone", "pixel_decoder", "decoder.")) for k in keys)


# --------------------------------------------------------------------------- export / import of steps


def test_step_exported_from_a_imports_into_b(two_steps, tmp_path):
    model, folder, after_step1 = two_steps
    b = load_base(folder / BASE_FILE).eval()
    for t in (1, 2):
        save_step(model, t, tmp_path / f"s{t}.safetensors")
    group = load_step(b, tmp_path / "s1.safetensors")
    assert b.num_steps == 1 and group is b.groups[1]
    assert [c.name for c in b.classes] == BASE_NAMES + STEPS[0][0]
    load_step(b, tmp_path / "s2.safetensors")
    assert b.deltas == model.deltas
    _assert_same_state(model.state_dict(), b.state_dict())
    _assert_same_predictions(model, b, _image(2))


def test_step_of_another_base_is_refused(two_steps):
    _, folder, _ = two_steps
    other = _base(seed=1)  # same config and classes, different weights
    snap = _snapshot(other)
    with pytest.raises(CheckpointError, match="different base"):
        load_step(other, folder / step_file_name(1))
    _assert_unchanged(other, snap)


def test_steps_out_of_order_or_twice_are_refused(two_steps):
    _, folder, _ = two_steps
    b = load_base(folder / BASE_FILE)
    snap = _snapshot(b)
    with pytest.raises(CheckpointError, match="in order"):
        load_step(b, folder / step_file_name(2))
    _assert_unchanged(b, snap)
    load_step(b, folder / step_file_name(1))
    snap1 = _snapshot(b)
    with pytest.raises(CheckpointError, match="step 1, but the model has 1 step"):
        load_step(b, folder / step_file_name(1))
    _assert_unchanged(b, snap1)
    load_step(b, folder / step_file_name(2))
    with pytest.raises(CheckpointError, match="in order"):
        load_step(b, folder / step_file_name(2))
    assert b.num_steps == 2


def test_step_with_clashing_class_names_is_refused(two_steps):
    _, folder, _ = two_steps
    # Same seed, so the same base tensors, but a base class already named like a step-1 class.
    clashing = _base(0, names=["person", "car", "sky", "bicycle"])
    with torch.no_grad():
        clashing.groups[0].delta.fill_(load_base(folder / BASE_FILE).deltas[0])
    assert base_fingerprint(clashing) == base_fingerprint(load_base(folder / BASE_FILE))
    snap = _snapshot(clashing)
    with pytest.raises(CheckpointError, match="already has classes named \\['bicycle'\\]"):
        load_step(clashing, folder / step_file_name(1))
    _assert_unchanged(clashing, snap)


def test_step_after_a_different_previous_step_is_refused(two_steps):
    _, folder, _ = two_steps
    b = load_base(folder / BASE_FILE)
    _add_trained_step(b, 1, seed=99)  # a different step 1 with the same classes
    snap = _snapshot(b)
    with pytest.raises(CheckpointError, match="different step 1"):
        load_step(b, folder / step_file_name(2))
    _assert_unchanged(b, snap)


def test_files_of_the_wrong_kind_are_refused(two_steps):
    _, folder, _ = two_steps
    with pytest.raises(CheckpointError, match="kind") as info:
        load_base(folder / step_file_name(1))
    assert "eclipse-step" in str(info.value) and "eclipse-base" in str(info.value)
    b = load_base(folder / BASE_FILE)
    snap = _snapshot(b)
    with pytest.raises(CheckpointError, match="kind"):
        load_step(b, folder / BASE_FILE)
    _assert_unchanged(b, snap)


def test_save_step_rejects_missing_steps(two_steps, tmp_path):
    model, _, _ = two_steps
    for t in (0, 3):
        with pytest.raises(ValueError, match="steps 1..2"):
            save_step(model, t, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- damaged files


def _data_start(path) -> int:
    raw = path.read_bytes()
    return 8 + int.from_bytes(raw[:8], "little")


def _corrupt(src, dst):
    raw = bytearray(src.read_bytes())
    start = _data_start(src)
    pos = start + (len(raw) - start) // 2
    raw[pos] ^= 0x40
    dst.write_bytes(bytes(raw))


def _truncate(src, dst):
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) * 2 // 3])


def _pickled(src, dst):
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    torch.save(tensors, dst)


@pytest.mark.parametrize(
    "damage,message",
    [(_corrupt, "checksum mismatch"), (_truncate, "truncated"), (_pickled, "pickled torch checkpoint")],
)
def test_damaged_step_files_are_refused_and_model_unchanged(two_steps, tmp_path, damage, message):
    _, folder, _ = two_steps
    bad = tmp_path / "bad.safetensors"
    damage(folder / step_file_name(1), bad)
    b = load_base(folder / BASE_FILE)
    snap = _snapshot(b)
    with pytest.raises(CheckpointError, match=message):
        load_step(b, bad)
    _assert_unchanged(b, snap)
    # The same model still accepts the intact file afterwards.
    load_step(b, folder / step_file_name(1))
    assert b.num_steps == 1


@pytest.mark.parametrize(
    "damage,message",
    [(_corrupt, "checksum mismatch"), (_truncate, "truncated"), (_pickled, "pickled torch checkpoint")],
)
def test_damaged_base_files_are_refused(two_steps, tmp_path, damage, message):
    _, folder, _ = two_steps
    bad = tmp_path / "bad.safetensors"
    damage(folder / BASE_FILE, bad)
    with pytest.raises(CheckpointError, match=message):
        load_base(bad)


def test_load_model_refuses_a_folder_with_a_damaged_step(two_steps, tmp_path):
    _, folder, _ = two_steps
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    _corrupt(folder / step_file_name(2), copy / step_file_name(2))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(copy)


def test_load_model_needs_a_manifest(tmp_path, two_steps):
    with pytest.raises(CheckpointError, match=MANIFEST_FILE):
        load_model(tmp_path)
    _, folder, _ = two_steps
    copy = tmp_path / "no_manifest"
    copy.mkdir()
    for p in folder.iterdir():
        if p.name != MANIFEST_FILE:
            (copy / p.name).write_bytes(p.read_bytes())
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(copy)
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid manifest"):
        load_model(copy)


# --------------------------------------------------------------------------- undo after loading


def test_remove_last_step_after_loading_restores_previous_state(two_steps):
    model, folder, _ = two_steps
    b = load_base(folder / BASE_FILE)
    load_step(b, folder / step_file_name(1))
    before = _snapshot(b)
    load_step(b, folder / step_file_name(2))
    assert b.deltas == model.deltas
    b.remove_last_step()
    _assert_unchanged(b, before)
    b.remove_last_step()
    assert b.num_steps == 0 and [c.name for c in b.classes] == BASE_NAMES
    _assert_same_state(b.state_dict(), load_base(folder / BASE_FILE).state_dict())


def test_remove_last_step_after_load_model_matches_in_memory_undo(tmp_path):
    """Without delta retuning, undo after a save/load round trip equals undo in memory."""
    a = _base(0)
    _add_trained_step(a, 1, seed=11)
    _add_trained_step(a, 2, seed=22)
    loaded = load_model(save_model(a, tmp_path / "m"))
    a.remove_last_step()
    loaded.remove_last_step()
    assert loaded.deltas == a.deltas
    assert loaded.classes == a.classes
    _assert_same_state(a.state_dict(), loaded.state_dict())


def test_step_files_record_the_deltas_in_effect_after_their_step(tmp_path):
    """Re-tuning deltas after step 2 must not leak into step 1's file: undo after reload == undo in memory."""
    from model.io.model_files import load_model, save_model
    from model.network.build import build_model
    from model.network.config import tiny_config

    torch.manual_seed(3)
    model = build_model(tiny_config(), ["a", "b"], [True, False])
    model.add_step(["c"], [True], 2)
    model.add_step(["d"], [False], 2)
    model.set_deltas([0.3, 0.6, 0.7])
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.deltas == pytest.approx([0.3, 0.6, 0.7])
    model.remove_last_step()
    loaded.remove_last_step()
    assert model.deltas == pytest.approx([0.4, 0.5])
    assert loaded.deltas == pytest.approx(model.deltas)


def test_save_model_changes_the_folder_in_one_go(tmp_path, monkeypatch):
    """After an undo no stale step file is left; a failure while saving leaves the old model intact;
    files of the user's in the folder are kept."""
    import model.io.model_files as files

    model = _base()
    _add_trained_step(model, 1, seed=1)
    _add_trained_step(model, 2, seed=2)
    folder = save_model(model, tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    assert sorted(p.name for p in folder.iterdir()) == ["base.safetensors", "model.json", "notes.txt",
                                                        "step_001.safetensors", "step_002.safetensors"]
    model.remove_last_step()
    save_model(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["base.safetensors", "model.json", "notes.txt",
                                                        "step_001.safetensors"]
    expected = _state(load_model(folder))
    _add_trained_step(model, 2, seed=3)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_step", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, folder)
    monkeypatch.undo()
    again = load_model(folder)
    assert again.num_steps == 1 and _state(again).keys() == expected.keys()
    assert all(torch.equal(_state(again)[k], v) for k, v in expected.items())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left
