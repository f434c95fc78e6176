"""Pseudo-masks and the U-Net trained on them: weakly supervised segmentation from slice labels.

A pseudo-mask is made on a training slice from what needs no drawn mask: the image, the slice's
label (tumour or not) and the classifier's heatmap and call. :class:`Targets` holds the tumour
pixels and the pixels the loss ignores; :func:`train_on_targets` trains 05's U-Net on them.

Our design decisions (not the paper's):
- a slice labelled tumour-free gets an empty target with nothing ignored (:func:`kept_slices`): the
  label is known. A slice labelled tumour keeps its heatmap's mask whatever the classifier calls it
  by default (``gate`` 0): an empty target there would teach the network that a known tumour is
  background (on ``lgg_cpu``'s training split the classifier misses about one tumour slice in six);
  a ``gate`` above 0 empties the slices it calls tumour-free, as before;
- the intensity re-draw (:func:`redraw`): a heatmap's mask is coarse, and on the tumour-bright
  channel (FLAIR for LGG) the tumour stands out from the brain around it. Per slice, the pixels
  near the mask that are at least ``level`` of the way from the brain's typical brightness to the
  mask's, and connected to the mask, become the mask. It uses the image and the mask only; the
  level and reach are chosen on validation (:mod:`.pseudo_study`). The same re-draw may follow the
  trained network's own masks (:func:`network_masks`), chosen on validation with the 3-D clean-up;
- the uncertain band (:func:`band_targets`): around a mask's cut ``c`` (the coolest value
  inside it), pixels from ``c (1 - band)`` up to ``c (1 + band)`` are ignored by the loss,
  so the network, not the threshold, decides the tumour's edge; the mask's peak is never ignored;
- self-training (:func:`self_training_targets`) takes the network's tumour probability as the
  heatmap and 0.5 as the cut: what it calls tumour with a probability below 0.5 (1 + band) is
  ignored, the rest of its mask is tumour, and what it calls background stays background. The band
  stops at the cut because a briefly trained network's background can sit just below 0.5 across
  the whole slice: a band below the cut would then ignore most of every slice with a prediction;
- the loss is 05's (binary cross-entropy plus per-slice soft Dice) over the pixels not ignored,
  and everything else in training is 05's recipe (:mod:`.unet`): the network, normalisation,
  augmentation (targets moved with the image), one-cycle schedule and the epoch kept by
  validation mean-Dice. ``empty_share`` < 1 draws only that share of the slices with an empty
  target afresh every epoch, which shortens an epoch where most slices are tumour-free;
- several networks trained on the same targets from different seeds predict together as one
  (:class:`MeanProbability`): the mean of their tumour probabilities, thresholded at 0.5 like one
  network's. A network trained briefly on noisy targets varies with its seed; the mean varies less.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage

from .data import Dataset
from .device import resolve_device
from .io import arrays_digest
from .masks import head_masks
from .refinement import GUIDE_CHANNEL
from .train import Normalise
from .unet import fit_unet, load_unet, logit_maps, predict_volumes, resumed, training_config

REDRAW_SMOOTH = 1.0  # Gaussian sigma (px) of the channel before the re-draw's threshold: one pixel's noise cuts no hole
RETRAIN_HINT = "; re-create it with: python -m camseg_utils.pipeline --preset NAME --from 07_pseudo_labels"


class PseudoLabelError(ValueError):
    """Inputs to pseudo-masks or their training that do not fit together; the message names them."""


@dataclass
class Targets:
    """Training targets of N slices: ``mask`` (bool N x H x W, tumour) and ``ignore`` (bool N x H x W,
    left out of the loss); a pixel is never both."""

    mask: np.ndarray
    ignore: np.ndarray

    def __post_init__(self) -> None:
        self.mask, self.ignore = np.asarray(self.mask), np.asarray(self.ignore)
        for name, a in (("mask", self.mask), ("ignore", self.ignore)):
            if a.ndim != 3 or a.dtype != bool:
                raise PseudoLabelError(f"targets: {name} must be bool N x H x W, got {a.dtype} {a.shape}")
        if self.mask.shape != self.ignore.shape:
            raise PseudoLabelError(f"targets: mask {self.mask.shape} and ignore {self.ignore.shape} differ in shape")
        if (self.mask & self.ignore).any():
            raise PseudoLabelError("targets: a pixel is both tumour and ignored")

    def __len__(self) -> int:
        return len(self.mask)

    def shares(self) -> dict:
        """Share of slices with tumour pixels, and of pixels marked tumour and ignored on those slices."""
        has = self.mask.any((1, 2))
        n = max(int(has.sum()), 1) * int(np.prod(self.mask.shape[1:]))
        return {"slices_with_tumour": float(has.mean()) if len(has) else float("nan"),
                "tumour_pixels": float(self.mask[has].sum() / n), "ignored_pixels": float(self.ignore[has].sum() / n)}


def check_band(band: float) -> float:
    if not (isinstance(band, (int, float)) and 0 <= band < 1):
        raise PseudoLabelError(f"band={band!r}: expected a number in [0, 1) (the uncertain band's relative half-width)")
    return float(band)


def kept_slices(labels: np.ndarray, probs: np.ndarray, gate: float = 0.0) -> np.ndarray:
    """Bool per slice: labelled tumour, and called tumour by the classifier (probability >= ``gate``;
    0: the label alone)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise PseudoLabelError(f"labels {labels.shape} and classifier probabilities {probs.shape}: expected one of "
                               f"each per slice")
    if not (isinstance(gate, (int, float)) and 0 <= gate <= 1):
        raise PseudoLabelError(f"gate={gate!r}: expected a probability in [0, 1] (0: the slice label alone)")
    return labels.astype(bool) & (probs >= gate)


