"""Figures shared by the notebooks. Each function returns a matplotlib Figure and,
given ``path``, saves it there (atomically) so the pipeline regenerates figures/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from .io import atomic_path


def save(fig: plt.Figure, path: str | Path | None, dpi: int = 110) -> plt.Figure:
    if path is not None:
        path = Path(path)
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return fig


def outline(ax: plt.Axes, mask: np.ndarray, color: str = "lime", lw: float = 1.0) -> None:
    """Draw the outline of a bool mask on ``ax``."""
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw)


def show_image(ax: plt.Axes, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def sample_grid(images: np.ndarray, masks: np.ndarray, titles: list[str], cols: int = 6,
                path: str | Path | None = None) -> plt.Figure:
    """Slices with the ground-truth outline in green."""
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, m, t in zip(axes.flat, images, masks, titles):
        show_image(ax, img, t)
        outline(ax, m)
    fig.tight_layout()
    return save(fig, path)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """An RGB float image: ``heatmap`` in [0, 1] blended over a uint8 image."""
    colours = plt.get_cmap(cmap)(np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image / 255.0 + alpha * colours, 0, 1)


def boundaries(mask: np.ndarray) -> np.ndarray:
    return find_boundaries(mask, mode="inner")


def tumour_sizes(manifest: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    import seaborn as sns

    df = manifest[manifest["tumour"]].copy()
    size = manifest.attrs.get("image_size")
    df["area_pct"] = 100 * df["tumour_pixels"] / (size * size if size else df["tumour_pixels"].max())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.histplot(data=df, x="area_pct", hue="split", hue_order=["train", "val", "test"], bins=40,
                 element="step", log_scale=(True, False), ax=ax)
    ax.set_xlabel("tumour area (% of slice, log scale)")
    ax.set_ylabel("tumour slices")
    fig.tight_layout()
    return save(fig, path)
