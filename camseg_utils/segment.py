"""Heatmap -> mask. Rules: a fixed threshold, Otsu, or the top k % of the head's pixels; optional
edge-aware refinement of the heatmap by the image (a guided filter); optional gating to the head
and by the classifier's tumour probability; optional clean-up.

Our design decisions (not the paper's): thresholds act on heatmaps in [0, 1], either per-slice
normalised (pytorch-grad-cam's convention) or on a global scale (the raw map divided by a
reference chosen on validation, so cool tumour-free slices stay cool); the head is every pixel
brighter than ``HEAD_LEVEL`` in any channel, holes filled; clean-up is an opening with a
3 x 3 cross followed by keeping the largest connected component. The refinement is He et al.'s
guided filter (ECCV 2010) with one image channel as the guide (``GUIDE_CHANNEL``: FLAIR, the
sequence the LGG masks were drawn on, and the synthetic generator's tumour-bright channel): a
CAM comes from a feature map 2-32 x coarser than the image (our zoo's early, middle and last blocks)
and is bilinearly blown up, so its edges fall between anatomy; the filter re-draws them along
the guide's edges. It uses the image, not labels; 05 chooses its radius on validation, radius 0
meaning the heatmap alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RULES = ("threshold", "otsu", "top_k")
HEAD_LEVEL = 10
GUIDE_CHANNEL = 1  # pre-contrast, FLAIR, post-contrast; -1: the mean of the channels
GUIDED_EPS = 1e-3  # guide in [0, 1]: edges of contrast well above sqrt(1e-3) ~ 0.03 are kept


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
    """Opening (3 x 3 cross), then the largest connected component (4-connected)."""
    return clean_all(np.asarray(mask, bool)[None])[0]


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


def setting_heatmaps(heatmaps, setting, images: np.ndarray | None = None, device=None):
    """``heatmaps`` refined as a chosen setting says (its ``guided_radius``, ``guided_eps``, ``guide_channel``;
    a setting without them, from an older run, means no refinement). Heatmaps that :func:`refine`
    already made with those values (their ``meta`` says so) are returned as they are."""
    radius = int(setting.get("guided_radius", 0) or 0)
    if not radius:
        return heatmaps
    eps, channel = float(setting.get("guided_eps", GUIDED_EPS)), int(setting.get("guide_channel", GUIDE_CHANNEL))
    meta = heatmaps.meta or {}
    if (meta.get("guided_radius"), meta.get("guided_eps"), meta.get("guide_channel")) == (radius, eps, channel):
        return heatmaps
    if images is None:
        raise SegmentError(f"this setting refines heatmaps with a guided filter (radius {radius}): pass the images")
    return refine(heatmaps, images, radius, eps, channel, device)


def apply_setting(heatmaps, setting, heads: np.ndarray | None = None, probs: np.ndarray | None = None,
                  reference: float | None = None, images: np.ndarray | None = None, device=None) -> np.ndarray:
    """Masks from a :class:`camseg_utils.cams.Heatmaps` with one chosen setting (a sweep row with its
    ``normalisation``, as a dict or pandas row); the global scale is ``reference`` or ``setting['reference']``.
    Settings with a guided refinement need the ``images`` (see :func:`setting_heatmaps`)."""
    ref = reference if reference is not None else setting.get("reference")
    h = scaled_heatmaps(setting_heatmaps(heatmaps, setting, images, device), setting["normalisation"], ref)
    return to_masks(h, setting["rule"], setting["value"], heads if setting["head_gate"] else None, probs,
                    setting["prob_gate"], bool(setting["cleanup"]))


def _box1d(x, r: int, dim: int):
    """Mean over the 2r + 1 pixels around each one along ``dim`` (1 or 2) of N x H x W, clipped at the
    border: differences of a cumulative sum, so O(1) per pixel whatever r (float32 sums over one row
    or column are exact to ~1e-6 for values in [0, 1])."""
    import torch
    import torch.nn.functional as F

    n = x.shape[dim]
    c = F.pad(x.cumsum(dim), (1, 0) if dim == 2 else (0, 0, 1, 0))
    i = torch.arange(n, device=x.device)
    hi, lo = (i + r + 1).clamp(max=n), (i - r).clamp(min=0)
    count = (hi - lo).to(x.dtype)
    return (c.index_select(dim, hi) - c.index_select(dim, lo)) / (count[:, None] if dim == 1 else count)


def _box(x, r: int):
    """Mean over the (2r + 1)^2 window around each pixel, counting only pixels inside the image (a window
    clipped at the border is still a rectangle, so the filter separates into a column and a row pass)."""
    return _box1d(_box1d(x, r, 1), r, 2)


def guided_filter(p, guide: np.ndarray, radius: int, eps: float = GUIDED_EPS, device=None, chunk: int = 128):
    """He et al.'s guided filter of N x H x W maps ``p`` by N x H x W ``guide`` (float, ~[0, 1]).

    Per window, p is fitted as a * guide + b (ridge ``eps`` on a); the output averages the fits
    of the windows covering each pixel. Linear in ``p``; float32 on the CPU, in chunks on ``device``.
    ``p`` may be a tuple of such maps: they share the guide's window statistics, and a tuple comes back.
    """
    import torch

    maps = tuple(np.asarray(m) for m in p) if isinstance(p, tuple) else (np.asarray(p),)
    guide = np.asarray(guide)
    for m in maps:
        if m.ndim != 3 or m.shape != guide.shape:
            raise SegmentError(f"guided filter: maps {m.shape} and guide {guide.shape} must both be N x H x W, same shape")
    if int(radius) != radius or radius < 1:
        raise SegmentError(f"guided radius={radius}: expected a whole number of pixels >= 1")
    if not eps > 0:
        raise SegmentError(f"guided eps={eps}: expected a positive number")
    dev, r = _device(device), int(radius)
    outs = tuple(np.empty(guide.shape, np.float32) for _ in maps)
    for s in range(0, len(guide), chunk):
        g = torch.from_numpy(np.asarray(guide[s:s + chunk], np.float32)).to(dev)
        mg = _box(g, r)
        var = _box(g * g, r) - mg * mg + eps
        for m, out in zip(maps, outs):
            x = torch.from_numpy(np.asarray(m[s:s + chunk], np.float32)).to(dev)
            mx = _box(x, r)
            a = (_box(g * x, r) - mg * mx) / var
            b = mx - a * mg
            out[s:s + chunk] = (_box(a, r) * g + _box(b, r)).cpu().numpy()
    return outs if isinstance(p, tuple) else outs[0]


def guide_images(images: np.ndarray, channel: int = GUIDE_CHANNEL) -> np.ndarray:
    """The guide for :func:`guided_filter`: one channel of uint8 N x H x W x 3 images (or their mean, -1) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or not -1 <= channel < images.shape[-1]:
        raise SegmentError(f"guide channel={channel}: expected -1 (mean) or a channel of images shaped {images.shape}")
    g = images.mean(-1) if channel == -1 else images[..., channel]
    return np.asarray(g, np.float32) / 255