def check_redraw(level: float, radius: int) -> tuple[float, int]:
    if not (isinstance(level, (int, float)) and 0 < level <= 1):
        raise PseudoLabelError(f"redraw level={level!r}: expected a number in (0, 1] (the share of the way from the "
                               f"brain's brightness to the mask's)")
    if int(radius) != radius or radius < 1:
        raise PseudoLabelError(f"redraw radius={radius!r}: expected a whole number of pixels >= 1")
    return float(level), int(radius)


def redraw(masks: np.ndarray, images: np.ndarray, heads: np.ndarray, level: float, radius: int,
           channel: int = GUIDE_CHANNEL) -> np.ndarray:
    """Masks (bool N x H x W) re-drawn on one channel of uint8 N x H x W x C ``images`` (``heads``: bool
    N x H x W, inside the head).

    Per slice with a mask: ``f`` the channel smoothed (``REDRAW_SMOOTH``), ``fg`` its median inside the
    mask and ``bg`` its median in the head outside it. The new mask is every pixel inside the head, within
    ``radius`` px of the mask, with ``f >= bg + level (fg - bg)``, in a connected piece that touches the
    old mask, holes filled. A slice whose mask is no brighter than its surroundings, or whose re-draw
    is empty, keeps its mask; a slice without a mask stays empty."""
    level, radius = check_redraw(level, radius)
    masks, heads = np.asarray(masks, bool), np.asarray(heads, bool)
    images = np.asarray(images)
    if masks.ndim != 3 or masks.shape != heads.shape or images.shape[:3] != masks.shape:
        raise PseudoLabelError(f"redraw: masks {masks.shape}, heads {heads.shape} and images {images.shape}: expected "
                               f"N x H x W, N x H x W and N x H x W x C")
    out = masks.copy()
    reach = ndimage.generate_binary_structure(2, 1)
    for i in np.flatnonzero(masks.any((1, 2))):
        m, head = masks[i], heads[i]
        rest = head & ~m
        if not rest.any():
            continue
        f = ndimage.gaussian_filter(images[i, ..., channel].astype(np.float32), REDRAW_SMOOTH)
        fg, bg = np.median(f[m]), np.median(f[rest])
        if fg <= bg:
            continue
        near = ndimage.binary_dilation(m, reach, iterations=radius)
        pieces, _ = ndimage.label(near & head & (f >= bg + level * (fg - bg)))
        touching = np.unique(pieces[m])
        new = ndimage.binary_fill_holes(np.isin(pieces, touching[touching > 0]))
        if new.any():
            out[i] = new
    return out


