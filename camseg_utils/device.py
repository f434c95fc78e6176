"""Where tensors live: choosing the torch device, naming it, and moving uint8 images onto it.

A module of its own so that training, heatmaps and segmentation share these helpers without
importing one another.
"""

from __future__ import annotations

import numpy as np
import torch


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
