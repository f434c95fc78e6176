"""Heatmap-filtered images, and the filters' shape alone, for the re-training test of the heatmaps.

Our design decisions (not the paper's):
- soft ``keep_hot`` = image x heatmap, soft ``keep_dark`` = image x (1 - heatmap);
- hard ``keep`` / ``remove``: keep only, or remove only, the top k % of a slice's pixels by
  heatmap (exactly round(k % of H x W) pixels, ties broken by position); the removed pixels are
  filled by one of two ``IMPUTATIONS``:
  - ``mean``: the training split's per-channel mean, the ROAR / keep-and-retrain protocol of
    Hooker et al. 2019. The filled region is flat, so its outline (the heatmap's shape) is drawn
    sharply in the filtered image;
  - ``nli``: noisy linear imputation (Rong et al., ICML 2022, ROAD): every removed pixel is the
    weighted mean of its 8 neighbours (edge neighbours 1/6, diagonal 1/12, renormalised over
    those inside the image), all removed pixels of a slice solved together as one sparse linear
    system, plus a little Gaussian noise. The fill continues the surrounding intensities, so
    the outline is far harder to see;
- the soft filters have no imputed counterpart: they scale the image's local contrast by the
  weight map everywhere, so the map can be read off any soft-filtered image whatever is added
  to it. Only the shape-only control (:func:`shape_images`) guards them;
- the control: the same filters driven by random heatmaps.
"""

from __future__ import annotations

import numpy as np

from .cams import check_pair

SOFT = ("keep_hot", "keep_dark")
HARD = ("keep", "remove")
IMPUTATIONS = ("mean", "nli")
NLI_NOISE = 0.01  # noise sd of the imputed pixels, as a share of the 0..255 range (ROAD uses 0.01)
# the 8 neighbours (dy, dx) and their weights: edge neighbours twice the diagonal ones (ROAD's 1/6 and 1/12)
NEIGHBOURS = ((-1, 0, 2.0), (1, 0, 2.0), (0, -1, 2.0), (0, 1, 2.0), (-1, -1, 1.0), (-1, 1, 1.0), (1, -1, 1.0), (1, 1, 1.0))


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


def removed_pixels(heatmaps: np.ndarray, kind: str, k: float) -> np.ndarray:
    """Bool N x H x W: the pixels a hard filter removes (``keep``: all but the top k %; ``remove``: the top k %)."""
    if kind not in HARD:
        raise ValueError(f"filter {kind!r} removes no pixels; hard filters are {HARD}")
    top = top_k_mask(heatmaps, k)
    return ~top if kind == "keep" else top


def _imputation_system(removed: np.ndarray):
    """The sparse system A x = W of all removed pixels of N x H x W ``removed``, block-diagonal over slices.

    Row i says deg_i x_i - sum_(removed j) w_ij x_j = sum_(kept j) w_ij v_j (deg_i: the weight of i's
    neighbours inside the image), i.e. x_i is the weighted mean of its neighbours. A is symmetric and,
    where every slice keeps a pixel, positive definite. Returns (A, B, flat indices of the unknowns), where
    B (sparse, unknowns x all pixels) gives the right-hand side as B @ values.
    """
    import scipy.sparse as sp

    n, h, w = removed.shape
    flat = np.flatnonzero(removed.ravel())
    unknown = np.full(removed.size, -1, np.int64)
    unknown[flat] = np.arange(len(flat))
    s, rest = np.divmod(flat, h * w)
    y, x = np.divmod(rest, w)
    deg = np.zeros(len(flat))
    a_rows, a_cols, a_vals, b_rows, b_cols, b_vals = [], [], [], [], [], []
    for dy, dx, wt in NEIGHBOURS:
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        deg[inside] += wt
        rows = np.flatnonzero(inside)
        nb = (s[inside] * h + yy[inside]) * w + xx[inside]
        j = unknown[nb]
        free = j >= 0
        a_rows.append(rows[free]), a_cols.append(j[free]), a_vals.append(np.full(free.sum(), -wt))
        b_rows.append(rows[~free]), b_cols.append(nb[~free]), b_vals.append(np.full((~free).sum(), wt))
    m = len(flat)
    idx = np.arange(m)
    a = sp.csc_matrix((np.concatenate(a_vals + [deg]), (np.concatenate(a_rows + [idx]), np.concatenate(a_cols + [idx]))),
                      shape=(m, m))
    b = sp.csr_matrix((np.concatenate(b_vals), (np.concatenate(b_rows), np.concatenate(b_cols))), shape=(m, removed.size))
    return a, b, flat


