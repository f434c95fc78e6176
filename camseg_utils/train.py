"""Training, prediction and checkpoints for the tumour / no-tumour classifiers (their metrics: :mod:`.metrics`).

Our design decisions (not the paper's): from scratch by default; the whole split lives
on the device as uint8 and is augmented there in batches (flips, small rotations,
shifts and scalings, per-channel intensity jitter), so the data path never waits on a
loader; channels-last convolutions on every device (oneDNN's fast layout on a CPU, tensor
cores' on a GPU: ``benchmarks/bench_train.py`` compares the layouts); forward passes in bfloat16
autocast where the device computes it natively (CUDA; x86 CPUs with AVX512-BF16 or AMX, where it
halves a step's time: :func:`.device.train_bf16`), float32 elsewhere; class imbalance is handled by
class-weighted cross-entropy; AdamW with a one-cycle schedule; the epoch with the best validation
ROC AUC is kept.
"""

from __future__ import annotations

import math
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .classification import classification_metrics
from .data import DataError, Dataset, manifest_hash
from .device import precision_name, resolve_device, to_tensor, train_bf16
from .io import UnreadableFileError, arrays_digest, load_torch, save_torch
from .models import build_model, get_spec


class CheckpointError(ValueError):
    """A checkpoint that does not fit the architecture, image size or split asked for."""


RETRAIN = "; re-create it with: python -m camseg_utils.pipeline --preset NAME --from 02_train"


