"""Heatmap-filtered images for the re-training test of the heatmaps.

Our design decisions (not the paper's):
- soft ``keep_hot`` = image x heatmap, soft ``keep_dark`` = image x (1 - heatmap);
- hard ``keep`` / ``remove``: keep only, or remove only, the top k % of a slice's pixels by
  heatmap (exactly round(k % of H x W) pixels, ties broken by position), the rest (or the
  removed part) filled with the training split's per-channel mean: the ROAR / keep-and-retrain
  protocol of Hooker et al. 2019;
- the control: the same filters driven by random heatmaps.
"""

from __future__ import annotations

import numpy as np

from .cams import check_pair

SOFT = ("keep_hot", "keep_dark")
HARD = ("keep", "remove")


def top_k_mask(heatmaps: np.ndarray, k: float) -> np.ndarray:
    """Bool N x H x W: the k % highest-heatmap pixels of each slice."""
    if not 0 <= k <= 100:
        raise ValueError(f"k={k}: expected a percentage in [0, 100]")
    n = len(heatmaps)
    flat = np.asarray(heatmaps, np.float32).reshape(n, -1)
    count = int(round(flat.shape[1] * k / 100))
    out = np.zeros(flat.shape, bool)
    if count:
        idx = np.argsort(-flat, axis=1, kind="stable")[:, :count]
        np.put_along_axis(out, idx, True, axis=1)
    return out.reshape(np.shape(heatmaps))


def filter_images(images: np.ndarray, heatmaps: np.ndarray, kind: str, k: float = 0.0,
                  fill: np.ndarray | None = None) -> np.ndarray:
    """uint8 N x H x W x 3 images filtered by N x H x W heatmaps in [0, 1]."""
    check_pair(images, heatmaps)
    img = np.asarray(images, np.float32)
    h = np.asarray(heatmaps, np.float32)[..., None]
    if kind == "keep_hot":
        out = img * h
    elif kind == "keep_dark":
        out = img * (1 - h)
    elif kind in HARD:
        if fill is None:
            raise ValueError("hard filters need fill: the training split's per-channel mean (0..255)")
        sel = top_k_mask(heatmaps, k)[..., None]
        keep = sel if kind == "keep" else ~sel
        out = np.where(keep, img, np.asarray(fill, np.float32).reshape(1, 1, 1, 3))
    else:
        raise ValueError(f"unknown filter {kind!r}; expected one of {SOFT + HARD}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def conditions(ks) -> list[tuple[str, float]]:
    """Every (filter, k) of the study: the two soft filters, then keep and remove for each k."""
    return [(s, 0.0) for s in SOFT] + [(h, float(k)) for h in HARD for k in ks]