def refine(heatmaps, images: np.ndarray, radius: int, eps: float = GUIDED_EPS, channel: int = GUIDE_CHANNEL,
           device=None):
    """A :class:`camseg_utils.cams.Heatmaps` refined by the guided filter (``radius`` 0: unchanged).

    Both scales are filtered: the raw map (clipped at 0, since the filter may undershoot) and the
    per-image map (clipped, then min-max normalised again, as pytorch-grad-cam scales its maps).
    """
    import torch

    from .cams import Heatmaps, check_pair, minmax

    if not radius:
        return heatmaps
    check_pair(images, heatmaps.heatmap)
    guide = guide_images(images, channel)
    raw, heat = guided_filter((heatmaps.raw_maps(), heatmaps.heatmap), guide, radius, eps, device)
    raw = np.clip(raw, 0, None)
    heat = minmax(torch.from_numpy(np.clip(heat, 0, None))).numpy()
    peak = raw.reshape(len(raw), -1).max(1) if raw.size else np.zeros(0, np.float32)
    return Heatmaps(heat, raw / np.maximum(peak, 1e-30)[:, None, None], peak.astype(np.float32),
                    dict(heatmaps.meta, guided_radius=int(radius), guided_eps=float(eps), guide_channel=int(channel)))


def raw_peaks(heatmaps) -> np.ndarray:
    return np.asarray(heatmaps.raw_peak, np.float32)