@dataclass
class TrainConfig:
    arch: str = "small_cnn"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    pretrained: bool | str = False
    augment: bool = True
    amp: bool = True  # bf16 autocast where the device computes it natively (device.train_bf16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:  # read from the installed package's metadata: importing torchvision takes seconds
        tv = version("torchvision")
    except PackageNotFoundError:
        tv = "not installed"
    return {"torch": torch.__version__, "torchvision": tv, "numpy": np.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------ tensors


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.reshape(-1, 3).astype(np.float64) / 255
    return x.mean(0).tolist(), (x.std(0) + 1e-6).tolist()


class Normalise(nn.Module):
    """uint8 or 0..1 float N x 3 x H x W -> standardised float, with the training set's statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return (x - self.mean) / self.std


def augment_batch(x: torch.Tensor, gen: torch.Generator, masks: torch.Tensor | None = None):
    """Random flips, rotations (+-10 deg), shifts (+-6 %), scalings (0.9-1.1), intensity jitter.

    ``x`` is float 0..1, N x 3 x H x W; randomness comes from ``gen``, a generator on x's device
    (drawing on the device avoids a blocking host-to-device copy every step on a GPU).
    With ``masks`` (float N x 1 x H x W) the same geometry moves them too: returns (x, masks).
    """
    n = x.shape[0]
    r = torch.rand(n, 8, generator=gen, device=x.device)
    flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
    ang = (r[:, 1] - 0.5) * 2 * math.radians(10)
    scale = 0.9 + 0.2 * r[:, 2]
    tx, ty = (r[:, 3] - 0.5) * 0.12, (r[:, 4] - 0.5) * 0.12
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=gen, device=x.device) - 0.5) * 0.2
    x = (x * gain + (r[:, 5].view(n, 1, 1, 1) - 0.5) * 0.1 * (x > 0)).clamp(0, 1)
    if masks is None:
        return x
    return x, F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------ training


def _labels(ds: Dataset) -> np.ndarray:
    return ds.manifest["tumour"].to_numpy().astype(np.int64)


def check_classes(ds: Dataset, split: str) -> None:
    y = _labels(ds)
    if y.sum() == 0 or y.sum() == len(y):
        missing = "tumour" if y.sum() == 0 else "tumour-free"
        raise DataError(f"the {split} split ({len(y)} slices) has no {missing} slice; a classifier cannot be trained")


# what last.pt must share with this training to be resumed, and what it must hold
_SAME_TRAINING = ("config", "split_hash", "data_sha256", "precision")
_RESUME_KEYS = ("record", "model", "optimizer", "scheduler", "generator", "aug_generator", "history", "best", "epoch",
                "torch_rng")


def train_classifier(
    train: Dataset,
    val: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    split_hash: str | None = None,
    progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Train one classifier; write ``best.pt`` (model selection on val AUC) and ``last.pt`` (resumable).

    Returns the best checkpoint's record (without weights). A ``last.pt`` from an
    interrupted run with the same configuration and split is resumed from its epoch.
    """
    from tqdm.auto import tqdm

    check_classes(train, "train")
    check_classes(val, "val")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    split_hash = split_hash or manifest_hash(pd.concat([train.manifest, val.manifest]))
    mean, std = channel_stats(train.images)
    norm = Normalise(mean, std).to(device)
    model = build_model(config.arch, config.pretrained).to(device).to(memory_format=torch.channels_last)
    x_train, y_train = to_tensor(train.images, device), torch.from_numpy(_labels(train)).to(device)
    x_val, y_val = to_tensor(val.images, device), _labels(val)
    counts = np.bincount(_labels(train), minlength=2)
    class_weight = torch.tensor(len(y_train) / (2 * counts), dtype=torch.float32, device=device)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.2
    )
    gen = torch.Generator().manual_seed(config.seed)  # epoch order, on the CPU
    aug_gen = torch.Generator(device=device).manual_seed(config.seed)  # augmentation, on the device
    use_amp = config.amp and train_bf16(device)
    record = {
        "arch": config.arch, "image_size": int(train.images.shape[1]), "norm_mean": mean, "norm_std": std,
        "split_hash": split_hash, "data_sha256": arrays_digest(train.images, _labels(train), val.images, _labels(val)),
        "seed": config.seed, "config": asdict(config), "precision": precision_name(use_amp), "versions": versions(),
        "layers": get_spec(config.arch).layers,
    }
    history: list[dict] = []
    best: dict | None = None
    start_epoch = 0
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        try:
            state = load_torch(last_path, "training state")
        except UnreadableFileError as e:  # a resume point only: losing it costs time, not results
            warnings.warn(f"{e}: not resumed, training {config.arch} from the first epoch", stacklevel=2)
            state = {}
        missing = [k for k in _RESUME_KEYS if k not in state]
        if state and missing:  # another version's last.pt: resuming would mix two recipes (or fail); start afresh
            warnings.warn(f"{last_path} lacks {', '.join(missing)} (written by another camseg version): not resumed, "
                          f"training {config.arch} from the first epoch", stacklevel=2)
        elif state and all(state["record"].get(k) == record[k] for k in _SAME_TRAINING):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            aug_gen.set_state(state["aug_generator"].to(aug_gen.get_state().device))
            history, best, start_epoch = state["history"], state["best"], state["epoch"]
            torch.set_rng_state(state["torch_rng"])
    t0 = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"{config.arch} epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        # running sums stay on the device; reading them (a sync) only every few steps keeps a GPU busy
        tot_loss = torch.zeros((), device=device)
        tot_correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step in bar:
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            xb = x_train[idx].float() / 255
            if config.augment:
                xb = augment_batch(xb, aug_gen)
            xb, yb = norm(xb).contiguous(memory_format=torch.channels_last), y_train[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=class_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.detach() * len(idx)
            tot_correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
            if progress and (step % 10 == 9 or step == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{tot_loss.item() / seen:.3f}", acc=f"{tot_correct.item() / seen:.3f}")
        tot_loss, tot_correct = tot_loss.item(), tot_correct.item()
        p_val = predict(model, norm, x_val, config.batch_size * 2, use_amp)
        vm = classification_metrics(y_val, p_val)
        val_loss = float(F.binary_cross_entropy(torch.tensor(p_val).clamp(1e-6, 1 - 1e-6), torch.tensor(y_val).float()))
        history.append({"epoch": epoch + 1, "train_loss": tot_loss / seen, "train_acc": tot_correct / seen,
                        "val_loss": val_loss, "val_acc": vm["accuracy"], "val_auc": vm["auc"],
                        "seconds": time.perf_counter() - t0})
        if progress:
            print(f"{config.arch} epoch {epoch + 1}/{config.epochs}: train loss {tot_loss / seen:.3f} "
                  f"acc {tot_correct / seen:.3f} | val loss {val_loss:.3f} acc {vm['accuracy']:.3f} auc {vm['auc']:.3f}")
        if best is None or (vm["auc"], -val_loss) > (best["val_auc"], -best["val_loss"]):
            best = {"epoch": epoch + 1, "val_auc": vm["auc"], "val_loss": val_loss, "val_acc": vm["accuracy"]}
            save_torch(out_dir / "best.pt", {**record, "model": model.state_dict(), "best": best})
        save_torch(last_path, {"record": record, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "generator": gen.get_state(),
                          "aug_generator": aug_gen.get_state(), "history": history,
                          "best": best, "epoch": epoch + 1, "torch_rng": torch.get_rng_state()})
    ckpt = load_torch(out_dir / "best.pt", "classifier checkpoint", RETRAIN)
    ckpt["history"] = history
    ckpt["train_seconds"] = history[-1]["seconds"] if history else 0.0
    save_torch(out_dir / "best.pt", ckpt)
    return {k: v for k, v in ckpt.items() if k != "model"}


# ----------------------------------------------------------- checkpoints


def load_classifier(
    path: str | Path,
    arch: str | None = None,
    image_size: int | None = None,
    split_hash: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Normalise, dict]:
    """Load ``best.pt``; refuse one made for another architecture, image size or split."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train the classifier first (notebook 02)")
    ckpt = load_torch(path, "classifier checkpoint", RETRAIN)
    for key, want in (("arch", arch), ("image_size", image_size), ("split_hash", split_hash)):
        if want is not None and ckpt.get(key) != want:
            raise CheckpointError(
                f"checkpoint {path} was made for {key}={ckpt.get(key)!r}, but {want!r} was asked for; "
                f"retrain (notebook 02) or point to the matching checkpoint"
            )
    device = torch.device(device)
    model = build_model(ckpt["arch"]).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    norm = Normalise(ckpt["norm_mean"], ckpt["norm_std"]).to(device)
    return model, norm, {k: v for k, v in ckpt.items() if k != "model"}


@torch.no_grad()
def predict(
    model: nn.Module, norm: Normalise, images: torch.Tensor | np.ndarray, batch_size: int = 64, amp: bool = False
) -> np.ndarray:
    """Tumour probability per image; ``images`` uint8 N x 3 x H x W tensor or N x H x W x 3 array."""
    device = next(model.parameters()).device
    if isinstance(images, np.ndarray):
        images = to_tensor(images, "cpu")
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = norm(images[i:i + batch_size].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out.append(torch.softmax(model(xb).float(), 1)[:, 1].cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
