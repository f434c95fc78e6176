"""Heatmap -> mask. Rules: a fixed threshold, Otsu, or the top k % of the head's pixels; optional
gating to the head and by the classifier's tumour probability; optional clean-up.

Our design decisions (not the paper's): thresholds act on heatmaps in [0, 1], either per-slice
normalised (pytorch-grad-cam's convention) or on a global scale (the raw map divided by a
reference chosen on validation, so cool tumour-free slices stay cool); the head is every pixel
brighter than ``HEAD_LEVEL`` in any channel, holes filled; clean-up is an opening with a
3 x 3 cross followed by keeping the largest connected component.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RULES = ("threshold", "otsu", "top_k")
HEAD_LEVEL = 10


class SegmentError(ValueError):
    pass


def check_threshold(threshold: float) -> float:
    if not 0 <= float(threshold) <= 1:
        raise SegmentError(f"threshold={threshold}: expected a value in [0, 1] (heatmaps are in [0, 1])")
    return float(threshold)


def head_masks(images: np.ndarray) -> np.ndarray:
    """Bool N x H x W: inside the head (any channel above HEAD_LEVEL, holes filled)."""
    fg = np.asarray(images).max(-1) > HEAD_LEVEL
    return np.stack([ndimage.binary_fill_holes(f) for f in fg]) if fg.ndim == 3 else ndimage.binary_fill_holes(fg)


def global_scale(raw_peaks: np.ndarray, percentile: float = 99.0) -> float:
    """The reference for global normalisation: a high percentile of per-slice raw peaks (validation)."""
    return float(max(np.percentile(raw_peaks, percentile), 1e-12)) if len(raw_peaks) else 1.0


def clean(mask: np.ndarray) -> np.ndarray:
    """Opening (3 x 3 cross), then the largest connected component."""
    m = ndimage.binary_opening(mask)
    lab, n = ndimage.label(m)
    if n <= 1:
        return m
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def to_masks(
    heatmaps: np.ndarray, rule: str = "threshold", value: float = 0.5, heads: np.ndarray | None = None,
    probs: np.ndarray | None = None, prob_gate: float = 0.0, cleanup: bool = False,
) -> np.ndarray:
    """Masks (bool N x H x W) from heatmaps (N x H x W in [0, 1]).

    ``rule``: 'threshold' (heatmap >= value), 'otsu' (value ignored) or 'top_k' (the value % of
    the head's pixels, or of the slice's without ``heads``, with the highest heatmap).
    ``heads``: restrict masks to the head. ``probs`` with ``prob_gate`` > 0: an empty mask on
    slices the classifier calls tumour-free (probability below the gate).
    """
    h = np.asarray(heatmaps, np.float32)
    if h.ndim != 3:
        raise SegmentError(f"heatmaps must be N x H x W, got shape {h.shape}")
    if heads is not None and heads.shape != h.shape:
        raise SegmentError(f"heatmaps {h.shape} and head masks {heads.shape} differ in shape")
    if rule == "threshold":
        out = h >= check_threshold(value)
    elif rule == "otsu":
        from skimage.filters import threshold_otsu

        out = np.zeros(h.shape, bool)
        for i, hm in enumerate(h):
            vals = hm[heads[i]] if heads is not None else hm.ravel()
            if vals.size and vals.max() > vals.min():
                out[i] = hm > threshold_otsu(vals)
    elif rule == "top_k":
        out = top_k_masks(h, [value], heads)[0]
    else:
        raise SegmentError(f"unknown rule {rule!r}; expected one of {RULES}")
    if heads is not None:
        out &= heads
    if probs is not None and prob_gate > 0:
        if len(probs) != len(out):
            raise SegmentError(f"{len(probs)} probabilities for {len(out)} heatmaps")
        out[np.asarray(probs) < prob_gate] = False
    if cleanup:
        out = clean_all(out)
    return out


NORMALISATIONS = ("per_image", "global")


def scaled_heatmaps(heatmaps, normalisation: str = "per_image", reference: float | None = None) -> np.ndarray:
    """A :class:`camseg_utils.cams.Heatmaps` as float32 maps in [0, 1].

    'per_image': pytorch-grad-cam's per-slice min-max. 'global': the raw map over ``reference``
    (from :func:`global_scale` on validation), clipped to [0, 1].
    """
    if normalisation == "per_image":
        return np.asarray(heatmaps.heatmap, np.float32)
    if normalisation == "global":
        if not reference:
            raise SegmentError("normalisation='global' needs a reference scale (global_scale on validation)")
        return np.clip(heatmaps.raw_maps() / reference, 0, 1)
    raise SegmentError(f"unknown normalisation {normalisation!r}; expected one of {NORMALISATIONS}")


def raw_peaks(heatmaps) -> np.ndarray:
    return np.asarray(heatmaps.raw_peak, np.float32)


def threshold_counts(heatmaps: np.ndarray, gt: np.ndarray, thresholds, heads: np.ndarray | None = None,
                     chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per slice and threshold: |mask and truth| and |mask| for ``heatmap >= t`` (N x T each), in one pass.

    Works in chunks of slices, so memory stays bounded (chunk x pixels x thresholds booleans).
    """
    thresholds = np.asarray([check_threshold(t) for t in thresholds], np.float32)
    n = len(gt)
    inter = np.zeros((n, len(thresholds)), np.int64)
    pred = np.zeros((n, len(thresholds)), np.int64)
    for start in range(0, n, chunk):
        i = slice(start, start + chunk)
        h = np.asarray(heatmaps[i], np.float32).reshape(len(gt[i]), -1)
        if heads is not None:
            h = np.where(heads[i].reshape(len(h), -1), h, -1.0)  # outside the head: never above a threshold
        above = h[:, :, None] >= thresholds  # slices x pixels x thresholds
        inter[i] = (above & gt[i].reshape(len(h), -1)[:, :, None]).sum(1)
        pred[i] = above.sum(1)
    return inter, pred


