"""The baseline heatmaps every CAM is compared with: random (chance) and Sobel edges (any structure).

Neither reads a classifier, so neither depends on a model, a layer or a fusion; they are scored
beside the CAMs by the same protocol. Apart from :mod:`.cams` because they share nothing with the
CAM methods but the heatmap convention (float in [0, 1] at the image's size, min-max normalised
per image by :func:`.cams.minmax`).
"""

from __future__ import annotations

import numpy as np
import torch

from .cams import bilinear_resize, minmax


def random_heatmaps(n: int, size: tuple[int, int], seed: int, offset: int = 0, cells: int = 8) -> np.ndarray:
    """Smooth random heatmaps (random values on a coarse grid, resized): the chance baseline.

    Image i gets the same map whatever the batch, from seed and its index ``offset + i``.
    """
    coarse = np.stack([np.random.default_rng([seed, offset + i]).random((cells, cells), dtype=np.float32)
                       for i in range(n)])
    return minmax(bilinear_resize(torch.from_numpy(coarse), size)).numpy()


def sobel_heatmaps(images: np.ndarray) -> np.ndarray:
    """Edge strength of the grey image (Sobel), min-max normalised: the 'any structure' baseline."""
    from skimage.filters import sobel

    grey = images.astype(np.float32).mean(-1) / 255
    return minmax(torch.from_numpy(np.stack([sobel(g) for g in grey]).astype(np.float32))).numpy()
