"""Heatmap -> mask: the rules (a fixed threshold, Otsu, or the hottest share of the head), the head
and classifier gates, the heatmap scales thresholds act on, and mask sizes counted without masks.

Our design decisions (not the paper's): thresholds act on heatmaps in [0, 1], either per-slice
normalised (pytorch-grad-cam's convention) or on a global scale (the raw map divided by a
reference chosen on validation, so cool tumour-free slices stay cool); the head is every pixel
brighter than ``HEAD_LEVEL`` in any channel, holes filled. The 'top_k' rule keeps the k % of the
head's pixels with the highest heatmap, ties at the cut kept (unlike :func:`.filtering.top_k_mask`,
which keeps an exact count of the whole slice's pixels).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from .device import as_device
from .morphology import SegmentError, clean_all

RULES = ("threshold", "otsu", "top_k")
NORMALISATIONS = ("per_image", "global")
HEAD_LEVEL = 10


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
        out = np.zeros(h.shape, bool)
        for i, hm in enumerate(h):
            vals = hm[heads[i]] if heads is not None else hm.ravel()
            if vals.size and vals.max() > vals.min():
                out[i] = hm > threshold_otsu(vals)
    elif rule == "top_k":
        out = head_share_masks(h, [value], heads)[0]
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



def scaled_heatmaps(heatmaps, normalisation: str = "per_image", reference: float | None = None) -> np.ndarray:
    """A :class:`camseg_utils.heatmap_cache.Heatmaps` as float32 maps in [0, 1].

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
    """Each slice's raw (un-normalised) heatmap peak: what :func:`global_scale` takes its reference from."""
    return np.asarray(heatmaps.raw_peak, np.float32)


def _check_top_ks(ks) -> None:
    for k in ks:
        if not 0 < k <= 100:
            raise SegmentError(f"top_k value={k}: expected a percentage in (0, 100]")


def _top_k_cuts(asc, inside, ks):
    """Per row the value of the k %-th highest pixel inside the head, for each k (n x K), and the head's size.

    ``asc``: each row's values sorted ascending with the pixels outside the head set to -inf.
    """
    size = inside.sum(1)
    cuts = []
    for k in ks:
        count = torch.round(size.double() * k / 100).long().clamp(1, asc.shape[1])  # numpy's round half to even too
        cuts.append(asc.gather(1, asc.shape[1] - count[:, None])[:, 0])
    return torch.stack(cuts, 1) if cuts else asc.new_zeros((len(asc), 0)), size


def _chunks(heatmaps, gt, heads, chunk, dev):
    """(slice range, heatmaps n x P float32, truth n x P, inside the head n x P), as torch tensors on ``dev``.

    Without ``heads`` every pixel is inside; without ``gt`` the truth is None.
    """
    n = len(heatmaps)
    for start in range(0, n, chunk):
        i = slice(start, min(start + chunk, n))
        m = i.stop - i.start
        h = torch.from_numpy(np.asarray(heatmaps[i], np.float32).reshape(m, -1)).to(dev)
        g = torch.from_numpy(np.ascontiguousarray(gt[i]).reshape(m, -1)).to(dev) if gt is not None else None
        inside = (torch.from_numpy(np.ascontiguousarray(heads[i]).reshape(m, -1)).to(dev) if heads is not None
                  else torch.ones_like(h, dtype=torch.bool))
        yield i, h, g, inside


def mask_counts(heatmaps: np.ndarray, gt: np.ndarray, thresholds=(), top_ks=(), heads: np.ndarray | None = None,
                chunk: int = 64, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: |mask and truth| and |mask| (N x (T + K) each) for every ``heatmap >= t`` and every top-k
    mask (as :func:`to_masks` makes them, without gates), without materialising any mask.

    Each slice's values are sorted once; every mask is then a suffix of that order, so its size is
    a ``searchsorted`` and its overlap with the truth a suffix sum. Works in chunks of slices on
    ``device`` (a torch device; the CPU by default).
    """
    dev = as_device(device)
    _check_top_ks(top_ks)
    t = torch.tensor([check_threshold(v) for v in thresholds], dtype=torch.float32, device=dev)
    inter = np.zeros((len(gt), len(t) + len(top_ks)), np.int64)
    pred = np.zeros_like(inter)
    for i, h, g, inside in _chunks(heatmaps, gt, heads, chunk, dev):
        m, p = h.shape
        asc, order = torch.where(inside, h, float("-inf")).sort(dim=1)  # outside the head first, never counted
        suffix = torch.cat([g.gather(1, order).int().flip(1).cumsum(1).flip(1), asc.new_zeros((m, 1), dtype=torch.int)], 1)
        pos = [torch.searchsorted(asc, t.expand(m, -1).contiguous())]  # first position >= each threshold
        if len(top_ks):
            cuts, size = _top_k_cuts(asc, inside, top_ks)
            # top k: value >= the cut and > 0; nothing on a slice with an empty head
            at_cut = torch.searchsorted(asc, cuts.contiguous())
            above0 = torch.searchsorted(asc, asc.new_zeros((m, 1)), right=True).expand_as(at_cut)
            k_pos = torch.where(cuts > 0, at_cut, torch.maximum(at_cut, above0))
            pos.append(torch.where(size[:, None] > 0, k_pos, p))
        pos = torch.cat(pos, 1)
        pred[i] = (p - pos).cpu().numpy()
        inter[i] = suffix.gather(1, pos).cpu().numpy()
    return inter, pred


def head_share_masks(heatmaps: np.ndarray, ks, heads: np.ndarray | None = None, device=None,
                chunk: int = 64) -> list[np.ndarray]:
    """The hottest ``ks`` % of each slice's head (of the slice without ``heads``), ties at the cut kept, zeros
    never: ``to_masks(heatmaps, 'top_k', k, heads)`` for several k with one sort of each slice's values."""
    h = np.asarray(heatmaps, np.float32)
    _check_top_ks(ks)
    out = [np.zeros(h.shape, bool) for _ in ks]
    for i, ht, _, inside in _chunks(h, None, heads, chunk, as_device(device)):
        cuts, size = _top_k_cuts(torch.where(inside, ht, float("-inf")).sort(dim=1).values, inside, ks)
        for j in range(len(ks)):
            m = (ht >= cuts[:, j:j + 1]) & (ht > 0) & inside & (size[:, None] > 0)
            out[j][i] = m.cpu().numpy().reshape((-1,) + h.shape[1:])
    return out
