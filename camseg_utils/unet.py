"""The supervised reference: a U-Net trained on the same training split and image size.

Our design decisions: a 4-level U-Net (``width`` channels at full resolution, doubling per
level), batch norm, bilinear up-sampling; loss = BCE + soft Dice; the same on-device
augmentation as the classifiers (geometry applied to image and mask alike); AdamW with a
one-cycle schedule; bfloat16 autocast where the device computes it natively (CUDA, recent x86 CPUs:
:func:`.device.train_bf16`); the epoch with the best validation mean-Dice is kept.
Its masks may then be cleaned in 3-D (:func:`choose_volume_cleanup`): per scan, connected components
smaller than a fraction of the largest are dropped, the fraction (0: none) chosen on validation.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Dataset
from .device import precision_name, resolve_device, to_tensor, train_bf16
from .io import UnreadableFileError, arrays_digest, load_torch, save_torch
from .metrics import mean_dice, score_masks
from .morphology import keep_volume_components
from .train import Normalise, augment_batch, channel_stats, seed_everything, versions


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, width: int = 16, levels: int = 4) -> None:
        super().__init__()
        chans = [width * 2**k for k in range(levels)]
        self.down = nn.ModuleList([_block(3 if k == 0 else chans[k - 1], c) for k, c in enumerate(chans)])
        self.up = nn.ModuleList([_block(chans[k] + chans[k - 1], chans[k - 1]) for k in range(levels - 1, 0, -1)])
        self.out = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)[:, 0]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy + per-slice soft Dice; pixels where ``ignore`` is set count in neither (the
    cross-entropy is then averaged over the counted pixels)."""
    if ignore is None:
        p = torch.sigmoid(logits)
        inter = (p * target).sum((1, 2))
        soft_dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice.mean()
    w = 1 - ignore.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * w).sum() / w.sum().clamp(min=1)
    p, t = torch.sigmoid(logits) * w, target * w
    inter = (p * t).sum((1, 2))
    soft_dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    return bce + soft_dice.mean()