def sweep(
    heatmaps: np.ndarray, gt: np.ndarray, heads: np.ndarray, probs: np.ndarray, thresholds, top_ks,
    head_gates=(False, True), prob_gates=(0.0, 0.5), cleanups=(False,), patients: np.ndarray | None = None,
) -> list[dict]:
    """Mean-Dice (and, given ``patients``, patient Dice) of every (rule, value, head gate, classifier
    gate, clean-up) on one split.

    Each mask set is made once per head gate and clean-up; the classifier gate only empties whole
    slices, so it is applied to the per-slice counts afterwards.
    """
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        raise SegmentError("this split has no tumour slice: mean-Dice is undefined, nothing to choose a threshold on")
    h = np.asarray(heatmaps, np.float32)
    g = gt.reshape(len(gt), -1).sum(1)
    if patients is not None:
        codes, pid = np.unique(np.asarray(patients), return_inverse=True)
        g_pat = np.bincount(pid, g, len(codes))

    def counts(masks):
        flat = masks.reshape(len(masks), -1)
        return (flat & gt.reshape(len(gt), -1)).sum(1), flat.sum(1)

    rows = []
    for head in head_gates:
        hd = heads if head else None
        for cleanup in cleanups:
            sets = {}  # (rule, value) -> per-slice (|mask and truth|, |mask|) without the classifier gate
            if cleanup:
                for t in thresholds:
                    sets[("threshold", float(t))] = counts(to_masks(h, "threshold", t, hd, cleanup=True))
            else:
                inter, pred = threshold_counts(h, gt, thresholds, hd)
                for j, t in enumerate(thresholds):
                    sets[("threshold", float(t))] = (inter[:, j], pred[:, j])
            sets[("otsu", 0.0)] = counts(to_masks(h, "otsu", 0, hd, cleanup=cleanup))
            for k, m in zip(top_ks, top_k_masks(h, top_ks, hd)):
                sets[("top_k", float(k))] = counts(clean_all(m) if cleanup else m)
            for gate in prob_gates:
                keep = np.ones(len(gt), bool) if probs is None or gate <= 0 else np.asarray(probs) >= gate
                for (rule, value), (inter, pred) in sets.items():
                    inter, pred = np.where(keep, inter, 0), np.where(keep, pred, 0)
                    row = {"rule": rule, "value": value, "head_gate": head, "prob_gate": gate, "cleanup": cleanup,
                           "mean_dice": float(np.mean(2 * inter[has] / (pred[has] + g[has])))}
                    if patients is not None:
                        i_p, p_p = np.bincount(pid, inter, len(codes)), np.bincount(pid, pred, len(codes))
                        ok = p_p + g_pat > 0
                        row["patient_dice"] = float(np.mean(2 * i_p[ok] / (p_p[ok] + g_pat[ok]))) if ok.any() else float("nan")
                    rows.append(row)
    return rows


def clean_all(masks: np.ndarray) -> np.ndarray:
    return np.stack([clean(m) for m in masks]) if len(masks) else masks


def top_k_masks(heatmaps: np.ndarray, ks, heads: np.ndarray | None = None) -> list[np.ndarray]:
    """``to_masks(heatmaps, 'top_k', k, heads)`` for several k with one sort of each slice's values."""
    h = np.asarray(heatmaps, np.float32)
    n = len(h)
    flat = h.reshape(n, -1)
    inside = np.ones(flat.shape, bool) if heads is None else heads.reshape(n, -1)
    ranked = np.sort(np.where(inside, flat, -np.inf), axis=1)[:, ::-1]  # descending, outside the head last
    size = inside.sum(1)
    out = []
    for k in ks:
        if not 0 < k <= 100:
            raise SegmentError(f"top_k value={k}: expected a percentage in (0, 100]")
        count = np.maximum(1, np.round(size * k / 100).astype(int))
        cut = ranked[np.arange(n), np.minimum(count, flat.shape[1]) - 1]
        m = (flat >= cut[:, None]) & (flat > 0) & inside & (size[:, None] > 0)
        out.append(m.reshape(h.shape))
    return out
