"""Small I/O helpers shared by every stage: atomic writes, hashing, JSON.

Every output is written to a temporary file beside its destination and renamed
into place, so a crash never leaves a half-written file that a later stage (or a
resumed run) would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically, so that the same content gives the same bytes.

    Saved to a path, torch names the archive inside the file after it, and the temporary
    name differs on every save; through a file object the name is fixed. Heatmap caches are
    keyed by the checkpoint's hash, so a checkpoint re-saved unchanged keeps its caches.
    """
    import torch

    with atomic_path(path, suffix=Path(path).suffix) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


class UnreadableFileError(ValueError):
    """A result file (JSON, checkpoint) that exists but cannot be read: truncated, empty or not ours."""


def read_json(path: str | os.PathLike, recover: str = "") -> Any:
    """Parse a JSON file; a missing file raises FileNotFoundError, a broken one UnreadableFileError naming it."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UnreadableFileError(f"{path} is not valid JSON ({e}; {len(text)} bytes){recover}") from None


def load_torch(path: str | os.PathLike, what: str = "checkpoint", recover: str = "") -> Any:
    """``torch.load`` (CPU, full unpickling: our own files) with errors that name the file and the way back.

    ``recover`` is appended to the message: the command that re-creates the file.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{recover}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
        raise UnreadableFileError(f"{what} {path} is unreadable ({type(e).__name__}: {e}; "
                                  f"{path.stat().st_size} bytes){recover}") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def arrays_digest(*arrays: np.ndarray, chunk_bytes: int = 64 << 20) -> str:
    """blake2b of arrays' shapes, dtypes and bytes: what a cache or a resume must match besides file names.

    Read in chunks, so a memory-mapped array is never loaded whole.
    """
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.asarray(a) if not isinstance(a, np.ndarray) else a
        h.update(f"{tuple(a.shape)} {np.dtype(a.dtype).str};".encode())
        if a.ndim == 0:
            h.update(a.tobytes())
            continue
        per = max(1, chunk_bytes // max(1, int(np.prod(a.shape[1:])) * a.dtype.itemsize))
        for i in range(0, len(a), per):
            h.update(np.ascontiguousarray(a[i:i + per]).data)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
