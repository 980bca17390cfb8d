"""Atomic file writes: a temporary file in the destination folder, fsynced, then os.replace'd into place.

Readers never see a half-written file, and a failed write leaves an existing file untouched.
"""

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np


def _create_temp_file(folder: Path, name: str) -> Path:
    """Create an empty, unique temp file next to the destination (umask applies to its mode)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a unique temporary file in {folder}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; not possible on Windows, where it is skipped."""
    if os.name == "nt":
        return
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder; on success it atomically replaces `path`.

    If the body raises, the temp file is removed and an existing `path` is untouched.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    tmp = _create_temp_file(folder, dest.name)
    mode = os.stat(tmp).st_mode & 0o777  # 0o666 minus the umask, as for any new file
    try:
        yield tmp
        # Writers that replace the temp file (safetensors) leave it 0o600; give it the usual mode.
        os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], Any]) -> None:
    """Call `write_fn(temp_path)` and atomically move the result to `path`."""
    with atomic_path(path) as tmp:
        write_fn(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written as-is (no newline translation)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Strict JSON (no NaN/Infinity; numpy scalars and arrays converted); refused before anything is written."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False, default=_json_default) + "\n"
    atomic_write_text(path, text)


def _json_default(obj: Any) -> Any:
    # Segment ids, areas and scores often come straight from numpy.
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
