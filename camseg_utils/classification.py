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
