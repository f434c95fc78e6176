"""Segmentation and localisation metrics of masks and heatmaps, and patient-bootstrap confidence
intervals (classification metrics live in :mod:`.classification`). Conventions, stated once and tested:

- Dice(A, B) = 2|A and B| / (|A| + |B|). Two empty masks: undefined, NaN. A tumour slice with an
  empty prediction: 0.
- **mean-Dice** = the mean of per-slice Dice over the slices whose ground truth contains tumour
  (tumour-free slices have no tumour to find; their false positives are reported separately as
  the false-positive area).
- Per-patient (3-D) Dice pools all of a patient's slices into one volume.
- Two-class mean Dice = per tumour slice, the mean of the tumour Dice and the background Dice,
  averaged over tumour slices.
- Bootstrap confidence intervals resample patients, never slices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score


class MetricError(ValueError):
    pass


def _check(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise MetricError(f"masks {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slice |A and B|, |A|, |B| for N x H x W (or H x W) bool arrays."""
    _check(pred, gt)
    axes = tuple(range(pred.ndim - 2, pred.ndim))
    return (pred & gt).sum(axes), pred.sum(axes), gt.sum(axes)


def dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray | float:
    """Per-slice Dice (a float for one H x W slice); NaN where both masks are empty."""
    inter, a, b = _counts(np.asarray(pred, bool), np.asarray(gt, bool))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(a + b > 0, 2 * inter / np.maximum(a + b, 1), np.nan)
    return float(d) if np.ndim(d) == 0 else d


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray | float:
    inter, a, b = _counts(np.asarray(pred, bool), np.asarray(gt, bool))
    union = a + b - inter
    d = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(d) if np.ndim(d) == 0 else d


def mean_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean per-slice Dice over slices that contain tumour; NaN (not an error) when there are none."""
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        return float("nan")
    return float(np.mean(dice(pred[has], gt[has])))


def two_class_mean_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        return float("nan")
    return float(np.mean((dice(pred[has], gt[has]) + dice(~pred[has], ~gt[has])) / 2))


def false_positive_area(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean fraction of the slice marked as tumour on tumour-free slices."""
    free = ~gt.reshape(len(gt), -1).any(1)
    if not free.any():
        return float("nan")
    return float(pred[free].reshape(free.sum(), -1).mean())


def patient_dice(pred: np.ndarray, gt: np.ndarray, patients: np.ndarray) -> pd.Series:
    """3-D Dice per patient (all slices pooled); NaN for a patient with neither tumour nor prediction."""
    inter, a, b = _counts(np.asarray(pred, bool), np.asarray(gt, bool))
    df = pd.DataFrame({"patient": patients, "i": inter, "a": a, "b": b}).groupby("patient")[["i", "a", "b"]].sum()
    return (2 * df.i / (df.a + df.b)).where(df.a + df.b > 0)


def pointing_game(heatmaps: np.ndarray, gt: np.ndarray) -> float:
    """Share of tumour slices whose heatmap maximum falls inside the tumour."""
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        return float("nan")
    h = np.asarray(heatmaps[has], np.float32).reshape(has.sum(), -1)
    return float(gt[has].reshape(has.sum(), -1)[np.arange(has.sum()), h.argmax(1)].mean())


def mass_inside(heatmaps: np.ndarray, gt: np.ndarray) -> float:
    """Mean share of heatmap mass inside the tumour, over tumour slices."""
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        return float("nan")
    h = np.asarray(heatmaps[has], np.float32).reshape(has.sum(), -1)
    g = gt[has].reshape(has.sum(), -1)
    return float(np.mean((h * g).sum(1) / np.maximum(h.sum(1), 1e-12)))


def pixel_average_precision(heatmaps: np.ndarray, gt: np.ndarray, max_pixels: int = 2_000_000, seed: int = 0) -> float:
    """Average precision of heatmap values as tumour-pixel scores, pooled over tumour slices."""
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        return float("nan")
    h = np.asarray(heatmaps[has], np.float32).ravel()
    g = gt[has].ravel()
    if len(h) > max_pixels:  # a fixed random subset keeps this fast on large sets
        idx = np.random.default_rng(seed).choice(len(h), max_pixels, replace=False)
        h, g = h[idx], g[idx]
    return float(average_precision_score(g, h))


def bootstrap_ci(values: np.ndarray, patients: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """CI of the mean of per-slice ``values`` (NaN ignored), resampling patients with replacement."""
    values = np.asarray(values, float)
    ok = ~np.isnan(values)
    if not ok.any():
        return (float("nan"), float("nan"))
    df = pd.DataFrame({"p": np.asarray(patients)[ok], "v": values[ok]}).groupby("p")["v"].agg(["sum", "count"])
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(df), (n_boot, len(df)))
    means = df["sum"].to_numpy()[draw].sum(1) / df["count"].to_numpy()[draw].sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def score_masks(pred: np.ndarray, gt: np.ndarray, patients: np.ndarray, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> dict:
    """Every reported segmentation number for one set of masks, with patient-bootstrap CIs at ``level``."""
    has = gt.reshape(len(gt), -1).any(1)
    per_slice = np.where(has, dice(pred, gt), np.nan)  # mean-Dice counts tumour slices only
    pdice = patient_dice(pred, gt, patients).dropna()
    return {
        "mean_dice": mean_dice(pred, gt), "mean_dice_ci": list(bootstrap_ci(per_slice, patients, n_boot, seed, level)),
        "mean_iou": float(np.nanmean(np.where(has, iou(pred, gt), np.nan))) if has.any() else float("nan"),
        "patient_dice": float(pdice.mean()) if len(pdice) else float("nan"),
        # one value per patient: the same resampling of patients, each patient weighing one
        "patient_dice_ci": list(bootstrap_ci(pdice.to_numpy(), pdice.index.to_numpy(), n_boot, seed, level)),
        "two_class_dice": two_class_mean_dice(pred, gt), "fp_area": false_positive_area(pred, gt),
        "tumour_slices": int(has.sum()),
    }
