"""Safe checkpoint input/output (written atomically through model.io.atomic).

Tensors are stored as safetensors (no pickle, so loading never runs code). Our own
metadata (format name + version, a `kind` such as "eclipse-base" or "eclipse-step",
caller metadata as JSON, and a SHA-256 over the tensor contents) lives in the
safetensors string metadata, because safetensors itself does not checksum its data.
Official `.pth` files go through `load_torch_weights_only`, which only accepts
plain tensors and containers.

Every write goes to a temporary file in the destination folder, is fsynced and then
moved into place with `os.replace`, so readers never see a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write

FORMAT_NAME = "eclipse-tensor-file"
# Bump when the layout of the metadata or the fingerprint scheme changes.
FORMAT_VERSION = 1

_KEY_FORMAT = "eclipse_format"
_KEY_VERSION = "eclipse_format_version"
_KEY_KIND = "eclipse_kind"
_KEY_SHA256 = "eclipse_sha256"
_KEY_METADATA = "eclipse_metadata_json"

# safetensors refuses headers above 100 MB; anything bigger is garbage, not a header.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80

# Human-readable names for known kinds; the lead may extend this.
KIND_LABELS = {"eclipse-base": "base model", "eclipse-step": "step"}


class CheckpointError(ValueError):
    """A checkpoint file was refused; the message names the file, the problem and the fix."""


# --------------------------------------------------------------------------- fingerprint


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a dense tensor, independent of device and strides."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex over sorted names, each tensor's dtype, shape and raw bytes.

    Each record is length-prefixed so that no two different dicts hash alike by
    shifting bytes between name, header and data.
    """
    h = hashlib.sha256()
    h.update(f"{FORMAT_NAME}/v{FORMAT_VERSION}\n".encode())
    for name in sorted(tensors):
        t = tensors[name]
        head = json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8")
        data = _tensor_bytes(t)
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        h.update(data.nbytes.to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------- saving


def _prepare_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each with its own storage (safetensors refuses sharing)."""
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path}: tensors must be a dict of name -> torch.Tensor, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a str -> torch.Tensor pair; only tensors can be saved")
        if t.layout != torch.strided:
            raise CheckpointError(f"{path}: tensor {name!r} has layout {t.layout}; convert it to a dense tensor first")
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        shared = t.numel() > 0 and ptr in seen_storages
        if not t.is_contiguous() or shared or t.untyped_storage().nbytes() != t.nbytes:
            t = t.contiguous().clone()
        if t.numel() > 0:
            seen_storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _encode_metadata(path: Path, kind: str, metadata: dict, fingerprint: str) -> dict[str, str]:
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"{path}: kind must be a non-empty string such as 'eclipse-base'")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    try:
        meta_json = json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: metadata is not JSON-serialisable ({exc}); use only str, numbers, bools, None, lists and dicts"
        ) from exc
    return {
        _KEY_FORMAT: FORMAT_NAME,
        _KEY_VERSION: str(FORMAT_VERSION),
        _KEY_KIND: kind,
        _KEY_SHA256: fingerprint,
        _KEY_METADATA: meta_json,
    }


def save_tensor_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, metadata: dict) -> None:
    """Atomically write `tensors` as safetensors with kind, JSON metadata and a content SHA-256.

    Metadata round-trips through JSON (tuples come back as lists, dict keys as str).
    """
    path = Path(path)
    prepared = _prepare_tensors(path, tensors)
    header = _encode_metadata(path, kind, metadata, tensor_fingerprint(prepared))
    atomic_write(path, lambda tmp: save_file(prepared, str(tmp), metadata=header))


# --------------------------------------------------------------------------- loading


def _kind_label(kind: str) -> str:
    return f"{KIND_LABELS.get(kind, kind)} file (kind '{kind}')"


def _check_file_exists(path: Path) -> int:
    """Return the file size; refuse missing paths and directories."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a regular file; pass the checkpoint file itself")
    return path.stat().st_size


def _refuse_pickle(path: Path, prefix: bytes) -> None:
    """Pickled torch checkpoints start with a zip header (new format) or a pickle PROTO opcode."""
    if prefix.startswith(_ZIP_MAGIC) or (prefix and prefix[0] == _PICKLE_PROTO):
        raise CheckpointError(
            f"{path}: this is a pickled torch checkpoint (torch.save / .pth), not a safetensors file; "
            "pickled checkpoints are not loaded by load_tensor_file. Convert official .pth weights "
            "with the converter (which uses torch.load(weights_only=True)) first."
        )


