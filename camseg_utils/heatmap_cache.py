"""Heatmaps of whole image sets: computed in batches on the model's device, and kept in a disk cache.

A cache entry is keyed by everything that changes its content: the classifier checkpoint's
hash, the method, layers and fusion, the seed (for the methods that draw random numbers) and a
digest of the images themselves. Entries are written through memory maps into a temporary
folder and renamed into place when complete.
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

from .baselines import random_heatmaps, sobel_heatmaps
from .cam_library import library_cams
from .cams import BASELINES, FUSIONS, SEEDED, CamError, _Classifier, check_method, many_cams, parse_layers
from .device import to_tensor
from .gradient_free import score_batch as default_score_batch
from .io import UnreadableFileError, arrays_digest, file_sha256, load_torch, read_json, write_json
from .models import get_layer
from .train import RETRAIN, load_classifier

# bump when what a cache entry holds or how it is named changes: older entries are recomputed
# (3: the images' content hash in meta.json, the seed in the names of seeded entries)
CACHE_FORMAT = 3


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


def _spec(layers: str | Sequence[str]) -> str:
    """A layers entry as the caller names it: 'middle', 'middle+last', or a list joined by '+'."""
    return layers if isinstance(layers, str) else "+".join(layers)


def compute_many(
    model: nn.Module, norm: nn.Module, arch: str, images: np.ndarray, methods: Sequence[str],
    layers: Sequence[str | Sequence[str]] = ("middle",), fuses: Sequence[str] = ("mean",), batch_size: int = 32,
    engine: str = "auto", seed: int = 0, progress: bool = True,
    out: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """Heatmaps and raw maps of every (method, layers entry, fusion) for uint8 N x H x W x 3 ``images``.

    One sweep over the images: per batch one forward and one backward pass (:func:`many_cams`)
    give every CAM map asked for. Returns {(method, layers entry as given, fusion): (heatmap,
    raw)}; a baseline ('random', 'sobel') does not depend on the layer and is computed once,
    under every layers entry. ``engine``: 'auto' or 'fast' (the device path), or 'library'
    (pytorch-grad-cam, one method at a time; the reference). ``out`` maps keys to (memory-mapped)
    arrays to fill, so the whole dataset never has to sit in memory.
    """
    keys = [(m, _spec(spec), f) for m in dict.fromkeys(methods) for spec in layers for f in dict.fromkeys(fuses)]
    return compute_keys(model, norm, arch, images, keys, batch_size, engine, seed, progress, out)


def compute_keys(
    model: nn.Module | None, norm: nn.Module | None, arch: str, images: np.ndarray, keys: Sequence[tuple[str, str, str]],
    batch_size: int = 32, engine: str = "auto", seed: int = 0, progress: bool = True,
    out: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """:func:`compute_many` for an explicit list of (method, layers entry, fusion) keys (the model may be None
    when every key is a baseline)."""
    from tqdm.auto import tqdm

    keys = list(dict.fromkeys(keys))
    for method, _, fuse in keys:
        check_method(method)
        if fuse not in FUSIONS:
            raise CamError(f"unknown fusion {fuse!r}; expected one of {FUSIONS}")
    if engine not in ("auto", "fast", "library"):
        raise CamError(f"engine={engine!r}: expected 'auto', 'fast' or 'library'")
    n, h, w = images.shape[:3]
    result = {}
    for k in keys:
        result[k] = out[k] if out is not None and k in out else (np.empty((n, h, w), np.float32),
                                                                 np.empty((n, h, w), np.float32))
    for method in dict.fromkeys(k[0] for k in keys if k[0] in BASELINES):
        first = next(k for k in keys if k[0] == method)
        heat, raw = result[first]
        for i in range(0, n, 256):
            hb = (sobel_heatmaps(np.asarray(images[i:i + 256])) if method == "sobel"
                  else random_heatmaps(min(256, n - i), (h, w), seed, offset=i))
            heat[i:i + 256], raw[i:i + 256] = hb, hb
        for k in keys:
            if k[0] == method and k != first:
                result[k][0][:], result[k][1][:] = heat, raw
    cam_keys = [k for k in keys if k[0] not in BASELINES]
    if not cam_keys:
        return result
    names = {spec: tuple(parse_layers(arch, spec)) for spec in dict.fromkeys(k[1] for k in cam_keys)}
    requests = {k: (k[0], names[k[1]], k[2]) for k in cam_keys}
    # channels-last convolutions: about 20 % faster on our 2-core CPU (resnet18, 256 x 256)
    model.eval().to(memory_format=torch.channels_last)
    net = _Classifier(model, norm).eval()
    modules = {name: get_layer(model, arch, name) for spec in names.values() for name in spec}
    device = next(model.parameters()).device
    score_batch = default_score_batch(device)  # ScoreCAM's inner batch of masked images
    what = ", ".join(dict.fromkeys(k[0] for k in cam_keys))
    for i in tqdm(range(0, n, batch_size), desc=f"{what} @ {', '.join(names)}", disable=not progress, leave=False):
        xb = (to_tensor(np.asarray(images[i:i + batch_size]), device).float() / 255).contiguous(
            memory_format=torch.channels_last)
        if engine == "library":
            for k, (method, spec, fuse) in requests.items():
                with _numpy_seeded(seed, i):  # RandomCAM draws its channel weights from numpy's global generator
                    hb, rb = library_cams(net, [modules[s] for s in spec], xb, method, fuse, batch_size=score_batch)
                result[k][0][i:i + len(xb)], result[k][1][i:i + len(xb)] = hb, rb
            continue
        maps, _ = many_cams(net, modules, xb, list(dict.fromkeys(requests.values())), seed=seed, offset=i,
                            score_batch=score_batch)
        for k, req in requests.items():
            hb, rb = maps[req]
            result[k][0][i:i + len(xb)], result[k][1][i:i + len(xb)] = hb.cpu().numpy(), rb.cpu().numpy()
    return result


def compute_heatmaps(
    model: nn.Module, norm: nn.Module, arch: str, images: np.ndarray, method: str,
    layers: str | Sequence[str] = "middle", fuse: str = "mean", batch_size: int = 32,
    engine: str = "auto", seed: int = 0, progress: bool = True,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps and raw maps of one method for uint8 N x H x W x 3 ``images``, in batches, on the model's device.

    :func:`compute_many` with one request. ``engine``: 'fast' or 'auto' (the device path), or
    'library'. ``out`` lets the caller pass (memory-mapped) arrays to fill.
    """
    key = (method, _spec(layers), fuse)
    return compute_many(model, norm, arch, images, [method], [layers], [fuse], batch_size, engine, seed, progress,
                        out=None if out is None else {key: out})[key]


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


