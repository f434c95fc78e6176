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
           "fold_patients",
           "build_dataset"]


def _patients_by_institution(manifest: pd.DataFrame, seed: int) -> list:
    """Patient names shuffled within each institution, the institutions laid end to end (sorted by name)."""
    patients = manifest.groupby("patient", sort=True).agg(institution=("institution", "first"))
    rng = np.random.default_rng(seed)
    order = []
    for _, group in patients.groupby("institution", sort=True):
        names = group.index.to_numpy().copy()
        rng.shuffle(names)
        order.extend(names)
    return order


def _deal(order: Sequence, fractions: np.ndarray) -> dict:
    """Walking ``order``, each patient goes to the split furthest behind its target share."""
    counts = np.zeros(len(fractions))
    assign = {}
    for i, name in enumerate(order):
        k = int(np.argmax(fractions * (i + 1) - counts))
        assign[name] = SPLITS[k]
        counts[k] += 1
    return assign


def _checked(manifest: pd.DataFrame, assign: dict, what: str) -> pd.DataFrame:
    out = manifest.copy()
    out["split"] = out["patient"].map(assign)
    for name in SPLITS:
        part = out[out["split"] == name]
        if part.empty:
            continue
        if part["tumour"].sum() == 0 or (~part["tumour"]).sum() == 0:
            raise DataError(
                f"split {name!r} ({part['patient'].nunique()} patients) lacks tumour or tumour-free slices; "
                f"use more patients or another seed ({what})"
            )
    return out


def _fractions(fractions: Sequence[float]) -> np.ndarray:
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1):
        raise DataError(f"fractions={tuple(fractions)}: expected three non-negative shares summing to 1")
    return fractions


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
    fractions = _fractions(fractions)
    if manifest["patient"].nunique() < 3:
        raise DataError(f"only {manifest['patient'].nunique()} patients: need at least 3 for a patient-wise split")
    order = _patients_by_institution(manifest, seed)
    out = _checked(manifest, _deal(order, fractions), f"seed={seed}")
    for name in SPLITS:  # a split asked for must exist
        if fractions[SPLITS.index(name)] > 0 and not (out["split"] == name).any():
            raise DataError(f"split {name!r} got no patient; use more patients (seed={seed})")
    return out


def fold_patients(
    manifest: pd.DataFrame,
    folds: int,
    fold: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Fold ``fold`` of a K-fold cross-validation by patient, stratified by institution (or site).

    The patients, in :func:`split_patients`' order (shuffled within each institution, institutions end
    to end), are dealt round the ``folds`` folds, so every fold holds each institution's patients in
    proportion; fold ``fold``'s patients are the test split. The other patients are split into train
    and validation as :func:`split_patients` does, validation taking the share ``val / (train + val)``
    of ``fractions``. Over ``fold = 0 .. folds - 1`` the test splits are disjoint and cover every patient.
    """
    fractions = _fractions(fractions)
    for name, v in (("folds", folds), ("fold", fold)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{name}={v!r}: expected an integer")
    n = manifest["patient"].nunique()
    if folds < 2 or folds > n:
        raise DataError(f"folds={folds}: expected 2 to {n} (the number of patients)")
    if not 0 <= fold < folds:
        raise DataError(f"fold={fold}: expected 0 to {folds - 1} for folds={folds}")
    if fractions[0] <= 0 or fractions[1] <= 0:
        raise DataError(f"fractions={tuple(fractions)}: cross-validation needs train and validation shares above 0")
    order = _patients_by_institution(manifest, seed)
    test = set(order[fold::folds])
    rest = [p for p in order if p not in test]
    inner = np.array([fractions[0], fractions[1], 0.0]) / (fractions[0] + fractions[1])
    assign = {**_deal(rest, inner), **{p: "test" for p in test}}
    out = _checked(manifest, assign, f"seed={seed}, fold {fold} of {folds}")
    if not (out["split"] == "val").any():
        raise DataError(f"fold {fold} of {folds}: no patient left for validation; use more patients or fewer folds")
    return out


def build_dataset(
    dataset: str = "synthetic",
    data_root: str | None = None,
    image_size: int = 128,
    seed: int = 0,
    n_patients: int | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    folds: int = 0,
    fold: int = 0,
) -> Dataset:
    """What notebook 01 does: load or generate, resize, split. ``dataset`` is 'synthetic' or 'lgg'.

    ``folds`` >= 2: the split is fold ``fold`` of a cross-validation by patient (:func:`fold_patients`);
    0: one split by ``split_fractions`` (:func:`split_patients`)."""
    if dataset == "synthetic":
        ds = generate_synthetic(n_patients=n_patients or 40, size=image_size, seed=seed, progress=progress)
    elif dataset == "lgg":
        if not data_root:
            raise DataError(f"dataset='lgg' needs data_root. {LGG_HELP}")
        ds = load_lgg(data_root, size=image_size, patients=n_patients, progress=progress)
    else:
        raise DataError(f"unknown dataset {dataset!r}; expected 'synthetic' or 'lgg'")
    if folds:
        ds.manifest = fold_patients(ds.manifest, folds, fold, split_fractions, seed=seed)
    else:
        ds.manifest = split_patients(ds.manifest, split_fractions, seed=seed)
    return ds
