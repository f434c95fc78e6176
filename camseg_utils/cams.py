"""CAM methods on the device: every method, many maps at once, from one forward and one backward pass.

Convention: a heatmap is float in [0, 1] at the image's height and width, for the tumour
class (index 1), min-max normalised per image exactly as pytorch-grad-cam does. Because
that normalisation makes every tumour-free slice look hot, the un-normalised ("raw") map is
kept too: ReLU of the method's weighted activations, bilinearly resized to the image.

One forward pass, and one backward pass that stops at the target layers (``torch.autograd.grad``
w.r.t. the activations, not the weights), give the activations and gradients of every requested
layer; every (method, layers, fusion) asked for is computed from them on the device, the
whole batch resized at once (:func:`many_cams`; over whole image sets and with a disk cache:
:mod:`.heatmap_cache`). The gradient methods
(GradCAM, GradCAM++, HiResCAM, XGradCAM, LayerCAM) and RandomCAM need nothing more;
EigenCAM and ScoreCAM take their maps from :mod:`.gradient_free`. pytorch-grad-cam stays the
reference (:mod:`.cam_library`; tests compare the two, method by method) and can still be chosen
with ``engine='library'``; the random and Sobel baselines are in :mod:`.baselines`. This module
also owns the method names, the normalisation and the checks the others share.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .gradient_free import eigen_projection, score_weights
from .models import resolve_layer

TUMOUR = 1
FAST_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")  # the gradient methods
OTHER_CAMS = ("scorecam", "eigencam", "randomcam")  # on the device path too, not from the gradient alone
CAM_METHODS = FAST_METHODS + OTHER_CAMS
BASELINES = ("random", "sobel")
METHODS = CAM_METHODS + BASELINES
SEEDED = ("random", "randomcam")  # methods whose maps depend on the seed
FUSIONS = ("mean", "max")


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
    lo, hi = _extremes(cam)
    return (cam - lo) / (1e-7 + (hi - lo))


def _extremes(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's min and max over the last two axes, kept as 1 x 1 axes for broadcasting.

    ``amin`` and ``amax`` apart: on the CPU ``torch.aminmax`` over a row takes several times as
    long as both of them (torch 2.14), and it sits on the heatmaps' hot path.
    """
    flat = maps.flatten(-2)
    return flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]