def noisy_linear_imputation(images: np.ndarray, removed: np.ndarray, noise: float = NLI_NOISE, seed: int = 0,
                            empty_fill: np.ndarray | None = None, chunk: int = 64) -> np.ndarray:
    """Float32 N x H x W x 3 (0..255): ``images`` with their ``removed`` pixels (bool N x H x W) imputed.

    Each removed pixel becomes the weighted mean of its neighbours (``NEIGHBOURS``), removed ones
    included, solved jointly per slice (scipy.sparse: the system of ``chunk`` slices assembled at once, factorised slice
    by slice, the three channels as three right-hand sides), plus Gaussian noise of sd ``noise`` x 255 drawn
    from ``seed``. A slice with nothing kept has nothing to impute from: it takes ``empty_fill``
    (per-channel, 0..255), and without one it is an error.
    """
    from scipy.sparse.linalg import splu

    images, removed = np.asarray(images), np.asarray(removed, bool)
    if images.ndim != 4 or images.shape[-1] != 3 or removed.shape != images.shape[:3]:
        raise ValueError(f"noisy linear imputation: images {images.shape} must be N x H x W x 3 and removed "
                         f"{removed.shape} N x H x W, the same slices")
    if not noise >= 0:
        raise ValueError(f"noise={noise}: expected a standard deviation >= 0 (a share of the 0..255 range)")
    out = images.astype(np.float32)  # a copy
    empty = removed.reshape(len(removed), -1).all(1)
    if empty.any():
        if empty_fill is None:
            raise ValueError(f"noisy linear imputation: slices {np.flatnonzero(empty)[:5].tolist()} keep no pixel, so "
                             f"there is nothing to impute from; pass empty_fill (the per-channel fill for them)")
        out[empty] = np.asarray(empty_fill, np.float32).reshape(1, 1, 3)
    rng = np.random.default_rng(seed)
    todo = np.flatnonzero(~empty & removed.reshape(len(removed), -1).any(1))
    for start in range(0, len(todo), chunk):
        sel = todo[start:start + chunk]
        a, b, flat = _imputation_system(removed[sel])
        rhs = np.asarray(b @ out[sel].reshape(-1, 3).astype(np.float64))
        # one factorisation per slice: the system is block-diagonal, and SuperLU orders small blocks better
        ends = np.cumsum(removed[sel].reshape(len(sel), -1).sum(1))
        solved = np.empty_like(rhs)
        for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends):
            solved[lo:hi] = splu(a[lo:hi, lo:hi], permc_spec="MMD_AT_PLUS_A",
                                 options={"SymmetricMode": True}).solve(rhs[lo:hi])
        if noise:
            solved += rng.normal(0.0, noise * 255, solved.shape)
        block = out[sel].reshape(-1, 3)
        block[flat] = solved
        out[sel] = block.reshape(out[sel].shape)
    return out


def _fill_value(fill, kind: str) -> np.ndarray:
    if fill is None:
        raise ValueError(f"the hard filter {kind!r} needs fill: the training split's per-channel mean (0..255)")
    fill = np.asarray(fill, np.float32).reshape(-1)
    if fill.shape != (3,):
        raise ValueError(f"fill {fill.shape}: expected 3 per-channel values (0..255)")
    return fill


def filter_images(images: np.ndarray, heatmaps: np.ndarray, kind: str, k: float = 0.0,
                  fill: np.ndarray | None = None, imputation: str = "mean", noise: float = NLI_NOISE,
                  seed: int = 0) -> np.ndarray:
    """uint8 N x H x W x 3 images filtered by N x H x W heatmaps in [0, 1].

    Hard filters need ``fill`` (the training split's per-channel mean, 0..255) and fill the removed
    pixels by ``imputation`` ('mean' or 'nli'; the latter uses ``noise`` and ``seed``); the soft
    filters take neither.
    """
    check_pair(images, heatmaps)
    img = np.asarray(images, np.float32)
    h = np.asarray(heatmaps, np.float32)[..., None]
    if kind == "keep_hot":
        out = img * h
    elif kind == "keep_dark":
        out = img * (1 - h)
    elif kind in HARD:
        if imputation not in IMPUTATIONS:
            raise ValueError(f"imputation={imputation!r}: expected one of {IMPUTATIONS}")
        value = _fill_value(fill, kind)
        removed = removed_pixels(heatmaps, kind, k)
        if imputation == "mean":
            out = np.where(removed[..., None], value.reshape(1, 1, 1, 3), img)
        else:
            out = noisy_linear_imputation(img, removed, noise, seed, empty_fill=value)
    else:
        raise ValueError(f"unknown filter {kind!r}; expected one of {SOFT + HARD}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def shape_images(heatmaps: np.ndarray, kind: str, k: float = 0.0) -> np.ndarray:
    """uint8 N x H x W x 3 grey images of what a filter does, without any image content.

    Soft filters: the weight map (``keep_hot``: the heatmap, ``keep_dark``: 1 - heatmap) x 255; hard
    filters: the kept pixels white, the removed ones black. The control for a filtered image's
    reading: a classifier re-trained on these sees only the heatmap's shape.
    """
    h = np.asarray(heatmaps, np.float32)
    if h.ndim != 3:
        raise ValueError(f"heatmaps {h.shape}: expected N x H x W")
    if kind == "keep_hot":
        grey = h
    elif kind == "keep_dark":
        grey = 1 - h
    elif kind in HARD:
        grey = (~removed_pixels(h, kind, k)).astype(np.float32)
    else:
        raise ValueError(f"unknown filter {kind!r}; expected one of {SOFT + HARD}")
    g = np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def conditions(ks, imputations=("mean",)) -> list[tuple[str, float, str]]:
    """Every (filter, k, imputation) of the study: the two soft filters (imputation '-'), then keep and
    remove for each k and each imputation."""
    bad = [i for i in imputations if i not in IMPUTATIONS]
    if bad or not imputations:
        raise ValueError(f"imputations={list(imputations)}: expected a non-empty list from {IMPUTATIONS}")
    return [(s, 0.0, "-") for s in SOFT] + [(h, float(k), i) for h in HARD for k in ks for i in imputations]
