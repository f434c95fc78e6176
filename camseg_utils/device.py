"""Where tensors live: choosing the torch device, naming it, and moving uint8 images onto it.

A module of its own so that training, heatmaps and segmentation share these helpers without
importing one another.
"""

from __future__ import annotations

import os

import numpy as np
import torch

FP32_ENV = "CAMSEG_TRAIN_FP32"  # set to 1: every training in float32, whatever the device


def resolve_device(device: str = "auto") -> torch.device:
    """A device named by a notebook or command-line parameter: 'auto' (CUDA when there is one), 'cpu', 'cuda'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available here; use 'auto' or 'cpu'")
    return torch.device(device)


def as_device(device: str | torch.device | None) -> torch.device:
    """A device passed on by library code (already resolved, or None for the CPU)."""
    return torch.device(device) if device is not None else torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The card's name for a CUDA device, else 'CPU (N threads)': what every benchmark prints."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x H x W x 3 -> uint8 N x 3 x H x W on ``device`` (kept uint8 to save memory)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: any CUDA device camseg trains on, or a CPU with
    AVX512-BF16 or AMX (elsewhere a CPU emulates it, slower than float32)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def train_bf16(device: torch.device) -> bool:
    """Whether training's forward passes autocast to bfloat16 on ``device``: where it is native
    (:func:`native_bf16`) unless the environment sets ``CAMSEG_TRAIN_FP32=1``. Weights, optimiser
    state and losses stay float32; every trainer records the choice as ``precision``."""
    return os.environ.get(FP32_ENV, "") not in ("1", "true", "yes") and native_bf16(device)


def precision_name(bf16: bool) -> str:
    return "bfloat16" if bf16 else "float32"
