"""Data for a study: load the LGG folder or generate the synthetic default, then split by patient.

The parts live in :mod:`.dataset` (the in-memory :class:`Dataset`, saving and reloading),
:mod:`.lgg` (the kaggle_3m loader) and :mod:`.synthetic` (the generator); their public names are
available here too, as the notebooks use them. Nothing in this package ever writes into a data root.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .dataset import SPLITS, DataError, Dataset, finish_manifest, load_dataset, manifest_hash, save_dataset
from .lgg import (
    LGG_ENV,
    LGG_HELP,
    binarise_mask,
    default_lgg_root,
    load_lgg,
    read_slice,
    read_slice_notes,
    resize_slice,
    scan_folder,
    scan_lgg,
    write_kaggle_layout,
)
from .synthetic import generate_synthetic

__all__ = ["SPLITS", "DataError", "Dataset", "finish_manifest", "load_dataset", "manifest_hash", "save_dataset",
           "LGG_ENV", "LGG_HELP", "binarise_mask", "default_lgg_root", "load_lgg", "read_slice", "read_slice_notes",
           "resize_slice", "scan_folder", "scan_lgg", "write_kaggle_layout", "generate_synthetic", "split_patients",
           "build_dataset"]


def split_patients(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Assign whole patients to train / val / test, stratified by institution (or site).

    Patients are shuffled within each institution and the institutions laid end to end;
    walking that list, each patient goes to the split furthest behind its target share.
    Each institution is thus spread over the splits in proportion, and the global
    shares are as close to ``fractions`` as whole patients allow. Same seed, same split.
    """
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1):
        raise DataError(f"fractions={tuple(fractions)}: expected three non-negative shares summing to 1")
    patients = manifest.groupby("patient", sort=True).agg(
        institution=("institution", "first"), tumour=("tumour", "any"), free=("tumour", lambda t: (~t).any())
    )
    if len(patients) < 3:
        raise DataError(f"only {len(patients)} patients: need at least 3 for a patient-wise split")
    rng = np.random.default_rng(seed)
    order = []
    for _, group in patients.groupby("institution", sort=True):
        names = group.index.to_numpy().copy()
        rng.shuffle(names)
        order.extend(names)
    counts = np.zeros(3)
    assign = {}
    for i, name in enumerate(order):
        k = int(np.argmax(fractions * (i + 1) - counts))
        assign[name] = SPLITS[k]
        counts[k] += 1
    out = manifest.copy()
    out["split"] = out["patient"].map(assign)
    for name in SPLITS:
        part = out[out["split"] == name]
        if fractions[SPLITS.index(name)] > 0 and (part["tumour"].sum() == 0 or (~part["tumour"]).sum() == 0):
            raise DataError(
                f"split {name!r} ({part['patient'].nunique()} patients) lacks tumour or tumour-free slices; "
                f"use more patients or another seed (seed={seed})"
            )
    return out


def build_dataset(
    dataset: str = "synthetic",
    data_root: str | None = None,
    image_size: int = 128,
    seed: int = 0,
    n_patients: int | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: bool = True,
) -> Dataset:
    """What notebook 01 does: load or generate, resize, split. ``dataset`` is 'synthetic' or 'lgg'."""
    if dataset == "synthetic":
        ds = generate_synthetic(n_patients=n_patients or 40, size=image_size, seed=seed, progress=progress)
    elif dataset == "lgg":
        if not data_root:
            raise DataError(f"dataset='lgg' needs data_root. {LGG_HELP}")
        ds = load_lgg(data_root, size=image_size, patients=n_patients, progress=progress)
    else:
        raise DataError(f"unknown dataset {dataset!r}; expected 'synthetic' or 'lgg'")
    ds.manifest = split_patients(ds.manifest, split_fractions, seed=seed)
    return ds
