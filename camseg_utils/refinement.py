"""Guided refinement of heatmaps: He et al.'s guided filter (ECCV 2010) re-draws a heatmap along the
edges of one image channel, and :func:`refine` applies it to both scales of a heatmap set.

Our design decision (not the paper's): a CAM comes from a feature map 2-32 x coarser than the image
(our zoo's early, middle and last blocks) and is bilinearly blown up, so its edges fall between
anatomy; the filter re-draws them along the guide's edges. The guide is one image channel
(``GUIDE_CHANNEL``: FLAIR, the sequence the LGG masks were drawn on, and the synthetic generator's
tumour-bright channel). It uses the image, not labels; notebook 05 chooses the radius on
validation, radius 0 meaning the heatmap alone.
"""

from __future__ import annotations

import numpy as np
import torch

from .cams import check_pair, minmax
from .device import as_device
from .heatmap_cache import Heatmaps
from .morphology import SegmentError

GUIDE_CHANNEL = 1  # pre-contrast, FLAIR, post-contrast; -1: the mean of the channels
GUIDED_EPS = 1e-3  # guide in [0, 1]: edges of contrast well above sqrt(1e-3) ~ 0.03 are kept


def _box1d(x, r: int, dim: int):
    """Mean over the 2r + 1 pixels around each one along ``dim`` (1 or 2) of N x H x W, clipped at the
    border: differences of a cumulative sum, so O(1) per pixel whatever r (float32 sums over one row
    or column are exact to ~1e-6 for values in [0, 1]).

    With c the cumulative sum and c[-1] = 0, pixel i's window sum is c[min(i + r, n - 1)] - c[i - r - 1]
    (the second term only where i > r): two shifted copies of c, taken as slices."""
    n = x.shape[dim]
    c = x.cumsum(dim).movedim(dim, 0)  # the summed axis first, so that slices along it are whole blocks
    s = torch.empty_like(c)
    m = max(n - r, 0)  # pixels whose window ends inside the image
    s[:m] = c[r:]
    s[m:] = c[n - 1]
    if r + 1 < n:
        s[r + 1:] -= c[:n - r - 1]
    i = torch.arange(n, device=x.device)
    count = ((i + r + 1).clamp(max=n) - (i - r).clamp(min=0)).to(x.dtype)
    return (s / count.view(n, *([1] * (c.dim() - 1)))).movedim(0, dim)


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
    maps = tuple(np.asarray(m) for m in p) if isinstance(p, tuple) else (np.asarray(p),)
    guide = np.asarray(guide)
    for m in maps:
        if m.ndim != 3 or m.shape != guide.shape:
            raise SegmentError(f"guided filter: maps {m.shape} and guide {guide.shape} must both be N x H x W, same shape")
    if int(radius) != radius or radius < 1:
        raise SegmentError(f"guided radius={radius}: expected a whole number of pixels >= 1")
    if not eps > 0:
        raise SegmentError(f"guided eps={eps}: expected a positive number")
    dev, r = as_device(device), int(radius)
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
    """A :class:`camseg_utils.heatmap_cache.Heatmaps` refined by the guided filter (``radius`` 0: unchanged).

    Both scales are filtered: the raw map (clipped at 0, since the filter may undershoot) and the
    per-image map (clipped, then min-max normalised again, as pytorch-grad-cam scales its maps).
    """
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
