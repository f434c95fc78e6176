"""Figures shared by the notebooks. Each function returns a matplotlib Figure and,
given ``path``, saves it there (atomically) so the pipeline regenerates figures/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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


def training_curves(histories: dict[str, list[dict]], path: str | Path | None = None) -> plt.Figure:
    """Loss (train and validation) and validation ROC AUC per epoch, one line per architecture."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for arch, hist in histories.items():
        h = pd.DataFrame(hist)
        line = axes[0].plot(h.epoch, h.train_loss, label=f"{arch} train")[0]
        axes[0].plot(h.epoch, h.val_loss, "--", color=line.get_color(), label=f"{arch} val")
        axes[1].plot(h.epoch, h.val_auc, color=line.get_color(), label=arch)
    axes[0].set(xlabel="epoch", ylabel="loss")
    axes[1].set(xlabel="epoch", ylabel="validation ROC AUC")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path | None = None) -> plt.Figure:
    """ROC curves on the test split: ``curves`` maps a label to (labels, tumour probabilities)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="test split")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def confusion(cm: list[list[int]], title: str, ax: plt.Axes) -> None:
    import seaborn as sns

    sns.heatmap(np.asarray(cm), annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax,
                xticklabels=["no tumour", "tumour"], yticklabels=["no tumour", "tumour"])
    ax.set(xlabel="predicted", ylabel="true", title=title)