def band_targets(values: np.ndarray, masks: np.ndarray, keep: np.ndarray, band: float,
                 cut: float | None = None, below: bool = True) -> Targets:
    """Targets from float N x H x W ``values`` (a heatmap on the scale its ``masks`` were cut from)
    and their bool ``masks``, on the slices ``keep`` says (others: empty, nothing ignored).

    Per slice, the cut is ``cut`` or, when None, the smallest value inside the mask. Pixels with
    ``cut (1 - band) <= value < min(cut (1 + band), the mask's peak)`` are ignored (``below``
    False: from the cut up only); mask pixels above that are tumour; everything else is
    background. ``band`` 0: the masks themselves.
    """
    band = check_band(band)
    values, masks, keep = np.asarray(values, np.float32), np.asarray(masks, bool), np.asarray(keep, bool)
    if values.shape != masks.shape or values.ndim != 3 or keep.shape != values.shape[:1]:
        raise PseudoLabelError(f"band targets: values {values.shape}, masks {masks.shape} and keep {keep.shape}: "
                               f"expected N x H x W, N x H x W and N")
    m = masks & keep[:, None, None]
    if band == 0:
        return Targets(m, np.zeros_like(m))
    inside = np.where(m, values, np.nan)
    has = m.any((1, 2))
    with warnings.catch_warnings():  # slices without a mask give NaN cuts, used nowhere
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.nanmin(inside, (1, 2)) if cut is None else np.full(len(values), float(cut), np.float32)
        peak = np.nanmax(inside, (1, 2))
    lo, hi = c * (1 - band) if below else c, np.minimum(c * (1 + band), peak)
    ignore = has[:, None, None] & (values >= lo[:, None, None]) & (values < hi[:, None, None])
    return Targets(m & ~ignore, ignore)


def self_training_targets(prob_maps: np.ndarray, keep: np.ndarray, band: float) -> Targets:
    """The next round's targets from a network's tumour probabilities (float N x H x W): its mask (>= 0.5)
    on the kept slices, the part below 0.5 (1 + ``band``) ignored, its background kept."""
    prob_maps = np.asarray(prob_maps, np.float32)
    return band_targets(prob_maps, prob_maps >= 0.5, keep, band, cut=0.5, below=False)


