"""Clean-up of masks by their shape: the 2-D clean-up of every slice (an opening, then the largest
connected component) and the 3-D clean-up of a scan's slices stacked into a volume.

Our design decisions: the 2-D clean-up opens with a 3 x 3 cross (specks and one-pixel bridges go)
and keeps the largest 4-connected component, since a tumour is one region per slice; the 3-D
clean-up keeps 6-connected components of at least a fraction of the scan's largest, since an LGG
tumour is one blob in 3-D (notebook 05 uses it for the U-Net's masks, the fraction chosen on validation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class SegmentError(ValueError):
    """A bad parameter or input of heatmap -> mask segmentation (the message names it and what was expected)."""


# the 3 x 3 cross in the middle plane of a 3 x 3 x 3 structure: slices of a stack never touch
_SLICE_CROSS = np.zeros((3, 3, 3), bool)
_SLICE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def clean(mask: np.ndarray) -> np.ndarray:
    """Opening (3 x 3 cross), then the largest connected component (4-connected)."""
    return clean_all(np.asarray(mask, bool)[None])[0]


def _open_cross(masks: np.ndarray) -> np.ndarray:
    """Binary opening of every slice by the 3 x 3 cross, pixels outside the image counting as background
    (``ndimage.binary_opening(masks, _SLICE_CROSS)`` exactly): erosion and dilation as ANDs and ORs of the
    stack shifted by one pixel, a few passes over the bytes instead of a structuring-element scan."""
    eroded = masks.copy()
    eroded[:, 1:] &= masks[:, :-1]
    eroded[:, :-1] &= masks[:, 1:]
    eroded[:, :, 1:] &= masks[:, :, :-1]
    eroded[:, :, :-1] &= masks[:, :, 1:]
    eroded[:, 0] = eroded[:, -1] = False  # a border pixel has a neighbour outside the image
    eroded[:, :, 0] = eroded[:, :, -1] = False
    opened = eroded.copy()
    opened[:, 1:] |= eroded[:, :-1]
    opened[:, :-1] |= eroded[:, 1:]
    opened[:, :, 1:] |= eroded[:, :, :-1]
    opened[:, :, :-1] |= eroded[:, :, 1:]
    return opened


def clean_all(masks: np.ndarray) -> np.ndarray:
    """:func:`clean` of every slice of N x H x W masks, for the whole stack at once.

    The opening and the labelling work on the stack with a structure that never connects
    neighbouring slices; each slice keeps its largest component (of equal ones, the lowest label).
    """
    masks = np.asarray(masks, bool)
    if not len(masks):
        return masks
    if masks.ndim != 3:
        raise SegmentError(f"masks must be N x H x W, got shape {masks.shape}")
    opened = _open_cross(masks)
    lab, n = ndimage.label(opened, _SLICE_CROSS)
    if n == 0:
        return opened
    flat = lab.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)  # the slice each component lies in (it never spans two)
    on = np.flatnonzero(flat)
    owner[flat[on]] = on // (masks.shape[1] * masks.shape[2])
    labels = np.arange(1, n + 1)
    order = np.lexsort((-sizes[1:], owner[1:]))  # by slice, largest first (ties: the lowest label, as argmax)
    first = np.ones(n, bool)
    first[1:] = owner[1:][order][1:] != owner[1:][order][:-1]
    keep = np.zeros(n + 1, bool)
    keep[labels[order][first]] = True
    return keep[lab]


def keep_volume_components(masks: np.ndarray, volumes, slices, min_fraction: float = 1.0) -> np.ndarray:
    """3-D clean-up: per volume (one scan's slices, stacked in ``slices`` order), keep the connected
    components (6-connected across neighbouring slices) with at least ``min_fraction`` of the largest
    one's voxels; 1.0 keeps the largest alone, 0 changes nothing. A new array; ``masks`` is untouched.

    Specks elsewhere in the scan, which only patient Dice and the false-positive area see, are
    dropped. The CAM masks do without it: their largest blob is often not the tumour.
    """
    masks = np.asarray(masks, bool)
    volumes, slices = np.asarray(volumes), np.asarray(slices)
    if not 0 <= float(min_fraction) <= 1:
        raise SegmentError(f"min_fraction={min_fraction}: expected a fraction of the largest component in [0, 1]")
    if masks.ndim != 3 or not len(volumes) == len(slices) == len(masks):
        raise SegmentError(f"masks {masks.shape} need N x H x W with one volume id and slice number per slice "
                           f"(got {len(volumes)} and {len(slices)})")
    out = masks.copy()
    if not min_fraction:
        return out
    for v in np.unique(volumes):
        idx = np.flatnonzero(volumes == v)
        idx = idx[np.argsort(slices[idx], kind="stable")]
        lab, n = ndimage.label(masks[idx])
        if n > 1:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            sizes[0] = 0  # background never reaches min_fraction (> 0 here) of the largest
            out[idx] = (sizes >= min_fraction * sizes.max())[lab]
    return out
