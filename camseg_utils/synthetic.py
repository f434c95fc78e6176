"""The embedded default: synthetic brain slices with tumours and exact masks (no download)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .dataset import DataError, Dataset, finish_manifest


def generate_synthetic(
    n_patients: int = 40,
    size: int = 128,
    slices: tuple[int, int] = (18, 30),
    seed: int = 0,
    tumour_free_patients: float = 0.1,
    progress: bool = False,
) -> Dataset:
    """The embedded default: brain-like axial slices with tumours and exact masks.

    Each patient is a short stack of consecutive slices through one synthetic head
    (skull, brain, ventricles, smooth tissue texture, a scanner-like intensity bias).
    Channels imitate pre-contrast / FLAIR / post-contrast MRI: the tumour is bright on
    FLAIR, slightly dark before contrast and enhances after contrast in some patients.
    Tumours are 3-D blobs of varied size (some only a few pixels wide), shape and
    contrast; the mask is exactly where the tumour was painted, restricted to the brain.
    Patients belong to four synthetic sites whose noise and bias differ, so the split
    can be stratified by site like LGG by institution. Deterministic for a given seed.
    """
    if n_patients < 3:
        raise DataError(f"n_patients={n_patients}: need at least 3 patients for a train/val/test split")
    if size < 32:
        raise DataError(f"size={size}: synthetic slices must be at least 32 x 32")
    lo, hi = slices
    if not 3 <= lo <= hi:
        raise DataError(f"slices={slices}: expected (min, max) with 3 <= min <= max")
    images, masks, rows = [], [], []
    it = range(n_patients)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="generating synthetic patients")
    for p in it:
        rng = np.random.default_rng([seed, p])
        site = "ABCD"[p % 4]
        img, msk = _synthetic_patient(rng, size, int(rng.integers(lo, hi + 1)), site, tumour_free_patients)
        images.append(img)
        masks.append(msk)
        for s in range(len(img)):
            rows.append(
                {
                    "patient": f"SYN_{site}_{p:03d}",
                    "case": f"SYN_{site}_{p:03d}",
                    "institution": site,
                    "slice": s + 1,
                    "image_path": "",
                    "mask_path": "",
                }
            )
    images = np.concatenate(images)
    masks = np.concatenate(masks)
    return Dataset(images, masks, finish_manifest(pd.DataFrame(rows), masks))


_SITE_NOISE = {"A": 0.02, "B": 0.035, "C": 0.025, "D": 0.045}
_SITE_BIAS = {"A": 0.10, "B": 0.20, "C": 0.15, "D": 0.25}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def _synthetic_patient(
    rng: np.random.Generator, size: int, depth: int, site: str, p_free: float
) -> tuple[np.ndarray, np.ndarray]:
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    z = np.linspace(0.08, 0.92, depth, dtype=np.float32)  # position of each slice through the head
    cx, cy = s / 2 + rng.normal(0, 0.03 * s, 2)
    a, b = s * rng.uniform(0.33, 0.40), s * rng.uniform(0.38, 0.45)  # head semi-axes
    theta = rng.uniform(-0.25, 0.25)
    ct, st = np.cos(theta), np.sin(theta)
    u = ((xx - cx) * ct + (yy - cy) * st)[None]
    v = (-(xx - cx) * st + (yy - cy) * ct)[None]
    # heads narrow towards the top and bottom of the stack
    scale = np.sqrt(np.clip(1 - ((z - 0.5) / 0.62) ** 2, 0.2, 1))[:, None, None]
    r = (u / (a * scale)) ** 2 + (v / (b * scale)) ** 2
    head = r < 1
    brain = r < (1 - rng.uniform(0.06, 0.1)) ** 2
    skull = head & ~brain
    # two ventricles, largest in the middle slices
    vent_size = np.clip(1 - ((z - 0.5) / 0.3) ** 2, 0, 1)[:, None, None]
    vent = np.zeros_like(head)
    for side in (-1, 1):
        vr = ((u - side * 0.12 * a) / (0.07 * a + 1e-3)) ** 2 + (v / (0.28 * b + 1e-3)) ** 2
        vent |= (vr < vent_size) & brain
    texture = _smooth_noise(rng, (depth, size, size), (1.0, 0.02 * s, 0.02 * s))
    fine = _smooth_noise(rng, (depth, size, size), (0.5, 0.6, 0.6))
    gm = 0.5 + 0.05 * texture + 0.02 * fine  # tissue with grey/white-matter-like variation
    # scanner bias: a smooth multiplicative field, stronger at some sites
    bx, by = rng.normal(0, _SITE_BIAS[site], 2)
    bias = 1 + bx * (xx - cx) / s + by * (yy - cy) / s
    # the tumour: a lumpy ellipsoid, from a few pixels to a fifth of the head
    tumour = np.zeros_like(head)
    flair_gain = pre_gain = post_gain = 0.0
    weight = np.zeros(head.shape, np.float32)
    if rng.random() >= p_free:
        kind = rng.choice(["tiny", "small", "medium", "large"], p=[0.15, 0.3, 0.35, 0.2])
        radius = {"tiny": (0.015, 0.03), "small": (0.03, 0.06), "medium": (0.06, 0.11), "large": (0.11, 0.18)}[kind]
        rx, ry = s * rng.uniform(*radius, 2)
        rz = max(1.0, rng.uniform(0.2, 0.4) * depth * (rx + ry) / (0.25 * s))
        z0 = rng.uniform(0.25, 0.75) * (depth - 1)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.55)
        tx, ty = cx + rad * a * np.cos(ang), cy + rad * b * np.sin(ang)
        lumps = _smooth_noise(rng, (depth, size, size), (1.0, max(1.0, rx / 2), max(1.0, ry / 2)))
        zz = np.arange(depth, dtype=np.float32)[:, None, None]
        f = ((xx - tx) / rx) ** 2 + ((yy - ty) / ry) ** 2 + ((zz - z0) / rz) ** 2 + 0.25 * lumps
        tumour = (f < 1) & brain
        weight = np.where(tumour, np.sqrt(np.clip(1 - f, 0, 1)) * 0.6 + 0.4, 0).astype(np.float32)
        flair_gain = rng.uniform(0.12, 0.4)
        pre_gain = -rng.uniform(0.03, 0.12)
        post_gain = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else 0.0
    noise = _SITE_NOISE[site]
    chans = []
    for brain_v, vent_v, skull_v, gain in (
        (0.45, 0.22, 0.75, pre_gain), (0.5, 0.12, 0.35, flair_gain), (0.47, 0.22, 0.7, post_gain)
    ):
        c = np.where(brain, gm * (brain_v / 0.5), 0.0)
        c = np.where(vent, vent_v, c)
        c = np.where(skull, skull_v, c)
        c = c + gain * weight
        c = c * bias[None] * head
        c = c + head * rng.normal(0, noise, head.shape).astype(np.float32)
        chans.append(c)
    img = np.clip(np.stack(chans, -1), 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), tumour
