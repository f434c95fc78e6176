"""Interactive views. Each widget wraps a plain render function that returns a Figure:
the function is what the tests and the headless pipeline call, the widget only moves
its arguments (ipywidgets swallows exceptions inside callbacks, so test the function)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import plots


def render_methods(image: np.ndarray, mask: np.ndarray, heatmaps: Mapping[str, np.ndarray],
                   title: str = "") -> plt.Figure:
    """One slice: the image, then each method's heatmap over it, all with the ground-truth outline."""
    n = len(heatmaps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.5), squeeze=False)
    plots.show_image(axes[0, 0], image, title or "image")
    plots.outline(axes[0, 0], mask)
    for ax, (name, hm) in zip(axes[0, 1:], heatmaps.items()):
        plots.show_image(ax, plots.overlay(image, hm), name)
        plots.outline(ax, mask, "white")
    fig.tight_layout()
    return fig


def render_threshold(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, predicted: np.ndarray,
                     threshold: float, title: str = "") -> plt.Figure:
    """Image, heatmap, the mask it gives at ``threshold`` and the ground truth, with the live Dice."""
    from .metrics import dice

    d = dice(predicted, mask)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
    plots.show_image(axes[0], image, title or "image")
    plots.outline(axes[0], mask)
    plots.show_image(axes[1], plots.overlay(image, heatmap), f"heatmap (threshold {threshold:.2f})")
    if heatmap.max() > 0:
        axes[1].contour(heatmap, levels=[threshold], colors=["white"], linewidths=0.8)
    rgb = np.zeros(mask.shape + (3,))
    rgb[predicted & mask] = (1, 1, 0)  # agreement: yellow
    rgb[predicted & ~mask] = (1, 0, 0)  # false positive: red
    rgb[~predicted & mask] = (0, 0.8, 0)  # missed: green
    plots.show_image(axes[2], rgb, "Dice n/a (no tumour)" if np.isnan(d) else f"Dice {d:.3f}")
    axes[2].text(0.02, 0.02, "yellow hit, red false +, green missed", color="w", fontsize=6,
                 transform=axes[2].transAxes)
    fig.tight_layout()
    return fig


def browse(render: Callable[..., plt.Figure], **controls) -> object:
    """``interact`` over ``render`` with the given controls (sliders, dropdowns); closes old figures."""
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()

    def update(**kwargs):
        with out:
            out.clear_output(wait=True)
            fig = render(**kwargs)
            display(fig)
            plt.close(fig)

    ui = w.interactive(update, **controls)
    box = w.VBox([w.HBox(ui.children[:-1], layout=w.Layout(flex_flow="row wrap")), out])
    ui.update()
    return box


def slice_slider(n: int, value: int = 0) -> object:
    import ipywidgets as w

    return w.IntSlider(value=value, min=0, max=max(0, n - 1), description="slice", continuous_update=False)


def dropdown(options: Sequence[str], description: str, value: str | None = None) -> object:
    import ipywidgets as w

    return w.Dropdown(options=list(options), value=value or options[0], description=description)