def _entry_name(method: str, names: Sequence[str], fuse: str, split: str, seed: int) -> str:
    name = f"{method}__{'+'.join(names)}__{fuse}__{split}"
    return f"{name}__seed{seed}" if method in SEEDED else name


def cached_heatmaps(
    run_dir: str | Path, checkpoint: str | Path, images: np.ndarray, split: str, method: str,
    layers: str | Sequence[str] = "middle", fuse: str = "mean", batch_size: int = 32,
    device: str | torch.device = "cpu", engine: str = "auto", seed: int = 0, progress: bool = True,
    loader: Callable | None = None,
) -> Heatmaps:
    """Heatmaps of one split, from the disk cache or computed and cached (:func:`cached_heatmaps_many`, one entry)."""
    key = (method, _spec(layers), fuse)
    return cached_heatmaps_many(run_dir, checkpoint, images, split, [method], [layers], [fuse], batch_size, device,
                                engine, seed, progress, loader)[key]


def cached_heatmaps_many(
    run_dir: str | Path, checkpoint: str | Path, images: np.ndarray, split: str, methods: Sequence[str],
    layers: Sequence[str | Sequence[str]] = ("middle",), fuses: Sequence[str] = ("mean",), batch_size: int = 32,
    device: str | torch.device = "cpu", engine: str = "auto", seed: int = 0, progress: bool = True,
    loader: Callable | None = None,
) -> dict[tuple[str, str, str], Heatmaps]:
    """Heatmaps of one split for every (method, layers entry, fusion), from the disk cache or computed in one sweep.

    Returns {(method, layers entry as given, fusion): Heatmaps}. Each entry is
    ``run_dir/heatmaps/<arch>-<checkpoint hash>/<method>__<layers>__<fuse>__<split>[__seed<seed>]/``
    holding heatmap.npy and raw.npy (float16), raw_peak.npy and meta.json; the seed is in the
    name of the methods that use it (random, randomcam). An entry is served only if its
    meta.json matches the format, the images' count, size and content hash
    (:func:`.io.arrays_digest`), so images that differ under the same split name are recomputed;
    a changed checkpoint has another hash and folder. Every missing entry is filled in one
    pass over the images (:func:`compute_many`), through memory maps in temporary folders
    renamed into place when complete, so an interrupted run leaves no half entry.
    """
    for method in methods:
        check_method(method)
    ckpt = load_torch(checkpoint, "classifier checkpoint", RETRAIN)
    arch = ckpt["arch"]
    ckpt_id = checkpoint_id(checkpoint)
    content = arrays_digest(images)
    n, h, w = images.shape[:3]
    folder = Path(run_dir) / "heatmaps" / f"{arch}-{ckpt_id}"
    entries, found, missing = {}, {}, []
    for method in dict.fromkeys(methods):
        for spec in layers:
            names = parse_layers(arch, spec) if method not in BASELINES else ["image"]
            for fuse in dict.fromkeys(fuses):
                key = (method, _spec(spec), fuse)
                entry = folder / _entry_name(method, names, fuse, split, seed)
                entries[key] = (entry, names)
                meta_path = entry / "meta.json"
                if meta_path.exists():
                    try:
                        meta = read_json(meta_path)
                    except UnreadableFileError:  # a broken entry is recomputed, like a missing one
                        meta = {}
                    if (meta.get("format") == CACHE_FORMAT and meta.get("n") == n and tuple(meta.get("size", ())) == (h, w)
                            and meta.get("images_hash") == content):
                        found[key] = _load_entry(entry, meta)
                        continue
                missing.append(key)
    if not missing:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    # one temporary folder per distinct entry (baselines: one entry serves every layers entry)
    todo = {}
    for key in missing:
        todo.setdefault(entries[key][0], []).append(key)
    tmps = {entry: Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=folder)) for entry in todo}
    try:
        out = {}
        for entry, keys in todo.items():
            heat = np.lib.format.open_memmap(tmps[entry] / "heatmap.npy", "w+", np.float16, (n, h, w))
            raw32 = np.lib.format.open_memmap(tmps[entry] / "raw32.npy", "w+", np.float32, (n, h, w))
            out[keys[0]] = (heat, raw32)
        need_model = any(k[0] not in BASELINES for k in out)
        model, norm, _ = ((load_classifier(checkpoint, device=device) if loader is None else loader())
                          if need_model else (None, None, None))
        compute_keys(model, norm, arch, images, list(out), batch_size, engine, seed, progress, out)  # one sweep
        for entry, keys in todo.items():
            method, spec, fuse = keys[0]
            _finish_entry(tmps[entry], out[keys[0]], n, h, w, {
                "arch": arch, "checkpoint": str(checkpoint), "checkpoint_id": ckpt_id, "method": method,
                "layers": entries[keys[0]][1], "fuse": fuse, "split": split, "n": n, "size": [h, w],
                "engine": engine, "seed": seed if method in SEEDED else None, "images_hash": content,
                "format": CACHE_FORMAT})
            out.pop(keys[0])
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmps[entry], entry)
            meta = read_json(entry / "meta.json")
            for key in keys:
                found[key] = _load_entry(entry, meta)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                shutil.rmtree(tmp)
    return {key: found[key] for key in entries}


def _finish_entry(tmp: Path, arrays: tuple[np.ndarray, np.ndarray], n: int, h: int, w: int, meta: dict) -> None:
    """Raw maps to float16 relative to each slice's peak, then meta.json last (its presence marks a whole entry)."""
    heat, raw32 = arrays
    raw = np.lib.format.open_memmap(tmp / "raw.npy", "w+", np.float16, (n, h, w))
    peak = np.zeros(n, np.float32)
    for i in range(0, n, 512):
        r = np.asarray(raw32[i:i + 512])
        peak[i:i + 512] = r.reshape(len(r), -1).max(1) if r.size else 0
        raw[i:i + 512] = r / np.maximum(peak[i:i + 512], 1e-30)[:, None, None]
    np.save(tmp / "raw_peak.npy", peak)
    heat.flush()
    raw.flush()
    del heat, raw, raw32, arrays
    (tmp / "raw32.npy").unlink()
    write_json(tmp / "meta.json", meta)


def _load_entry(entry: Path, meta: dict) -> Heatmaps:
    return Heatmaps(np.load(entry / "heatmap.npy", mmap_mode="r"), np.load(entry / "raw.npy", mmap_mode="r"),
                    np.load(entry / "raw_peak.npy"), meta)