def network_masks(model: nn.Module, norm: Normalise, part: Dataset, volume_cleanup: float = 0.0,
                  level: float = 0.0, radius: int = 0, heads: np.ndarray | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """A network's masks of a split as 07 chose to post-process them: the 3-D clean-up
    (:func:`.unet.predict_volumes`), then the intensity re-draw at ``level`` within ``radius`` px
    (level 0: none); ``heads`` default to :func:`.masks.head_masks` of the split's images."""
    masks = predict_volumes(model, norm, part, volume_cleanup, batch_size)
    if not level:
        return masks
    return redraw(masks, part.images, head_masks(part.images) if heads is None else heads, level, radius)


def probability_maps(model: nn.Module, norm: Normalise, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The network's tumour probability per pixel, float32 N x H x W (``predict_masks`` is these >= 0.5)."""
    return torch.sigmoid(torch.from_numpy(logit_maps(model, norm, images, batch_size))).numpy()


def load_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Normalise, dict]:
    """A U-Net trained on pseudo-masks, from its ``best.pt``: (model in eval mode, normalisation, checkpoint)."""
    return load_unet(path, device, "pseudo-label U-Net checkpoint", RETRAIN_HINT)


class MeanProbability(nn.Module):
    """U-Nets trained on the same images as one network: its output is the logit of their mean tumour
    probability, so that thresholding it at 0 (:func:`.unet.predict_masks`) thresholds the mean at 0.5."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        if not nets:
            raise PseudoLabelError("an ensemble needs at least one network")
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(net(x).float()) for net in self.nets]).mean(0)
        return torch.logit(p, eps=1e-6)


def load_networks(paths, device: str | torch.device = "cpu") -> tuple[nn.Module, Normalise, list[dict]]:
    """Networks trained on the same images as one (:class:`MeanProbability`; one path: that network alone),
    their shared normalisation and their checkpoints. Networks normalised differently were trained on
    other images and are refused."""
    if not len(paths):
        raise PseudoLabelError("no network path given")
    loaded = [load_network(p, device) for p in paths]
    model, norm = as_ensemble([(m, n) for m, n, _ in loaded], paths)
    return model, norm, [c for _, _, c in loaded]


def as_ensemble(nets: list[tuple[nn.Module, Normalise]], names) -> tuple[nn.Module, Normalise]:
    """(network, normalisation) pairs as one: :class:`MeanProbability` and the shared normalisation (a single
    pair is returned as it is). Networks normalised differently were trained on other images and are refused."""
    norm = nets[0][1]
    for name, (_, other) in zip(names[1:], nets[1:]):
        if not (torch.equal(other.mean, norm.mean) and torch.equal(other.std, norm.std)):
            raise PseudoLabelError(f"{name} was trained on other images than {names[0]} (another normalisation); "
                                   "an ensemble averages networks trained on the same images")
    return (nets[0][0] if len(nets) == 1 else MeanProbability([m for m, _ in nets]).eval()), norm


def train_on_targets(images: np.ndarray, targets: Targets, val: Dataset, out_dir: str | Path, epochs: int = 8,
                     batch_size: int = 16, lr: float = 3e-3, width: int = 8, seed: int = 0, device: str = "auto",
                     empty_share: float = 1.0, resume: bool = True,
                     progress: bool = True) -> tuple[nn.Module, Normalise, dict]:
    """Train the U-Net on uint8 N x H x W x 3 training ``images`` and their :class:`Targets` (or, with
    ``resume``, reload a ``best.pt`` made with the same settings from the same pixels and targets).

    The epoch with the best mean-Dice on ``val`` (its drawn masks) is kept: 05's training loop
    (:func:`.unet.fit_unet`), each epoch over the slices with a target and ``empty_share`` of the others."""
    if len(images) != len(targets) or np.asarray(images).shape[1:3] != targets.mask.shape[1:]:
        raise PseudoLabelError(f"{len(images)} images of {np.asarray(images).shape[1:3]} but {len(targets)} targets of "
                               f"{targets.mask.shape[1:]}")
    if int(epochs) != epochs or epochs < 1:
        raise PseudoLabelError(f"epochs={epochs!r}: expected a whole number >= 1")
    if not 0 < empty_share <= 1:
        raise PseudoLabelError(f"empty_share={empty_share!r}: expected a share in (0, 1]")
    dev = resolve_device(device)
    config = {**training_config(dev, epochs, batch_size, lr, width, seed),
              "empty_share": float(empty_share), "image_size": int(images.shape[1]),
              "data_sha256": arrays_digest(images, targets.mask, targets.ignore, val.images, val.masks)}
    path = Path(out_dir) / "best.pt"
    done = resume and resumed(path, config, "pseudo-label U-Net checkpoint", lambda p: load_network(p, dev))
    if done:
        return done
    marked = targets.mask.any((1, 2)) | targets.ignore.any((1, 2))
    has, empty = torch.from_numpy(np.flatnonzero(marked)), torch.from_numpy(np.flatnonzero(~marked))
    n_empty = len(empty) if empty_share == 1 else int(round(empty_share * len(empty)))

    def drawn(gen: torch.Generator) -> torch.Tensor:
        """Every slice with a target, and ``n_empty`` of the empty ones drawn afresh, shuffled."""
        pick = torch.cat([has, empty[torch.randperm(len(empty), generator=gen)[:n_empty]]])
        return pick[torch.randperm(len(pick), generator=gen)]

    y = torch.from_numpy(np.stack([targets.mask, targets.ignore], 1))
    order = None if n_empty == len(empty) else drawn  # every slice: fit_unet's own permutation
    return fit_unet(images, y, val, path, config, dev, len(has) + n_empty, order, progress)