def bilinear_resize(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x h x w maps at ``size``; unchanged when already that size."""
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    # bilinear with half-pixel centres and no antialiasing, as cv2.resize(INTER_LINEAR)
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """n_out x n_in weights of 1-D bilinear resizing with half-pixel centres, as ``F.interpolate`` computes it."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    frac = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.to(like)


def separable_resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """... x h x w maps bilinearly resized to ``size`` (as ``F.interpolate``, align_corners=False) by two matrix products.

    Bilinear resizing is separable, rows then columns; as matrix products it runs at the
    speed of a GEMM, faster than ``F.interpolate`` for stacks of heatmaps on the CPU (the more
    so the smaller the map), and equal to it within float rounding.
    """
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    return _interpolation_matrix(h, size[0], maps) @ maps @ _interpolation_matrix(w, size[1], maps).T


def upsize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x K x h x w maps bilinearly resized to ``size``, by whichever of two equal routes is faster.

    The matrix products of :func:`separable_resize` cost in proportion to the source's side,
    ``F.interpolate`` does not: at a quarter of the image's side or less the products win, at half
    of it (the small CNN's early block) interpolation takes 0.6 of their time (16 x 5 maps to
    128 x 128 on a 2-core CPU).
    """
    h, w = maps.shape[-2:]
    if 3 * h > size[0] or 3 * w > size[1]:
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return separable_resize(maps, size)


# ------------------------------------------------------------------ fast path


def _cams_from(methods: Sequence[str], a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The maps (before ReLU) of several gradient methods at one layer, N x K x h x w in ``methods``' order.

    What the methods have in common is computed once: HiResCAM's g * a gives XGradCAM its
    weights; LayerCAM and GradCAM++ share relu(g); XGradCAM and GradCAM++ share the activations'
    sums. Every method of the form sum_c w_c a_c (GradCAM, XGradCAM, GradCAM++) comes from one
    batched product of the stacked weights (N x K x C) with the activations (N x C x hw).

    The work runs on N x h x w x C views, the memory order of channels-last activations: a
    per-channel weight of shape N x C x 1 x 1 broadcast against a channels-last map gives a
    result in the other layout, and every later element-wise op then strides across both
    (GradCAM++ at the small CNN's early block took several times as long). The gradient is
    brought to the activations' layout first: a global-pooling head hands the last block a
    gradient in the default layout whatever the activations' layout. The weighted sums are
    taken as weights x activations^T, not activations x weights: with one to three weights per
    image that order ran 1.3 to 4.6 times faster at the shapes of ``bench_cams.py``'s study layers
    on a 2-core CPU (docs/experiments.md).
    """
    need = set(methods)
    unknown = need - set(FAST_METHODS)
    if unknown:
        raise CamError(f"{sorted(unknown)[0]!r} is not a gradient method; gradient methods: {', '.join(FAST_METHODS)}")
    if need - {"gradcam"} and a.is_contiguous(memory_format=torch.channels_last) \
            and not g.is_contiguous(memory_format=torch.channels_last):  # GradCAM alone only averages g
        g = g.contiguous(memory_format=torch.channels_last)
    a_chw = a.flatten(2)  # N x C x hw, a view in either layout
    a, g = a.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
    n, h, w = a.shape[:3]
    out: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    if need & {"hirescam", "xgradcam"}:
        ga = g * a
        if "hirescam" in need:
            out["hirescam"] = ga.sum(-1)
    if need & {"xgradcam", "gradcam++"}:
        sum_a = a.sum((1, 2))
    if "gradcam" in need:
        weights["gradcam"] = g.mean((1, 2))
    if "xgradcam" in need:  # sum(g a / S) = sum(g a) / S: one pass over the channels' maps less
        weights["xgradcam"] = ga.sum((1, 2)) / (sum_a + 1e-7)
    if need & {"layercam", "gradcam++"}:
        g_pos = g.clamp_min(0)
        if "layercam" in need:
            out["layercam"] = (g_pos * a).sum(-1)
    if "gradcam++" in need:
        # the library's alpha is g^2 / (2 g^2 + S g^3) where g != 0, else 0, and it only meets
        # relu(g); with u = relu(g) the weight is sum u^3 / (u^2 (2 + S u) + 1e-6), equal to it
        # wherever g > 0 and 0 elsewhere, computed in place on two buffers
        u2 = g_pos * g_pos
        den = torch.addcmul(a.new_tensor(2.0), g_pos, sum_a[:, None, None, :])
        torch.addcmul(a.new_tensor(1e-6), u2, den, out=den)
        weights["gradcam++"] = u2.mul_(g_pos).div_(den).sum((1, 2))
    if weights:
        stacked = torch.stack(list(weights.values()), 1)  # N x K x C
        maps = torch.bmm(stacked, a_chw).view(n, -1, h, w)
        out.update((m, maps[:, i]) for i, m in enumerate(weights))
    return torch.stack([out[m] for m in methods], 1)


def activations_and_gradients(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, target: int = TUMOUR,
    grad_layers: Sequence[int] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
    """One forward pass and a backward pass only as far as ``layers`` (the fast path's floor).

    ``grad_layers``: indices of the layers whose gradients are needed (default all; none:
    no backward pass at all); the others get ``None``.

    The weights' ``requires_grad`` is switched off for the pass (and restored): no gradient
    is taken w.r.t. them, and with them frozen the layers before the first target layer
    record no graph; that layer's output starts one, and the backward pass ends there. The
    forward pass computes the same values either way (a few per cent faster: ``bench_cams.py``).
    """
    acts: dict[int, torch.Tensor] = {}
    want = list(range(len(layers))) if grad_layers is None else sorted(set(grad_layers))

    def hook(i):
        def keep(m, inp, out):
            if i in want and not out.requires_grad and torch.is_grad_enabled():
                out.requires_grad_()
            acts[i] = out
        return keep

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.enable_grad() if want else torch.inference_mode():
            logits = model(x)
            grads = torch.autograd.grad(logits[:, target].sum(), [acts[i] for i in want]) if want else []
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for h in handles:
            h.remove()
    by_layer: list[torch.Tensor | None] = [None] * len(layers)
    for i, g in zip(want, grads):
        by_layer[i] = g.detach()
    return [acts[i].detach() for i in range(len(layers))], by_layer, logits.detach()


Request = tuple[str, tuple[str, ...], str]  # (method, layer names, fusion)


def many_cams(
    model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, requests: Sequence[Request],
    target: int = TUMOUR, seed: int = 0, offset: int = 0, score_batch: int | None = None,
) -> tuple[dict[Request, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Every requested (method, layers, fusion) map of a batch from one forward and one backward pass.

    ``layers`` maps names to modules; each request names the layers it fuses. Returns
    {request: (heatmap in [0, 1], raw map)}, each N x H x W on x's device, and the logits.
    Each map equals what :func:`fast_cams` (and pytorch-grad-cam) gives for that request
    alone: a layer's map is computed once per method and shared by the requests that use it.
    RandomCAM's weights come from numpy seeded with (``seed``, ``offset``), drawn layer by layer
    in the request's order, as the library draws them from numpy's global generator.
    """
    for method, names, fuse in requests:
        if method not in CAM_METHODS:
            raise CamError(f"{method!r} has no device path; device methods: {', '.join(CAM_METHODS)}")
        if fuse not in FUSIONS:
            raise CamError(f"unknown fusion {fuse!r}; expected one of {FUSIONS}")
        unknown = [n for n in names if n not in layers]
        if unknown or not names:
            raise CamError(f"request {method!r} @ {list(names)}: layers must be among {list(layers)}")
    used = list(dict.fromkeys(n for _, names, _ in requests for n in names))
    grad_used = {n for m, names, _ in requests if m in FAST_METHODS for n in names}
    acts, grads, logits = activations_and_gradients(model, [layers[n] for n in used], x, target,
                                                    [i for i, n in enumerate(used) if n in grad_used])
    acts = dict(zip(used, (a.float() for a in acts)))
    grads = dict(zip(used, (None if g is None else g.float() for g in grads)))
    size = tuple(x.shape[-2:])

    def scaled(cams_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw maps at the image's size, the maps' min and range at their own size) from N x K maps before ReLU.

        The library's per-layer map is resize(minmax(cam)); bilinear weights sum to one, so
        resizing commutes with the per-image affine map of min-max, and that map is
        (raw - min) / (1e-7 + range) without a second full-size resize. The K maps of a layer
        are clamped, measured and resized together.
        """
        cams_ = cams_.clamp_min(0)
        lo, hi = _extremes(cams_)
        return upsize_maps(cams_, size), lo, hi - lo

    def closed_form(raw: torch.Tensor, rng_: torch.Tensor) -> torch.Tensor:
        """minmax(resize(minmax(cam))), a single layer's heatmap, from its raw map and its range before resizing.

        With rmin, rmax the full-size map's extremes it is (raw - rmin) / (rmax - rmin + 1e-7 (1e-7
        + range)): one pass over the full-size map instead of two normalisations.
        """
        rmin, rmax = _extremes(raw)
        return (raw - rmin).div_(rmax - rmin + 1e-7 * (1e-7 + rng_))

    # a layer's maps are computed, resized and normalised as one N x K stack (K = 1 for EigenCAM
    # and ScoreCAM, every gradient method asked for at that layer otherwise); requests take views
    stacks: dict[object, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    member: dict[tuple[str, str], tuple[object, int]] = {}
    single: dict[object, torch.Tensor] = {}
    gradient_methods = {n: list(dict.fromkeys(m for m, names, _ in requests if m in FAST_METHODS and n in names))
                        for n in used}

    def stack_of(method: str, name: str) -> tuple[object, int]:
        if (method, name) not in member:
            a = acts[name]
            if method in FAST_METHODS:  # every gradient method asked for at this layer, at once
                group = gradient_methods[name]
                stacks[name] = scaled(_cams_from(group, a, grads[name]))
                member.update(((m, name), (name, i)) for i, m in enumerate(group))
            else:
                if method == "eigencam":
                    cam = eigen_projection(a)
                else:  # scorecam
                    w = score_weights(model, x, a, target, score_batch)
                    cam = (w[:, :, None, None] * a).sum(1)
                stacks[(method, name)] = scaled(cam[:, None])
                member[(method, name)] = ((method, name), 0)
        return member[(method, name)]

    def layer_map(method: str, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key, i = stack_of(method, name)
        return tuple(t[:, i] for t in stacks[key])

    def single_layer(method: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The request (method, (name,), 'mean'), computed for the layer's whole stack at once."""
        key, i = stack_of(method, name)
        raw, _, rng_ = stacks[key]
        if key not in single:
            single[key] = closed_form(raw, rng_)
        return single[key][:, i], raw[:, i]

    out = {}
    for req in requests:
        method, names, fuse = req
        if method != "randomcam" and len(names) == 1 and fuse == "mean":
            out[req] = single_layer(method, names[0])
            continue
        if method == "randomcam":
            rng = np.random.RandomState([seed, offset])  # what np.random.seed([seed, offset]) sets up
            maps = []
            for name in names:
                a = acts[name]
                w = torch.from_numpy(rng.uniform(-1, 1, size=a.shape[:2])).to(a)
                raw, lo, rng_ = scaled((w[:, :, None, None] * a).sum(1)[:, None])
                maps.append((raw[:, 0], lo[:, 0], rng_[:, 0]))
        else:
            maps = [layer_map(method, name) for name in names]
        if len(maps) == 1 and fuse == "mean":  # RandomCAM at one layer
            raw, _, rng_ = maps[0]
            out[req] = (closed_form(raw, rng_), raw)
            continue
        scaled_maps = [(r - lo) / (1e-7 + rng_) for r, lo, rng_ in maps]
        raws = [r for r, _, _ in maps]
        if fuse == "max":
            heat = torch.stack([minmax(m) for m in scaled_maps]).amax(0)
            raw = torch.stack(raws).amax(0)
        else:
            heat = torch.stack(scaled_maps).clamp_min(0).mean(0)
            raw = torch.stack(raws).mean(0)
        out[req] = (minmax(heat), raw)
    return out, logits


def fast_cams(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, method: str, fuse: str = "mean",
    target: int = TUMOUR, seed: int = 0, offset: int = 0, score_batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched heatmaps of one method on x's device: (heatmap in [0, 1], raw map, logits), each N x H x W (logits N x 2).

    Reproduces pytorch-grad-cam: per layer, ReLU, min-max, bilinear resize; then the layers
    are fused (mean as the library does, or max) and min-max normalised again.
    """
    if fuse not in FUSIONS:
        raise CamError(f"unknown fusion {fuse!r}; expected one of {FUSIONS}")
    named = {f"layer{i}": layer for i, layer in enumerate(layers)}
    req = (method, tuple(named), fuse)
    maps, logits = many_cams(model, named, x, [req], target, seed, offset, score_batch)
    return (*maps[req], logits)


def check_pair(images: np.ndarray, heatmaps: np.ndarray, what: str = "heatmaps") -> None:
    """Images N x H x W (x 3) and heatmaps N x H x W must match in count and size."""
    if images.shape[:3] != heatmaps.shape[:3]:
        raise CamError(f"images {tuple(images.shape)} and {what} {tuple(heatmaps.shape)} do not match in count and size")
