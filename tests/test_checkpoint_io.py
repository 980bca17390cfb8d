"""Safe, atomic checkpoint I/O: round trips and every refusal path."""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.io.atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from model.io.tensor_files import (
    CheckpointError,
    load_tensor_file,
    load_torch_weights_only,
    save_tensor_file,
    tensor_fingerprint,
)

META = {"class_names": ["person", "car"], "num_classes": 2, "frozen": True, "lr": 1e-4, "extra": None}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 5, generator=g),
        "ids": torch.arange(-3, 7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 2),
    }


def _assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].contiguous().view(-1).view(torch.uint8)), k


def _saved(tmp_path: Path, kind: str = "eclipse-base") -> Path:
    path = tmp_path / "model.safetensors"
    save_tensor_file(path, _tensors(), kind, META)
    return path


def _refused(path: Path, *words: str, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        load_tensor_file(path, **kw)
    msg = str(info.value)
    assert str(path) in msg
    for word in words:
        assert word in msg.lower(), (word, msg)
    return msg


# --------------------------------------------------------------------------- round trip


def test_round_trip_bit_equal(tmp_path):
    path = _saved(tmp_path)
    tensors, meta = load_tensor_file(path, kind="eclipse-base")
    _assert_bit_equal(_tensors(), tensors)
    assert meta == META
    assert tensor_fingerprint(tensors) == tensor_fingerprint(_tensors())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_kind_none_accepts_any_kind(tmp_path):
    path = _saved(tmp_path, kind="eclipse-step")
    tensors, _ = load_tensor_file(path)
    assert set(tensors) == set(_tensors())


def test_non_contiguous_and_shared_storage_save(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),
        "strided": base[:, ::2],
        "full": base,
        "alias": base.view(6, 4),
        "row": base[1],
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    path = tmp_path / "shared.safetensors"
    save_tensor_file(path, tensors, "eclipse-step", {})
    loaded, meta = load_tensor_file(path, kind="eclipse-step")
    assert meta == {}
    for k, t in tensors.items():
        assert torch.equal(loaded[k], t.detach()), k
    # The originals are not modified by saving.
    assert torch.equal(base, torch.arange(24, dtype=torch.float32).reshape(4, 6))


def test_fingerprint_sensitivity():
    t = {"a": torch.arange(6, dtype=torch.int32), "b": torch.ones(2)}
    fp = tensor_fingerprint(t)
    assert fp == tensor_fingerprint({"b": torch.ones(2), "a": torch.arange(6, dtype=torch.int32)})
    assert fp != tensor_fingerprint({"a": t["a"].view(torch.float32), "b": t["b"]})  # same bytes, other dtype
    assert fp != tensor_fingerprint({"a": t["a"].reshape(2, 3), "b": t["b"]})  # same bytes, other shape
    assert fp != tensor_fingerprint({"c": t["a"], "b": t["b"]})  # renamed
    assert fp == tensor_fingerprint({"a": t["a"].reshape(3, 2).t().contiguous().t().reshape(6), "b": t["b"]})


# --------------------------------------------------------------------------- refusals


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.safetensors", "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _refused(path, "empty", "truncated")


def test_truncated_at_several_positions(tmp_path):
    data = _saved(tmp_path).read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    for pos in (3, 8, 8 + header_len // 2, 8 + header_len, 8 + header_len + 5, len(data) // 2 + 7, len(data) - 1):
        assert 0 < pos < len(data)
        cut.write_bytes(data[:pos])
        _refused(cut, "truncated")


def test_flipped_byte_in_data_section(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    for offset in (8 + header_len, (8 + header_len + len(data)) // 2, len(data) - 1):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x01
        path.write_bytes(bytes(corrupt))
        _refused(path, "checksum", "corrupted")


def test_trailing_bytes(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    _refused(path, "corrupted")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    data = random.Random(1234).randbytes(4096)
    assert data[0] != 0x80 and not data.startswith(b"PK")
    path.write_bytes(data)
    _refused(path, "not a safetensors file")


def test_garbage_header_json(tmp_path):
    path = tmp_path / "garbage.safetensors"
    body = b"{not json at all}"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    _refused(path, "not a safetensors file", "json")


def test_torch_save_zip_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.ones(2)}, path)
    _refused(path, "pickled", "weights_only=true", "converter")


def test_legacy_torch_save_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[0] == 0x80
    _refused(path, "pickled")


def test_plain_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    _refused(path, "not written by save_tensor_file")


def test_unknown_format_version(tmp_path):
    path = tmp_path / "future.safetensors"
    t = {"w": torch.ones(2)}
    save_file(
        t,
        str(path),
        metadata={
            "eclipse_format": "eclipse-tensor-file",
            "eclipse_format_version": "99",
            "eclipse_kind": "eclipse-base",
            "eclipse_sha256": tensor_fingerprint(t),
            "eclipse_metadata_json": "{}",
        },
    )
    _refused(path, "unknown checkpoint format version", "99")


def test_wrong_kind(tmp_path):
    path = _saved(tmp_path, kind="eclipse-step")
    msg = _refused(path, "this is a step file", "expected a base model file", kind="eclipse-base")
    assert "eclipse-step" in msg and "eclipse-base" in msg


# --------------------------------------------------------------------------- torch weights-only loading


def _make_marker(path: str) -> None:
    """What a malicious pickle would run; the safe loader must never call it."""
    Path(path).write_text("code ran")


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_make_marker, (self.marker,))


def test_weights_only_round_trip(tmp_path):
    path = tmp_path / "ok.pth"
    state = {"a": torch.randn(3), "b": {"c": torch.arange(4)}, "n": 3, "s": "x"}
    torch.save(state, path)
    loaded = load_torch_weights_only(path)
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"]["c"], state["b"]["c"])
    assert loaded["n"] == 3 and loaded["s"] == "x"


def test_payload_is_live_without_safe_loading(tmp_path):
    """Sanity check that the Evil payload really runs code with a plain unpickler."""
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Evil(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_weights_only_refuses_custom_objects(tmp_path, how):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"w": torch.ones(2), "obj": Evil(marker)}
    if how == "torch_zip":
        torch.save(payload, path)
    elif how == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_torch_weights_only(path)
    msg = str(info.value).lower()
    assert str(path).lower() in msg
    assert "arbitrary python objects" in msg and "safety" in msg
    assert not marker.exists()


def test_weights_only_missing_empty_truncated(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_torch_weights_only(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_torch_weights_only(empty)
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_torch_weights_only(path)


# --------------------------------------------------------------------------- atomic writes


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(b"old contents")

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old contents"
    assert _listing(tmp_path) == ["state.bin"]


def test_atomic_path_failure_without_existing_file(tmp_path):
    path = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.exists()
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_save_tensor_file_failure_keeps_old_file(tmp_path):
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_tensor_file(path, {"w": torch.ones(1)}, "eclipse-base", {"bad": object()})
    with pytest.raises(CheckpointError, match="only tensors"):
        save_tensor_file(path, {"w": [1, 2]}, "eclipse-base", {})
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["model.safetensors"]


def test_atomic_write_helpers(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "c.json", {"b": [1, 2], "a": True})
    atomic_write_bytes(tmp_path / "a.bin", b"new")  # replaces an existing file
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": True, "b": [1, 2]}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "c.json", {"x": float("nan")})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": True, "b": [1, 2]}
    assert _listing(tmp_path) == ["a.bin", "b.txt", "c.json"]
    if os.name == "posix":  # the umask applies, unlike mkstemp's fixed 0600
        umask = os.umask(0)
        os.umask(umask)
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """Regression: a safetensors file whose 8-byte header length begins with byte 0x80 (pickle's PROTO)."""
    path = tmp_path / "x.safetensors"
    for pad in range(300):
        save_tensor_file(path, {"w": torch.ones(3)}, "eclipse-step", {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("could not produce a header length whose first byte is 0x80")
    tensors, meta = load_tensor_file(path, kind="eclipse-step")
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["pad"].startswith("x")


def test_saved_files_get_the_usual_mode_not_private(tmp_path):
    """A step file is meant to be shared: it gets the mode of any new file (0o666 minus the umask)."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = tmp_path / "step.safetensors"
    save_tensor_file(path, {"a": torch.zeros(3)}, "eclipse-step", {})
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
