"""The figures of notebook 05 (how good the masks are): Dice against the threshold, per-patient Dice, masks side
by side, paired differences.

Apart from :mod:`.plots` because they score masks (:mod:`.metrics`): the other stages' figures do not
depend on how Dice is computed, so a change there re-runs only what it touches.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .metrics import dice
from .plots import outline, save, show_image


def dice_vs_threshold(curves: pd.DataFrame, results: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Validation mean-Dice against the threshold (best over gates and scales), one facet per (arch, layer),
    with the chosen threshold settings circled."""
    import seaborn as sns

    thr = curves[curves.rule == "threshold"]
    best_thr = thr.groupby(["arch", "method", "layer", "refinement", "value"], as_index=False).mean_dice.max()
    g = sns.relplot(data=best_thr, x="value", y="mean_dice", hue="method", style="refinement", col="layer", row="arch",
                    kind="line", marker="o", height=3, aspect=1.2)
    for (arch, layer), ax in g.axes_dict.items():  # facets are (row=arch, col=layer)
        sel = results[(results.arch == arch) & (results.layer == layer) & (results.rule == "threshold")]
        ax.scatter(sel.value, sel.val_mean_dice, s=80, facecolors="none", edgecolors="k", zorder=5)
    g.set_axis_labels("threshold", "validation mean-Dice\n(best over gates and scales)")
    return save(g.figure, path)


def masks_side_by_side(images: np.ndarray, gt: np.ndarray, masks: dict[str, np.ndarray], picks,
                       path: str | Path | None = None) -> plt.Figure:
    """Rows of slices ``picks``: the image, the ground truth, then each named set of masks with its Dice."""
    panels = [("image", None), ("ground truth", gt)] + list(masks.items())
    fig, axes = plt.subplots(len(picks), len(panels), figsize=(2 * len(panels), 2 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        for c, (name, m) in enumerate(panels):
            show_image(axes[r, c], images[i], name if r == 0 else None)
            if m is not None:
                axes[r, c].imshow(np.ma.masked_where(~m[i], m[i]), cmap="autumn", alpha=0.6)
                outline(axes[r, c], gt[i])
            if c >= 2:
                axes[r, c].set_xlabel(f"Dice {dice(m[i], gt[i]):.2f}", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def patient_dice(per_patient: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """3-D Dice per test patient (:func:`.protocol.patient_frames`), one box per model, best mean first,
    coloured by kind (CAM, baseline, U-Net)."""
    import seaborn as sns

    per_patient = per_patient.reset_index(drop=True)  # one row per (model, patient): seaborn wants unique labels
    order = per_patient.groupby("model").patient_dice.mean().sort_values(ascending=False).index
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1))
    sns.boxplot(data=per_patient, y="model", x="patient_dice", hue="kind", order=order, ax=ax, dodge=False)
    ax.set(xlabel="3-D Dice per test patient", ylabel="")
    fig.tight_layout()
    return save(fig, path)


def by_tumour_size(manifest: pd.DataFrame, n: int = 4) -> np.ndarray:
    """Positions of ``n`` slices with tumour, evenly spread from the smallest tumour to the largest."""
    tumour = np.flatnonzero(manifest.tumour.to_numpy())
    if not len(tumour):
        raise ValueError(f"the manifest ({len(manifest)} slices) has no slice with tumour to show")
    return tumour[np.argsort(manifest.tumour_pixels.to_numpy()[tumour])][np.linspace(0, len(tumour) - 1, n).astype(int)]


def paired_differences(comparisons: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Each paired comparison (:func:`.paired.compare`) as its difference a - b with the patient-bootstrap CI,
    one panel per metric; an interval clear of zero is a difference the test patients support."""
    metrics_ = list(dict.fromkeys(comparisons.metric))
    fig, axes = plt.subplots(1, len(metrics_), figsize=(4.5 * len(metrics_), 0.5 * comparisons.comparison.nunique() + 1.2),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics_):
        rows = comparisons[comparisons.metric == metric].reset_index(drop=True)
        lo, hi = np.array([c[0] for c in rows.ci]), np.array([c[1] for c in rows.ci])
        y = np.arange(len(rows))[::-1]
        d = rows.difference.to_numpy(float)
        # a percentile interval need not hold the point (few patients, or rounding when every difference is
        # equal): the bar then ends at the point rather than pointing backwards
        ax.errorbar(d, y, xerr=[np.clip(d - lo, 0, None), np.clip(hi - d, 0, None)], fmt="o", color="k", capsize=3)
        ax.plot(np.c_[lo, hi].T, np.c_[y, y].T, color="k", lw=1)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(y, list(rows.comparison), fontsize=8)  # a and b by name: the table beside it
        ax.set(xlabel=f"{'mean-Dice' if metric == 'mean_dice' else 'patient Dice'} difference, a - b (95 % CI)")
    fig.tight_layout()
    return save(fig, path)
