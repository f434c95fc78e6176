"""Heatmaps: CAM methods through pytorch-grad-cam, a batched on-device fast path, baselines, a disk cache.

Convention: a heatmap is float in [0, 1] at the image's height and width, for the tumour
class (index 1), min-max normalised per image exactly as pytorch-grad-cam does. Because
that normalisation makes every tumour-free slice look hot, the un-normalised ("raw") map is
kept too: ReLU of the method's weighted activations, bilinearly resized to the image.

The fast path (GradCAM, GradCAM++, HiResCAM, XGradCAM, LayerCAM) runs one forward pass and
one backward pass that stops at the target layer(s) (``torch.autograd.grad`` w.r.t. the
activations, not the weights), keeps everything on the device and resizes the whole batch
at once. pytorch-grad-cam stays the reference (tests compare the two) and serves every
other method.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import to_tensor
from .io import file_sha256, read_json, write_json
from .models import get_layer, resolve_layer

TUMOUR = 1
FAST_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")
LIBRARY_ONLY = ("scorecam", "eigencam", "randomcam")
BASELINES = ("random", "sobel")
METHODS = FAST_METHODS + LIBRARY_ONLY + BASELINES
FUSIONS = ("mean", "max")
CACHE_FORMAT = 2  # bump when what a cache entry holds changes: older entries are recomputed


class CamError(ValueError):
    """Unknown method, layer or fusion, or heatmaps that do not fit their images."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise CamError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    return method


def parse_layers(arch: str, layers: str | Sequence[str]) -> list[str]:
    """'middle', 'last', 'layer3', 'layer3+layer4' or a list -> block names (errors list the options)."""
    names = layers.split("+") if isinstance(layers, str) else list(layers)
    if not names:
        raise CamError("no target layer given")
    return [resolve_layer(arch, n.strip()) for n in names]


class _Classifier(nn.Module):
    """Normalisation + classifier, so CAM code takes uint8 or 0..1 images."""

    def __init__(self, model: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.model, self.norm = model, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x))


# ------------------------------------------------------------- normalisation


def minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1] over the last two axes (pytorch-grad-cam's scale_cam_image); zeros stay zeros."""
    flat = cam.flatten(-2)
    lo = flat.min(-1).values[..., None, None]
    cam = cam - lo
    return cam / (1e-7 + cam.flatten(-2).max(-1).values[..., None, None])


def _resize(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    # bilinear with half-pixel centres and no antialiasing, as cv2.resize(INTER_LINEAR)
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


# ------------------------------------------------------------------ fast path


def _cam_from(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weighted activation map (before ReLU) of one gradient method; a, g: N x C x h x w."""
    if method == "gradcam":
        return (g.mean((2, 3), keepdim=True) * a).sum(1)
    if method == "hirescam":
        return (g * a).sum(1)
    if method == "layercam":
        return (g.clamp_min(0) * a).sum(1)
    sum_a = a.sum((2, 3), keepdim=True)
    if method == "xgradcam":
        return ((g * a / (sum_a + 1e-7)).sum((2, 3), keepdim=True) * a).sum(1)
    if method == "gradcam++":
        g2 = g * g
        aij = g2 / (2 * g2 + sum_a * g2 * g + 1e-6)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        return ((g.clamp_min(0) * aij).sum((2, 3), keepdim=True) * a).sum(1)
    raise CamError(f"{method!r} has no fast path; fast methods: {', '.join(FAST_METHODS)}")


def activations_and_gradients(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, target: int = TUMOUR
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """One forward pass and a backward pass only as far as ``layers`` (the fast path's floor)."""
    acts: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, i, o: acts.append(o)) for layer in layers]
    try:
        with torch.enable_grad():
            logits = model(x)
            grads = torch.autograd.grad(logits[:, target].sum(), acts)
    finally:
        for h in handles:
            h.remove()
    return [a.detach() for a in acts], [g.detach() for g in grads], logits.detach()


def fast_cams(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, method: str, fuse: str = "mean",
    target: int = TUMOUR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched heatmaps on x's device: (heatmap in [0, 1], raw map, logits), each N x H x W (logits N x 2).

    Reproduces pytorch-grad-cam: per layer, ReLU, min-max, bilinear resize; then the layers
    are fused (mean as the library does, or max) and min-max normalised again.
    """
    if fuse not in FUSIONS:
        raise CamError(f"unknown fusion {fuse!r}; expected one of {FUSIONS}")
    size = tuple(x.shape[-2:])
    acts, grads, logits = activations_and_gradients(model, layers, x, target)
    scaled, raws = [], []
    for a, g in zip(acts, grads):
        cam = _cam_from(method, a.float(), g.float()).clamp_min(0)
        raw = _resize(cam, size)
        raws.append(raw)
        # resize(minmax(cam)) without a second full-size resize: bilinear weights sum to one, so
        # resizing commutes with the per-image affine map of min-max
        flat = cam.flatten(-2)
        lo = flat.min(-1).values[:, None, None]
        s = (raw - lo) / (1e-7 + (flat.max(-1).values[:, None, None] - lo))
        scaled.append(minmax(s) if fuse == "max" else s)
    if fuse == "max":
        heat, raw = torch.stack(scaled).amax(0), torch.stack(raws).amax(0)
    else:
        heat, raw = torch.stack(scaled).clamp_min(0).mean(0), torch.stack(raws).mean(0)
    return minmax(heat), raw, logits


# -------------------------------------------------------------- library path


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
            raws.extend(_resize(torch.from_numpy(np.asarray(r, np.float32)), size) for r in cam.raw_maps)
    raw = torch.stack(raws)
    raw = raw.amax(0) if fuse == "max" else raw.mean(0)
    if fuse == "max":
        heat = minmax(torch.from_numpy(np.stack(heats)).amax(0)).numpy()
    else:
        heat = heats[0]
    return heat.astype(np.float32), raw.numpy()


# ------------------------------------------------------------------ baselines


def random_heatmaps(n: int, size: tuple[int, int], seed: int, offset: int = 0, cells: int = 8) -> np.ndarray:
    """Smooth random heatmaps (random values on a coarse grid, resized): the chance baseline.

    Image i gets the same map whatever the batch, from seed and its index ``offset + i``.
    """
    coarse = np.stack([np.random.default_rng([seed, offset + i]).random((cells, cells), dtype=np.float32)
                       for i in range(n)])
    return minmax(_resize(torch.from_numpy(coarse), size)).numpy()


def sobel_heatmaps(images: np.ndarray) -> np.ndarray:
    """Edge strength of the grey image (Sobel), min-max normalised: the 'any structure' baseline."""
    from skimage.filters import sobel

    grey = images.astype(np.float32).mean(-1) / 255
    return minmax(torch.from_numpy(np.stack([sobel(g) for g in grey]).astype(np.float32))).numpy()


# ---------------------------------------------------------------------- driver


@dataclass
class Heatmaps:
    """Heatmaps of one (checkpoint, method, layers, fusion) over a set of slices.

    The raw map is stored as float16 relative to its own peak (``raw_peak``, float32), so each
    slice is stored the same way whatever else was computed with it.
    """

    heatmap: np.ndarray  # N x H x W in [0, 1], float16 on disk
    raw: np.ndarray  # N x H x W, raw map / its peak, float16 on disk
    raw_peak: np.ndarray  # N, float32: the largest raw value of each slice
    meta: dict

    def raw_maps(self, idx=slice(None)) -> np.ndarray:
        """Un-normalised maps (float32) on the method's own scale."""
        return np.asarray(self.raw[idx], np.float32) * np.asarray(self.raw_peak[idx], np.float32)[..., None, None]


def compute_heatmaps(
    model: nn.Module, norm: nn.Module, arch: str, images: np.ndarray, method: str,
    layers: str | Sequence[str] = "middle", fuse: str = "mean", batch_size: int = 32,
    engine: str = "auto", seed: int = 0, progress: bool = True,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps and raw maps for uint8 N x H x W x 3 ``images``, in batches, on the model's device.

    ``engine``: 'fast', 'library', or 'auto' (fast where it exists). ``out`` lets the caller pass
    (memory-mapped) arrays to fill, so the whole dataset never has to sit in memory.
    """
    from tqdm.auto import tqdm

    check_method(method)
    n, h, w = images.shape[:3]
    heat, raw = out if out is not None else (np.empty((n, h, w), np.float32), np.empty((n, h, w), np.float32))
    if method == "sobel":
        for i in range(0, n, 256):
            heat[i:i + 256] = sobel_heatmaps(np.asarray(images[i:i + 256]))
            raw[i:i + 256] = heat[i:i + 256]
        return heat, raw
    if method == "random":
        for i in range(0, n, 256):
            heat[i:i + 256] = random_heatmaps(min(256, n - i), (h, w), seed, offset=i)
            raw[i:i + 256] = heat[i:i + 256]
        return heat, raw
    if engine not in ("auto", "fast", "library"):
        raise CamError(f"engine={engine!r}: expected 'auto', 'fast' or 'library'")
    use_fast = method in FAST_METHODS and engine != "library"
    if engine == "fast" and not use_fast:
        raise CamError(f"{method!r} has no fast path; fast methods: {', '.join(FAST_METHODS)}")
    names = parse_layers(arch, layers)
    # channels-last convolutions: about 20 % faster on our 2-core CPU (resnet18, 256 x 256)
    model.eval().to(memory_format=torch.channels_last)
    net = _Classifier(model, norm).eval()
    targets = [get_layer(model, arch, name) for name in names]
    device = next(model.parameters()).device
    for i in tqdm(range(0, n, batch_size), desc=f"{method} @ {'+'.join(names)}", disable=not progress, leave=False):
        xb = (to_tensor(np.asarray(images[i:i + batch_size]), device).float() / 255).contiguous(
            memory_format=torch.channels_last)
        if use_fast:
            hb, rb, _ = fast_cams(net, targets, xb, method, fuse)
            hb, rb = hb.cpu().numpy(), rb.cpu().numpy()
        else:  # ScoreCAM's inner batch of masked images: larger on a GPU, where small batches waste it
            with _numpy_seeded(seed, i):  # RandomCAM draws its channel weights from numpy's global generator
                hb, rb = library_cams(net, targets, xb, method, fuse, batch_size=256 if device.type == "cuda" else 32)
        heat[i:i + len(xb)], raw[i:i + len(xb)] = hb, rb
    return heat, raw


@contextmanager
def _numpy_seeded(*seed: int):
    """numpy's global generator seeded with ``seed`` inside the block, and restored after it."""
    state = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


def checkpoint_id(path: str | Path) -> str:
    return file_sha256(path)[:12]


def cached_heatmaps(
    run_dir: str | Path, checkpoint: str | Path, images: np.ndarray, split: str, method: str,
    layers: str | Sequence[str] = "middle", fuse: str = "mean", batch_size: int = 32,
    device: str | torch.device = "cpu", engine: str = "auto", seed: int = 0, progress: bool = True,
    loader: Callable | None = None,
) -> Heatmaps:
    """Heatmaps of one split, from the disk cache or computed and cached.

    The cache entry is ``run_dir/heatmaps/<arch>-<checkpoint hash>/<method>__<layers>__<fuse>__<split>/``
    holding heatmap.npy and raw.npy (float16) and meta.json. A changed checkpoint has another
    hash, so it is recomputed. Entries are filled through memory maps in a temporary folder
    and renamed into place when complete, so an interrupted run leaves no half entry.
    """
    from .train import load_classifier

    check_method(method)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    arch = ckpt["arch"]
    names = parse_layers(arch, layers) if method not in BASELINES else ["image"]
    key = f"{method}__{'+'.join(names)}__{fuse}__{split}"
    ckpt_id = checkpoint_id(checkpoint)
    entry = Path(run_dir) / "heatmaps" / f"{arch}-{ckpt_id}" / key
    if (entry / "meta.json").exists():
        meta = read_json(entry / "meta.json")
        if (meta.get("format") == CACHE_FORMAT and meta["n"] == len(images)
                and tuple(meta["size"]) == tuple(images.shape[1:3])):
            return _load_entry(entry, meta)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
    try:
        n, h, w = images.shape[:3]
        heat = np.lib.format.open_memmap(tmp / "heatmap.npy", "w+", np.float16, (n, h, w))
        raw32 = np.lib.format.open_memmap(tmp / "raw32.npy", "w+", np.float32, (n, h, w))
        model, norm, _ = load_classifier(checkpoint, device=device) if loader is None else loader()
        compute_heatmaps(model, norm, arch, images, method, names if method not in BASELINES else "last", fuse,
                         batch_size, engine, seed, progress, out=(heat, raw32))
        raw = np.lib.format.open_memmap(tmp / "raw.npy", "w+", np.float16, (n, h, w))
        peak = np.zeros(n, np.float32)
        for i in range(0, n, 512):
            r = np.asarray(raw32[i:i + 512])
            peak[i:i + 512] = r.reshape(len(r), -1).max(1) if r.size else 0
            raw[i:i + 512] = r / np.maximum(peak[i:i + 512], 1e-30)[:, None, None]
        np.save(tmp / "raw_peak.npy", peak)
        heat.flush()
        raw.flush()
        del heat, raw, raw32
        (tmp / "raw32.npy").unlink()
        meta = {"arch": arch, "checkpoint": str(checkpoint), "checkpoint_id": ckpt_id,
                "method": method, "layers": names, "fuse": fuse, "split": split, "n": n, "size": [h, w],
                "engine": engine, "format": CACHE_FORMAT}
        write_json(tmp / "meta.json", meta)
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _load_entry(entry, meta)


def _load_entry(entry: Path, meta: dict) -> Heatmaps:
    return Heatmaps(np.load(entry / "heatmap.npy", mmap_mode="r"), np.load(entry / "raw.npy", mmap_mode="r"),
                    np.load(entry / "raw_peak.npy"), meta)


def check_pair(images: np.ndarray, heatmaps: np.ndarray, what: str = "heatmaps") -> None:
    """Images N x H x W (x 3) and heatmaps N x H x W must match in count and size."""
    if images.shape[:3] != heatmaps.shape[:3]:
        raise CamError(f"images {tuple(images.shape)} and {what} {tuple(heatmaps.shape)} do not match in count and size")