def _device(device):
    import torch

    return torch.device(device) if device is not None else torch.device("cpu")


def _check_top_ks(ks) -> None:
    for k in ks:
        if not 0 < k <= 100:
            raise SegmentError(f"top_k value={k}: expected a percentage in (0, 100]")


def _top_k_cuts(asc, inside, ks):
    """Per row the value of the k %-th highest pixel inside the head, for each k (n x K), and the head's size.

    ``asc``: each row's values sorted ascending with the pixels outside the head set to -inf.
    """
    import torch

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
    import torch

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
    import torch

    dev = _device(device)
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


def threshold_counts(heatmaps: np.ndarray, gt: np.ndarray, thresholds, heads: np.ndarray | None = None,
                     chunk: int = 64, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Per slice and threshold: |mask and truth| and |mask| for ``heatmap >= t`` (N x T each), in one pass."""
    return mask_counts(heatmaps, gt, thresholds, (), heads, chunk, device)


def sweep(
    heatmaps: np.ndarray, gt: np.ndarray, heads: np.ndarray, probs: np.ndarray, thresholds, top_ks,
    head_gates=(False, True), prob_gates=(0.0, 0.5), cleanups=(False,), patients: np.ndarray | None = None,
    device=None, select_by: str = "mean_dice", refine: int | None = 5,
) -> list[dict]:
    """Mean-Dice (and, given ``patients``, patient Dice) of every (rule, value, head gate, classifier
    gate, clean-up) on one split.

    Mask counts are made once per head gate on ``device`` (see :func:`mask_counts`); the classifier
    gate only empties whole slices, so it is applied to the per-slice counts afterwards. Clean-up
    works slice by slice on the CPU and costs far more than everything else, so with ``refine`` it
    is tried only on the ``refine`` best settings without it (by ``select_by``); ``refine=None``
    tries it on every setting.
    """
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        raise SegmentError("this split has no tumour slice: mean-Dice is undefined, nothing to choose a threshold on")
    if select_by not in ("mean_dice", "patient_dice") or (select_by == "patient_dice" and patients is None):
        raise SegmentError(f"select_by={select_by!r}: expected 'mean_dice', or 'patient_dice' with patients given")
    h = np.asarray(heatmaps, np.float32)
    g = gt.reshape(len(gt), -1).sum(1)
    if patients is not None:
        codes, pid = np.unique(np.asarray(patients), return_inverse=True)
        g_pat = np.bincount(pid, g, len(codes))

    def counts(masks):
        flat = masks.reshape(len(masks), -1)
        return (flat & gt.reshape(len(gt), -1)).sum(1), flat.sum(1)

    def score(sets, head, cleanup):
        rows = []
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

    rows = []
    for head in head_gates:
        hd = heads if head else None
        inter, pred = mask_counts(h, gt, thresholds, top_ks, hd, device=device)
        keys = [("threshold", float(t)) for t in thresholds] + [("top_k", float(k)) for k in top_ks]
        sets = {key: (inter[:, j], pred[:, j]) for j, key in enumerate(keys)}
        sets[("otsu", 0.0)] = counts(to_masks(h, "otsu", 0, hd))
        rows += score(sets, head, False)
    if any(cleanups):
        plain = sorted(rows, key=lambda r: -r[select_by])
        todo = []  # (rule, value, head gate) settings to try with clean-up
        for r in plain:
            key = (r["rule"], r["value"], r["head_gate"])
            if key not in todo and (refine is None or len(todo) < refine):
                todo.append(key)
        for head in head_gates:
            hd = heads if head else None
            sets = {(rule, value): counts(to_masks(h, rule, value, hd, cleanup=True))
                    for rule, value, hg in todo if hg == head}
            rows += score(sets, head, True)
    if all(cleanups):
        rows = [r for r in rows if r["cleanup"]]
    return rows


def sweep_settings(
    heatmaps, images: np.ndarray, gt: np.ndarray, heads: np.ndarray, probs: np.ndarray, thresholds, top_ks,
    normalisations=NORMALISATIONS, guided_radii=(0,), guided_eps: float = GUIDED_EPS,
    guide_channel: int = GUIDE_CHANNEL, device=None, **sweep_kw,
) -> list[dict]:
    """:func:`sweep` of a :class:`camseg_utils.cams.Heatmaps` on one (validation) split over every
    guided radius and heatmap scale as well. Each row carries what :func:`apply_setting` needs
    (``normalisation``, ``reference``, ``guided_radius``, ``guided_eps``, ``guide_channel``) and
    ``refine``: 'none' (radius 0, the heatmap alone) or 'guided'. The global scale's reference is
    taken after refining, from this split's raw peaks."""
    if not len(guided_radii) or any(int(r) != r or r < 0 for r in guided_radii):
        raise SegmentError(f"guided_radii={list(guided_radii)}: expected whole numbers of pixels >= 0 (0: no refinement)")
    rows = []
    for rad in guided_radii:
        h = refine(heatmaps, images, int(rad), guided_eps, guide_channel, device)
        ref = global_scale(raw_peaks(h))
        extra = {"guided_radius": int(rad), "guided_eps": float(guided_eps), "guide_channel": int(guide_channel),
                 "reference": ref, "refine": "guided" if rad else "none"}
        for nm in normalisations:
            rows += [dict(r, normalisation=nm, **extra)
                     for r in sweep(scaled_heatmaps(h, nm, ref), gt, heads, probs, thresholds, top_ks, device=device, **sweep_kw)]
    return rows


def best_settings(rows: list[dict], select_by: str = "mean_dice") -> dict[str, dict]:
    """The best row of :func:`sweep_settings` by ``select_by``, per ``refine`` kind ('none', 'guided')."""
    best: dict[str, dict] = {}
    for r in rows:
        k = r.get("refine", "none")
        if k not in best or r[select_by] > best[k][select_by]:
            best[k] = r
    return dict(sorted(best.items(), key=lambda kv: kv[0] != "none"))


def _shift_and(m: np.ndarray) -> np.ndarray:
    """Erosion of N x H x W masks by the 3 x 3 cross, pixels outside the image counted as background."""
    out = m.copy()
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[:, :, 1:] &= m[:, :, :-1]
    out[:, :, :-1] &= m[:, :, 1:]
    out[:, [0, -1]] = False
    out[:, :, [0, -1]] = False
    return out


def _shift_or(m: np.ndarray) -> np.ndarray:
    """Dilation of N x H x W masks by the 3 x 3 cross."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    out[:, :, 1:] |= m[:, :, :-1]
    out[:, :, :-1] |= m[:, :, 1:]
    return out


def clean_all(masks: np.ndarray) -> np.ndarray:
    """:func:`clean` of every slice of N x H x W masks, for the whole stack at once.

    The opening is done with shifted copies of the stack; components are labelled in one call with
    a structure that never connects neighbouring slices, and each slice keeps its largest one.
    """
    masks = np.asarray(masks, bool)
    if not len(masks):
        return masks
    opened = _shift_or(_shift_and(masks))
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(opened, structure)
    if n == 0:
        return opened
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)  # the slice each component lies in (its bounding box's first)
    owner[1:] = [box[0].start for box in ndimage.find_objects(lab)]
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

    Our design decision for the U-Net's masks (notebook 05 chooses the fraction on validation): an LGG
    tumour is one blob in 3-D, so specks elsewhere in the scan, which only patient Dice and the FP area
    see, are dropped. The CAM masks do without it: their largest blob is often not the tumour (on
    lgg_cpu's best settings it lowered validation mean-Dice, 0.563 -> 0.481 at 1.0).
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


def top_k_masks(heatmaps: np.ndarray, ks, heads: np.ndarray | None = None, device=None,
                chunk: int = 64) -> list[np.ndarray]:
    """``to_masks(heatmaps, 'top_k', k, heads)`` for several k with one sort of each slice's values."""
    import torch

    h = np.asarray(heatmaps, np.float32)
    _check_top_ks(ks)
    out = [np.zeros(h.shape, bool) for _ in ks]
    for i, ht, _, inside in _chunks(h, None, heads, chunk, _device(device)):
        cuts, size = _top_k_cuts(torch.where(inside, ht, float("-inf")).sort(dim=1).values, inside, ks)
        for j in range(len(ks)):
            m = (ht >= cuts[:, j:j + 1]) & (ht > 0) & inside & (size[:, None] > 0)
            out[j][i] = m.cpu().numpy().reshape((-1,) + h.shape[1:])
    return out
