"""pytorch-grad-cam's heatmaps, the reference the device path (:mod:`.cams`) is tested against.

``engine='library'`` in :mod:`.heatmap_cache` computes the study's heatmaps this way, and the tests
and ``benchmarks/bench_cams.py`` compare the two method by method. Apart from :mod:`.cams` because it
is a second implementation of the same maps, kept only as the reference: it wraps the library's
classes (recording each layer's un-normalised map as the library computes it) and imports the
library only when called.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .cams import FUSIONS, TUMOUR, CamError, bilinear_resize, minmax


def _library_class(method: str) -> type:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.random_cam import RandomCAM

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
               "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "scorecam": pgc.ScoreCAM,
               "eigencam": pgc.EigenCAM, "randomcam": RandomCAM}
    base = classes[method]

    class WithRaw(base):  # records each layer's un-normalised map as the library computes it
        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.raw_maps.append(np.maximum(cam, 0))
            return cam

    return WithRaw


def library_cams(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, method: str, fuse: str = "mean",
    target: int = TUMOUR, batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's heatmaps (the reference): (heatmap, raw), each N x H x W float32."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if fuse not in FUSIONS:
        raise CamError(f"unknown fusion {fuse!r}; expected one of {FUSIONS}")
    cls = _library_class(method)
    size = tuple(x.shape[-2:])
    groups = [list(layers)] if fuse == "mean" else [[layer] for layer in layers]
    heats, raws = [], []
    for group in groups:
        with cls(model=model, target_layers=group) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = batch_size  # ScoreCAM's inner batch
            cam.raw_maps = []
            heats.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x)))
            raws.extend(bilinear_resize(torch.from_numpy(np.asarray(r, np.float32)), size) for r in cam.raw_maps)
    raw = torch.stack(raws)
    raw = raw.amax(0) if fuse == "max" else raw.mean(0)
    if fuse == "max":
        heat = minmax(torch.from_numpy(np.stack(heats)).amax(0)).numpy()
    else:
        heat = heats[0]
    return heat.astype(np.float32), raw.numpy()
