"""A study's slices in memory (:class:`Dataset`), their manifest, and saving and reloading them.

Conventions: an image is uint8 H x W x 3, a mask is bool H x W. A :class:`Dataset` holds every
slice of a study in memory, in the order of its manifest (one row per slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import atomic_path, read_json, text_sha256, write_json

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad or missing input data; the message names the file or folder and what was expected."""


@dataclass
class Dataset:
    """All slices of one study: ``images[i]``, ``masks[i]`` and ``manifest.iloc[i]`` belong together."""

    images: np.ndarray  # N x H x W x 3, uint8
    masks: np.ndarray  # N x H x W, bool
    manifest: pd.DataFrame
    skipped: list = field(default_factory=list, repr=False, compare=False)  # loader: entries that were no slices

    def __post_init__(self) -> None:
        n = len(self.manifest)
        if self.images.shape[0] != n or self.masks.shape[0] != n:
            raise DataError(
                f"dataset parts disagree: {self.images.shape[0]} images, {self.masks.shape[0]} masks, "
                f"{n} manifest rows"
            )
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 N x H x W x 3, got {self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != bool:
            raise DataError(f"masks must be bool N x H x W matching images, got {self.masks.dtype} {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, rows: np.ndarray | Sequence[int] | pd.Series) -> "Dataset":
        """Slices by position (ints) or by a boolean selector over the manifest."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        return Dataset(self.images[idx], self.masks[idx], self.manifest.iloc[idx].reset_index(drop=True))

    def split(self, name: str) -> "Dataset":
        if "split" not in self.manifest:
            raise DataError("this dataset has no 'split' column: run split_patients first")
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.subset((self.manifest["split"] == name).to_numpy())


def finish_manifest(manifest: pd.DataFrame, masks: np.ndarray) -> pd.DataFrame:
    manifest = manifest.copy()
    manifest["tumour_pixels"] = masks.reshape(len(masks), -1).sum(1).astype(int)
    manifest["tumour"] = manifest["tumour_pixels"] > 0
    return manifest


def manifest_hash(manifest: pd.DataFrame) -> str:
    """A short fingerprint of which slice is in which split, recorded in checkpoints."""
    cols = [c for c in ("patient", "slice", "split", "tumour") if c in manifest]
    return text_sha256(manifest[cols].to_csv(index=False))[:16]


def save_dataset(dataset: Dataset, folder: str | Path, meta: dict | None = None) -> Path:
    """Write images.npy, masks.npy, manifest.csv, then meta.json last (the 'complete' marker)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for name, arr in (("images.npy", dataset.images), ("masks.npy", dataset.masks)):
        with atomic_path(folder / name, suffix=".npy") as tmp:
            np.save(tmp, arr)
    with atomic_path(folder / "manifest.csv") as tmp:
        dataset.manifest.to_csv(tmp, index=False)
    write_json(
        folder / "meta.json",
        {"n": len(dataset), "size": dataset.size, "manifest_hash": manifest_hash(dataset.manifest), **(meta or {})},
    )
    return folder


def load_dataset(folder: str | Path, mmap: bool = False) -> Dataset:
    """Reload what :func:`save_dataset` wrote (notebook 01's output)."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise DataError(f"{folder} holds no complete dataset (no meta.json): run notebook 01 (data) first")
    manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
    mode = "r" if mmap else None
    ds = Dataset(np.load(folder / "images.npy", mmap_mode=mode), np.load(folder / "masks.npy", mmap_mode=mode), manifest)
    meta = read_json(folder / "meta.json")
    if meta.get("manifest_hash") != manifest_hash(manifest):
        raise DataError(f"{folder}/manifest.csv does not match meta.json: the dataset folder was modified")
    return ds