@torch.no_grad()
def logit_maps(model: nn.Module, norm: Normalise, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The network's tumour logit per pixel, float32 N x H x W."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = norm(to_tensor(np.asarray(images[i:i + batch_size]), device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)


def predict_masks(model: nn.Module, norm: Normalise, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return logit_maps(model, norm, images, batch_size) > 0


def predict_volumes(model: nn.Module, norm: Normalise, part: Dataset, min_fraction: float = 0.0,
                    batch_size: int = 32) -> np.ndarray:
    """:func:`predict_masks` of a split, then :func:`.morphology.keep_volume_components` per scan (``case``)."""
    masks = predict_masks(model, norm, part.images, batch_size)
    return keep_volume_components(masks, part.manifest["case"], part.manifest["slice"], min_fraction)


def choose_volume_cleanup(model: nn.Module, norm: Normalise, val: Dataset, fractions=(0.0, 0.1, 0.3, 1.0),
                          select_by: str = "mean_dice") -> tuple[dict, list[dict]]:
    """The validation row of the 3-D clean-up fraction with the best ``select_by`` (ties: the first
    listed), and one row of validation scores (``volume_cleanup``, ``mean_dice``, ...) per fraction."""
    if select_by not in ("mean_dice", "patient_dice"):
        raise ValueError(f"select_by={select_by!r}: expected 'mean_dice' or 'patient_dice'")
    if not len(fractions):
        raise ValueError("fractions is empty: give at least one (0 means no 3-D clean-up)")
    masks = predict_masks(model, norm, val.images)
    gt, patients = np.asarray(val.masks), val.manifest["patient"].to_numpy()
    rows = []
    for f in fractions:
        kept = keep_volume_components(masks, val.manifest["case"], val.manifest["slice"], f)
        s = score_masks(kept, gt, patients, n_boot=1)  # the point estimates only
        rows.append({"volume_cleanup": float(f), "mean_dice": s["mean_dice"], "patient_dice": s["patient_dice"],
                     "fp_area": s["fp_area"]})
    return max(rows, key=lambda r: r[select_by]), rows  # max keeps the first of equals


def load_unet(path: str | Path, device: str | torch.device = "cpu", what: str = "U-Net checkpoint",
              hint: str = "; re-create it with: python -m camseg_utils.pipeline --preset NAME --from 05_dice",
              ) -> tuple[nn.Module, Normalise, dict]:
    """A trained U-Net (05's, or 07's with its own ``what`` and ``hint`` for errors) from its ``best.pt``:
    (model in eval mode, normalisation, checkpoint)."""
    ckpt = load_torch(path, what, hint)
    model = UNet(ckpt["config"]["width"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), Normalise(ckpt["norm_mean"], ckpt["norm_std"]).to(device), ckpt


def training_layout(device: torch.device, bf16: bool) -> torch.memory_format:
    """The memory layout the U-Net trains in (05's and 07's).

    Channels-last, as the classifiers, except under bfloat16 autocast on a CPU: there channels-last's
    BatchNorm backward on bfloat16 activations took over half of a width-8 U-Net's step, and the default
    layout is faster (``benchmarks/bench_train.py --archs unet`` times both; docs/experiments.md)."""
    return torch.contiguous_format if bf16 and device.type == "cpu" else torch.channels_last


def layout_name(layout: torch.memory_format) -> str:
    return "channels_last" if layout == torch.channels_last else "contiguous"


def memory_layout(name: str) -> torch.memory_format:
    """:func:`layout_name`'s inverse."""
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def training_config(dev: torch.device, epochs: int, batch_size: int, lr: float, width: int, seed: int) -> dict:
    """The settings every U-Net checkpoint records (05's and 07's add what identifies their data)."""
    bf16 = train_bf16(dev)
    return {"epochs": int(epochs), "batch_size": batch_size, "lr": lr, "width": width, "seed": seed,
            "precision": precision_name(bf16), "layout": layout_name(training_layout(dev, bf16))}


def resumed(path: Path, config: dict, what: str, load) -> tuple[nn.Module, Normalise, dict] | None:
    """``load(path)`` where ``path`` holds a network trained with exactly ``config``, else None (an unreadable
    file is a cache to recompute, with a warning; one made with other settings or data is trained afresh)."""
    if not path.exists():
        return None
    try:
        if load_torch(path, what).get("config") == config:
            return load(path)
    except UnreadableFileError as e:
        warnings.warn(f"{e}: training afresh", stacklevel=3)
    return None


def fit_unet(images: np.ndarray, targets: torch.Tensor, val: Dataset, path: Path, config: dict, dev: torch.device,
             per_epoch: int | None = None, order=None, progress: bool = True) -> tuple[nn.Module, Normalise, dict]:
    """The training loop of both U-Nets (05's on drawn masks, 07's on pseudo-masks); saves the checkpoint to ``path``.

    ``images``: uint8 N x H x W x 3; ``targets``: N x 1 x H x W (tumour) or N x 2 x H x W (tumour, pixels the
    loss ignores); ``config``: the checkpoint's settings (``epochs``, ``batch_size``, ``lr``, ``width``, ``seed``,
    ``precision``, ``layout`` and whatever identifies the data). Each epoch visits ``per_epoch`` slices (default
    all) in the order ``order(generator)`` draws (default a permutation of all). The epoch with the best
    validation mean-Dice (on ``val``'s drawn masks) is kept.
    """
    from tqdm.auto import tqdm

    epochs, batch_size, seed = config["epochs"], config["batch_size"], config["seed"]
    bf16, layout = config["precision"] == precision_name(True), memory_layout(config["layout"])
    seed_everything(seed)
    mean, std = channel_stats(images)
    norm = Normalise(mean, std).to(dev)
    model = UNet(config["width"]).to(dev).to(memory_format=layout)
    x, y = to_tensor(images, dev), targets.to(dev)
    per_epoch = len(x) if per_epoch is None else per_epoch
    steps = math.ceil(per_epoch / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=1e-4)
    # one-cycle needs more than 5 steps at pct_start 0.2; a tiny run of fewer ends before its schedule does
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"], total_steps=max(epochs * steps, 6),
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)  # epoch order (and any slices drawn), on the CPU
    aug_gen = torch.Generator(device=dev).manual_seed(seed)  # augmentation, on the device
    order = order or (lambda g: torch.randperm(len(x), generator=g))
    val_gt = np.asarray(val.masks)
    best, state, history, t0 = None, None, [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm, total = order(gen).to(dev), torch.zeros((), device=dev)
        for s in tqdm(range(steps), desc=f"U-Net epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb, yb = augment_batch(x[idx].float() / 255, aug_gen, y[idx].float())
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):  # as the classifiers
                logits = model(norm(xb).contiguous(memory_format=layout))
            loss = segmentation_loss(logits.float(), yb[:, 0], yb[:, 1] if yb.shape[1] > 1 else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)  # summed on the device: no sync per step
        train_loss = total.item() / len(perm)
        vd = mean_dice(predict_masks(model, norm, val.images), val_gt)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mean_dice": vd,
                        "seconds": time.perf_counter() - t0})
        if progress:
            print(f"U-Net epoch {epoch + 1}/{epochs}: loss {train_loss:.3f}, val mean-Dice {vd:.3f}")
        if best is None or vd > best["val_mean_dice"]:
            best = dict(history[-1])
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    ckpt = {"config": config, "model": state, "norm_mean": mean, "norm_std": std, "best": best,
            "history": history, "versions": versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(path, ckpt)
    return model.eval(), norm, ckpt


def train_unet(train: Dataset, val: Dataset, out_dir: str | Path, epochs: int = 10, batch_size: int = 16,
               lr: float = 3e-3, width: int = 16, seed: int = 0, device: str = "auto", split_hash: str = "",
               progress: bool = True, resume: bool = True) -> tuple[nn.Module, Normalise, dict]:
    """Train (or, with ``resume``, reload a ``best.pt`` made with the same settings from the same pixels) the U-Net."""
    dev = resolve_device(device)
    config = {**training_config(dev, epochs, batch_size, lr, width, seed),
              "image_size": int(train.images.shape[1]), "split_hash": split_hash,
              "data_sha256": arrays_digest(train.images, train.masks, val.images, val.masks)}
    path = Path(out_dir) / "best.pt"
    done = resume and resumed(path, config, "U-Net checkpoint", lambda p: load_unet(p, dev))
    if done:
        return done
    masks = torch.from_numpy(np.ascontiguousarray(train.masks))[:, None]
    return fit_unet(train.images, masks, val, path, config, dev, progress=progress)
