"""The figures of notebook 06 (filtered re-training): re-trained ROC AUC against k and per soft filter, each beside
the shape-only control, and one test slice under every filter.

Apart from :mod:`.plots` because they read the experiment's runs table and draw its filters (:mod:`.retrain`,
:mod:`.filtering`): the other stages' figures do not depend on those, so a change there re-runs only notebook 06.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import filtering
from .dataset import Dataset
from .plots import save, show_image
from .retrain import SHAPE_HARD, SHAPE_SOFT, resize_images, resize_maps


def _beside_shape(runs: pd.DataFrame, filters: Sequence[str], shape: str, fills: Sequence[dict]) -> pd.DataFrame:
    """The runs of ``filters`` on images (re-trained, and the original classifier), then the shape-only runs of
    ``shape`` repeated under each filter and fill, so that each facet shows its control."""
    img, shp, org = (runs[runs.input == i] for i in ("image", "shape", "original"))
    return pd.concat([img[img["filter"].isin(filters)], org[org["filter"].isin(filters)]]
                     + [shp[shp["filter"] == shape].assign(filter=f, **fill) for f in filters for fill in fills])


def accuracy_vs_k(runs: pd.DataFrame, imputations: Sequence[str], path: str | Path | None = None) -> plt.Figure:
    """The hard filters: test ROC AUC against the share k of pixels kept or removed, one facet per filter and fill;
    solid: re-trained on the filtered images, dashed: on the mask alone, dotted: the original classifier."""
    import seaborn as sns

    hard = _beside_shape(runs, filtering.HARD, SHAPE_HARD, [{"imputation": i} for i in imputations])
    g = sns.relplot(data=hard, x="k", y="auc", hue="heatmap", style="input", col="filter", row="imputation", kind="line",
                    marker="o", errorbar="sd", height=2.6, aspect=1.3, dashes={"image": "", "shape": (4, 2), "original": (1, 2)})
    for ax in g.axes.flat:
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set(ylabel="test ROC AUC")
    return save(g.figure, path)


def keep_hot_vs_dark(runs: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """The soft filters: test ROC AUC of keep-hot and keep-dark per heatmap, beside the weight map alone."""
    import seaborn as sns

    soft = _beside_shape(runs, filtering.SOFT, SHAPE_SOFT, [{}])
    g = sns.catplot(data=soft, x="filter", y="auc", hue="input", col="heatmap", kind="bar", errorbar="sd", height=2.8, aspect=0.9)
    g.set_axis_labels("", "test ROC AUC")
    return save(g.figure, path)


def filtered_examples(test: Dataset, heatmaps: np.ndarray, k: float, fill: np.ndarray, imputations: Sequence[str],
                      noise: float, size: int | None, path: str | Path | None = None) -> plt.Figure:
    """The first test slice with tumour at the re-training ``size``: as it is, under each soft filter, each hard
    filter at ``k`` with each fill, and the shape-only image of keeping the hottest k %."""
    i = int(np.argmax(test.manifest.tumour.to_numpy()))
    x = resize_images(test.images[i:i + 1], size)
    hm = resize_maps(heatmaps[i:i + 1], size)
    shows = [("image", x)] + [(kind, filtering.filter_images(x, hm, kind)) for kind in filtering.SOFT]
    shows += [(f"{kind} {k:g} {imp}", filtering.filter_images(x, hm, kind, k, fill, imp, noise))
              for kind in filtering.HARD for imp in imputations]
    shows += [(f"shape only {k:g}", filtering.shape_images(hm, "keep", k))]
    fig, axes = plt.subplots(1, len(shows), figsize=(1.9 * len(shows), 2.3))
    for ax, (title, im) in zip(axes, shows):
        show_image(ax, im[0], title)
    fig.tight_layout()
    return save(fig, path)
