"""Classification metrics of tumour probabilities, slice level (sklearn's ROC AUC).

A slice is predicted tumour when its probability is >= the threshold (0.5); ROC AUC is NaN when
the slices hold one class only. Apart from :mod:`.metrics` (segmentation) so that training, which
needs these, does not depend on how masks are scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of probabilities ``p`` for labels ``y``; NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # imported when needed: it takes a second or two

    return float(roc_auc_score(y, p))


def roc_auc_ci(y: np.ndarray, p: np.ndarray, patients: np.ndarray, n_boot: int = 1000, seed: int = 0,
               level: float = 0.95) -> list[float]:
    """Patient-bootstrap CI of the slice-level ROC AUC: patients drawn with replacement, their slices scored together.

    A patient's slices are not independent of one another, so the patient is the unit resampled,
    as for the segmentation CIs. Draws holding one class only are left out.
    """
    if not (0 < level < 1):
        raise ValueError(f"level={level}: expected a probability between 0 and 1")
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=float)
    _, unit = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(unit == u) for u in range(unit.max() + 1)]
    rng = np.random.default_rng(seed)
    draws = (np.concatenate([members[i] for i in draw]) for draw in rng.integers(0, len(members), (n_boot, len(members))))
    values = [v for v in (roc_auc(y[take], p[take]) for take in draws) if not np.isnan(v)]
    if not values:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.quantile(values, [(1 - level) / 2, (1 + level) / 2])]


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Slice-level count, accuracy, sensitivity, specificity, ROC AUC and confusion matrix [[tn, fp], [fn, tp]]."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    nan = float("nan")
    return {
        "n": int(len(y)), "accuracy": (tp + tn) / max(1, len(y)),
        "sensitivity": tp / (tp + fn) if tp + fn else nan, "specificity": tn / (tn + fp) if tn + fp else nan,
        "auc": roc_auc(y, p), "confusion": [[tn, fp], [fn, tp]],
    }


def per_patient_metrics(manifest: pd.DataFrame, p: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Slice-level accuracy, sensitivity and specificity within each patient."""
    df = manifest[["patient", "tumour"]].copy()
    df["prob"] = p
    rows = []
    for patient, g in df.groupby("patient", sort=True):
        m = classification_metrics(g["tumour"].to_numpy(), g["prob"].to_numpy(), threshold)
        rows.append({"patient": patient, "slices": m["n"], "tumour_slices": int(g["tumour"].sum()),
                     "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"]})
    return pd.DataFrame(rows)