def _read_header(path: Path, size: int) -> dict:
    """Parse and size-check the safetensors header so truncation and garbage get clear messages."""
    garbage = f"{path}: not a safetensors file (unreadable header: {{}}); the file is corrupted or of another format"
    truncated = f"{path}: the file is truncated ({{}}); it was probably cut off while writing or copying, re-save or re-copy it"
    with open(path, "rb") as f:
        prefix = f.read(9)
        if size == 0:
            raise CheckpointError(f"{path}: the file is empty (0 bytes); it is truncated, re-save or re-copy it")
        # A safetensors header length may well start with byte 0x80; its JSON header always starts with "{".
        if prefix[8:9] != b"{":
            _refuse_pickle(path, prefix)
        prefix = prefix[:8]
        if size < 8:
            raise CheckpointError(truncated.format(f"only {size} bytes, shorter than the 8-byte header length"))
        n = int.from_bytes(prefix, "little")
        if n == 0 or n > _MAX_HEADER_BYTES:
            raise CheckpointError(garbage.format(f"implausible header length {n}"))
        if 8 + n > size:
            raise CheckpointError(truncated.format(f"header needs {8 + n} bytes, file has {size}"))
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(garbage.format(f"header is not JSON: {exc}")) from exc
    if not isinstance(header, dict):
        raise CheckpointError(garbage.format("header is not a JSON object"))
    try:
        data_len = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(garbage.format(f"malformed tensor entry: {exc!r}")) from exc
    if 8 + n + data_len > size:
        raise CheckpointError(truncated.format(f"data needs {8 + n + data_len} bytes, file has {size}"))
    if 8 + n + data_len < size:
        raise CheckpointError(
            f"{path}: the file is corrupted ({size - 8 - n - data_len} unexpected bytes after the data); re-save or re-copy it"
        )
    return header


def _check_format(path: Path, meta: dict, kind: str | None) -> dict:
    """Validate our own metadata keys and return the caller's metadata dict."""
    if meta.get(_KEY_FORMAT) != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: safetensors file without ECLIPSE checkpoint metadata (format "
            f"{meta.get(_KEY_FORMAT)!r}); it was not written by save_tensor_file. Convert or re-export it."
        )
    if meta.get(_KEY_VERSION) != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: unknown checkpoint format version {meta.get(_KEY_VERSION)!r} (this code reads "
            f"version {FORMAT_VERSION}); use a matching version of this software or re-export the file."
        )
    found = meta.get(_KEY_KIND)
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{path}: this is a {_kind_label(str(found))}, expected a {_kind_label(kind)}; pass the right file."
        )
    if not isinstance(meta.get(_KEY_SHA256), str):
        raise CheckpointError(f"{path}: checkpoint metadata has no checksum; the file is corrupted, re-save it.")
    try:
        user_meta = json.loads(meta.get(_KEY_METADATA, ""))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({exc}); the file is corrupted.") from exc
    if not isinstance(user_meta, dict):
        raise CheckpointError(f"{path}: checkpoint metadata is not a JSON object; the file is corrupted.")
    return user_meta


def load_tensor_file(
    path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by `save_tensor_file`; returns (tensors, metadata).

    Refuses (CheckpointError) missing, pickled, truncated, garbage, foreign-format,
    wrong-kind and checksum-mismatching files. Tensors are verified on CPU, then moved.
    """
    path = Path(path)
    size = _check_file_exists(path)
    header = _read_header(path, size)
    raw_meta = header.get("__metadata__") or {}
    if not isinstance(raw_meta, dict):
        raise CheckpointError(f"{path}: safetensors metadata is not a JSON object; the file is corrupted.")
    user_meta = _check_format(path, raw_meta, kind)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); the file is corrupted, re-save it.") from exc
    if tensor_fingerprint(tensors) != raw_meta[_KEY_SHA256]:
        raise CheckpointError(
            f"{path}: checksum mismatch, the file is corrupted (tensor data changed after saving); re-save or re-copy it."
        )
    if torch.device(device) != torch.device("cpu"):
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return tensors, user_meta


def _weights_only_reason(exc: Exception) -> str:
    """The one-line reason torch gives after 'WeightsUnpickler error:' (its message is long)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    reason = match.group(1) if match else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # Keep only the first sentence: torch goes on to suggest allow-listing the global.
    return reason.split(". ")[0].strip()[:200]


def load_torch_weights_only(path: str | os.PathLike) -> object:
    """`torch.load(path, map_location="cpu", weights_only=True)` with CheckpointError refusals."""
    path = Path(path)
    size = _check_file_exists(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it is truncated, re-download or re-copy it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused for safety: the file contains arbitrary Python objects or pickle "
            f"instructions that the weights-only loader does not allow ({_weights_only_reason(exc)}); "
            "loading them could run code. Only plain tensor checkpoints are accepted; if the file is "
            "not a torch checkpoint at all it may be corrupted."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: could not read the torch checkpoint ({first_line}); the file is truncated or "
            "corrupted, re-download or re-copy it."
        ) from exc
