"""The filtered re-training test of the heatmaps (notebook 06): the experiment and its tables.

The paper's test: filter every image by its heatmap, re-train the classifier's architecture from
scratch on the filtered training split and score it on the filtered test split. Its two claims:
classifiers rely mainly on the hot areas; the dark regions also carry class information.

Our design decisions (not the paper's):
- readings are test ROC AUC, mean and standard deviation over ``seeds`` re-trainings;
- three inputs per (heatmap, filter, k, fill): ``image`` (the filtered images, re-trained),
  ``shape`` (the filter's shape alone, no image content, re-trained: :func:`filtering.shape_images`)
  and ``original`` (the original classifier on the filtered test images at its own size, no
  re-training: it never saw a mask, so a mask's outline cannot inform it);
- a heatmap comes from the classifier's tumour logit, so its shape already encodes the label:
  a re-trained reading no higher than the shape-only one measures the shape, not what the kept
  pixels hold (Rong et al. ICML 2022; Song et al., "On Pitfalls of RemOve-And-Retrain"). A mask
  and its complement hold the same information, so one shape-only training per heatmap (the weight
  map) serves keep-hot and keep-dark, and one per k (the top-k mask) serves keep and remove;
- filters for re-training act at the re-training size (images and heatmaps resized first,
  antialiased bilinear), so masks and fills are exactly what the re-trained classifier sees; the
  original classifier reads the soft filters and the mean fill at full size (imputing at full size
  costs a sparse solve of up to 0.9 x H x W unknowns per slice: far too slow for every condition);
- the random control (``random``) gets no shape-only run: its maps are drawn from a seed and the
  slice's index, never from the image, so their shape cannot carry the label.

The verdicts drawn from these numbers are in :mod:`.claims`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import classification, data, filtering, heatmap_cache, selection, train
from .device import resolve_device
from .io import arrays_digest, load_torch

SPLITS = ("train", "val", "test")
RANDOM = "random"
NO_HEATMAP = "none"  # the unfiltered reference rows
SHAPE_SOFT, SHAPE_HARD = "weight_map", "mask"
GUIDED = " + guided"  # in the name of a heatmap refined by the guided filter (the blur check)


# ------------------------------------------------------------------ inputs


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 N x H x W x 3 at ``size`` x ``size`` (antialiased bilinear); unchanged when size is None or equal."""
    images = np.asarray(images)
    if not size or size == images.shape[1]:
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def resize_maps(maps: np.ndarray, size: int | None) -> np.ndarray:
    """float32 N x H x W heatmaps in [0, 1] at ``size`` x ``size`` (antialiased bilinear)."""
    maps = np.asarray(maps, np.float32)
    if not size or size == maps.shape[1]:
        return maps
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps))[:, None], size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return x[:, 0].clamp(0, 1).numpy()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


# ------------------------------------------------------------------ experiment


def retrain_and_score(images: Mapping[str, np.ndarray], manifests: Mapping[str, pd.DataFrame], out_dir: str | Path,
                      seed: int, arch: str, epochs: int, batch_size: int, device: str) -> dict:
    """Re-train ``arch`` from scratch on ``images['train']`` (model selection on 'val'); test accuracy and AUC.

    A finished checkpoint in ``out_dir`` trained on the same images, labels and settings is reused.
    """

    ds = {s: data.Dataset(images[s], np.zeros(images[s].shape[:3], bool), manifests[s]) for s in SPLITS}
    key = arrays_digest(images["train"], images["val"], manifests["train"].tumour.to_numpy(),
                       manifests["val"].tumour.to_numpy())
    cfg = train.TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    train.train_classifier(ds["train"], ds["val"], cfg, out_dir, split_hash=key, progress=False)
    model, norm, _ = train.load_classifier(Path(out_dir) / "best.pt", device=resolve_device(device))
    m = classification.classification_metrics(manifests["test"].tumour.to_numpy(), train.predict(model, norm, images["test"]))
    return {"accuracy": m["accuracy"], "auc": m["auc"]}


class _Trainings:
    """Runs :func:`retrain_and_score` for every submitted re-training and keeps the rows in submission order.

    ``jobs`` 1: in this process, one after another, at this process's thread count. More: in ``jobs`` spawned
    worker processes of ``threads`` torch threads each. A small CNN's convolutions on a few dozen pixels use
    a second thread poorly, so on a CPU independent one-thread re-trainings side by side finish sooner than
    the same re-trainings one by one on every thread. A re-training's result depends on its inputs, seed,
    thread count and training precision (:func:`.device.train_bf16`), not on the process that ran it.
    """

    def __init__(self, jobs: int, threads: int, log: Callable[[str], None] | None) -> None:
        self.jobs, self.threads, self.log = jobs, threads, log
        self.pending: list = []  # (row, future or finished metrics, seeds of its condition if it is the last one)
        self.rows: list[dict] = []
        self.pool = None

    def __enter__(self) -> "_Trainings":
        if self.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawned, not forked: a forked child of a process whose OpenMP threads have run can hang
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=torch.set_num_threads, initargs=(self.threads,))
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.pool is None:
            return
        if exc_type is not None:  # an error or an interrupt: stop the running re-trainings too, not only the queued
            # (the executor lists its processes only privately; a resumed run re-trains what they left)
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def add(self, row: dict) -> None:
        """A finished row (no re-training), kept in its place among the others."""
        self.pending.append((row, {}, 0))

    def submit(self, row: dict, args: tuple, condition_seeds: int = 0) -> None:
        """One re-training; ``condition_seeds``: on the last seed of a condition, how many it has (its log line)."""
        result = self.pool.submit(retrain_and_score, *args) if self.pool else retrain_and_score(*args)
        self.pending.append((row, result, condition_seeds))
        # at most two re-trainings per worker in flight (running or queued, each with its filtered images)
        while len(self.pending) > (2 * self.jobs if self.pool else 0):
            self._collect()

    def _collect(self) -> None:
        row, result, n = self.pending.pop(0)
        self.rows.append({**row, **(result.result() if hasattr(result, "result") else result)})
        if n and self.log:
            aucs = [r["auc"] for r in self.rows[-n:]]
            self.log(f"{row['heatmap']:>24s} {row['input']:5s} {row['filter']:10s} k={row['k']:>3g} {row['imputation']:4s}: "
                     f"re-trained AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}")

    def results(self) -> list[dict]:
        while self.pending:
            self._collect()
        return self.rows


def parallel_jobs(jobs: int, device: str) -> tuple[int, int]:
    """(worker processes, torch threads each) for ``jobs`` (0: automatic).

    Automatic on a CPU: one one-thread worker per thread this process may use (``torch.get_num_threads()``,
    which a run pinned to fewer threads has already lowered, and no more than the cores it may run on); on a
    GPU, one (the re-trainings share the device).
    """
    from .workers import cores

    if jobs < 0:
        raise ValueError(f"jobs={jobs}: expected 0 (automatic) or a number of worker processes")
    threads = torch.get_num_threads()
    if jobs == 0:
        jobs = 1 if resolve_device(device).type != "cpu" else min(threads, cores())
    return jobs, max(1, threads // jobs)


def run_experiment(
    images: Mapping[str, np.ndarray], manifests: Mapping[str, pd.DataFrame],
    heatmaps: Mapping[str, Mapping[str, np.ndarray]], original: tuple, fill: np.ndarray, ks: Sequence[float],
    out_dir: str | Path, imputations: Sequence[str] = filtering.IMPUTATIONS, seeds: Sequence[int] = (0, 1, 2),
    arch: str = "small_cnn", size: int | None = None, epochs: int = 3, batch_size: int = 32, device: str = "cpu",
    noise: float = filtering.NLI_NOISE, ks_for: Mapping[str, Sequence[float]] | None = None,
    log: Callable[[str], None] | None = print, jobs: int = 1, threads: int | None = None,
) -> pd.DataFrame:
    """Every re-training of the study; one row per (heatmap, input, filter, k, imputation, seed).

    ``images`` / ``manifests``: per split (train, val, test), full-size uint8 images and their manifests
    (``tumour`` is the label). ``heatmaps``: name -> split -> N x H x W maps in [0, 1]; the name
    ``random`` is the random control and is required. ``original``: (model, norm) of the classifier
    the heatmaps came from. ``fill``: the training split's per-channel mean (0..255). ``ks_for``
    overrides ``ks`` for some heatmaps. Rows of input 'original' have no seed; the heatmap
    'none' rows are the unfiltered references (re-trained at ``size``, and the original classifier).
    ``jobs``: re-trainings side by side in worker processes of ``threads`` torch threads each (see
    :func:`parallel_jobs`; 0: automatic, 1: one by one in this process at its own thread count); the rows
    depend on the threads each re-training had, not on how many ran side by side (a finished re-training
    found in ``out_dir`` is reused whatever its threads were). Workers are spawned: a
    script that calls this with more than one job needs the usual ``if __name__ == "__main__":`` guard.
    """

    if RANDOM not in heatmaps:
        raise ValueError(f"heatmaps {sorted(heatmaps)}: the random control {RANDOM!r} is required")
    missing = [s for s in SPLITS if s not in images or s not in manifests]
    if missing:
        raise ValueError(f"images and manifests need the splits {SPLITS}; missing {missing}")
    if len(seeds) < 2:
        raise ValueError(f"seeds={list(seeds)}: at least two, so every reading has a spread")
    jobs, auto_threads = parallel_jobs(jobs, device)
    model, norm = original
    y_test = manifests["test"].tumour.to_numpy()
    small = {s: resize_images(images[s], size) for s in SPLITS}
    out_dir = Path(out_dir)
    manifests = {s: manifests[s] for s in SPLITS}

    with _Trainings(jobs, threads or auto_threads, log) as trainings:
        def retrain(name: str, inp: str, kind: str, k: float, imp: str, x: Mapping[str, np.ndarray]) -> None:
            for i, sd in enumerate(seeds):
                folder = out_dir / _slug(f"{name}__{inp}__{kind}_{k:g}_{imp}__seed{sd}")
                row = {"heatmap": name, "input": inp, "filter": kind, "k": float(k), "imputation": imp, "seed": sd}
                trainings.submit(row, (x, manifests, folder, sd, arch, epochs, batch_size, device),
                                 len(seeds) if i == len(seeds) - 1 else 0)

        def read_original(name: str, kind: str, k: float, imp: str, x: np.ndarray) -> None:
            m = classification.classification_metrics(y_test, train.predict(model, norm, x))
            trainings.add({"heatmap": name, "input": "original", "filter": kind, "k": float(k), "imputation": imp,
                           "seed": None, "accuracy": m["accuracy"], "auc": m["auc"]})

        retrain(NO_HEATMAP, "image", "none", 0.0, "-", small)
        read_original(NO_HEATMAP, "none", 0.0, "-", np.asarray(images["test"]))
        for name, maps in heatmaps.items():
            ks_h = list((ks_for or {}).get(name, ks))
            small_maps = {s: resize_maps(maps[s], size) for s in SPLITS}
            for kind, k, imp in filtering.conditions(ks_h, imputations):
                x = {s: filtering.filter_images(small[s], small_maps[s], kind, k, fill, imp if imp != "-" else "mean",
                                                noise, seed=i) for i, s in enumerate(SPLITS)}
                retrain(name, "image", kind, k, imp, x)
                if imp in ("-", "mean"):
                    read_original(name, kind, k, imp, filtering.filter_images(images["test"], maps["test"], kind, k, fill))
            if name == RANDOM:
                continue
            for kind, k in [(SHAPE_SOFT, 0.0)] + [(SHAPE_HARD, float(k)) for k in ks_h]:
                x = {s: filtering.shape_images(small_maps[s], "keep_hot" if kind == SHAPE_SOFT else "keep", k) for s in SPLITS}
                retrain(name, "shape", kind, k, "-", x)
        rows = trainings.results()
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ tables


def shape_of(kind: str, k: float) -> tuple[str, float]:
    """The shape-only condition that controls a filter: the weight map (soft) or the top-k mask (hard)."""
    if kind in filtering.SOFT:
        return SHAPE_SOFT, 0.0
    if kind in filtering.HARD:
        return SHAPE_HARD, float(k)
    raise ValueError(f"filter {kind!r} has no shape-only control; filters are {filtering.SOFT + filtering.HARD}")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (heatmap, filter, k, imputation) of the filtered images: the re-trained reading (mean, sd over
    seeds), its shape-only control, their difference (what the image content adds beyond the shape; sd from both
    spreads) and the original classifier's reading."""
    keys = ["heatmap", "filter", "k", "imputation"]
    need = set(keys) | {"input", "seed", "auc", "accuracy"}
    if not need <= set(runs.columns):
        raise ValueError(f"runs lack the columns {sorted(need - set(runs.columns))}")
    g = runs[runs.input != "original"].groupby(["input"] + keys)
    stats = g.agg(auc=("auc", "mean"), auc_sd=("auc", "std"), accuracy=("accuracy", "mean"), seeds=("seed", "nunique"))
    orig = runs[runs.input == "original"].set_index(keys)["auc"]
    out = []
    for (inp, *key), r in stats.iterrows():
        if inp != "image":
            continue
        row = dict(zip(keys, key), auc=r.auc, auc_sd=r.auc_sd, accuracy=r.accuracy, seeds=int(r.seeds))
        sh = (key[0],) + shape_of(key[1], key[2]) + ("-",) if key[1] != "none" else None
        if sh is not None and ("shape",) + sh in stats.index:
            s = stats.loc[("shape",) + sh]
            row.update(shape_auc=s.auc, shape_auc_sd=s.auc_sd, image_minus_shape=r.auc - s.auc,
                       image_minus_shape_sd=math.hypot(r.auc_sd, s.auc_sd))
        else:
            row.update(shape_auc=math.nan, shape_auc_sd=math.nan, image_minus_shape=math.nan,
                       image_minus_shape_sd=math.nan)
        row["original_auc"] = float(orig.get(tuple(key), math.nan))
        out.append(row)
    return pd.DataFrame(out)


def pm(mean: float, sd: float | None = None) -> str:
    """'0.912 ± 0.010' ('n/a' for a missing reading, no ± for a seedless one)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if sd is None or math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def unfiltered(summary: pd.DataFrame) -> pd.Series:
    """:func:`summarise`'s unfiltered reference row: re-trained on the images as they are, and the original classifier."""
    return summary[summary.heatmap == NO_HEATMAP].iloc[0]


def display_table(summary: pd.DataFrame) -> list[dict]:
    """The summary as report rows, readings written as mean ± sd."""
    return [{"heatmap": r.heatmap, "filter": r.filter, "k": r.k, "fill": r.imputation,
             "re-trained on images": pm(r.auc, r.auc_sd), "shape only": pm(r.shape_auc, r.shape_auc_sd),
             "images - shape": pm(r.image_minus_shape, r.image_minus_shape_sd),
             "original classifier": pm(r.original_auc)} for r in summary.itertuples()]


def study_heatmaps(run_dir: str | Path, checkpoint: str | Path, images: Mapping[str, np.ndarray], methods: Sequence[str],
                   layer: str, fuse: str = "mean", batch_size: int = 32, device=None, seed: int = 0,
                   guided_radius: int = -1, loader: Callable | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The heatmaps the study filters by: name -> split -> float32 N x H x W maps in [0, 1].

    Per method its cached maps at ``layer`` and, for the blur check, the same maps refined by the guided
    filter (``guided_radius`` px; -1: the radius notebook 05 chose on validation for this model, method
    and layer, read from ``metrics/05_dice_table.csv``; 0: none), named ``'<method> + guided r=<radius>'``;
    then the random control ``'random'``.
    """

    run_dir = Path(run_dir)
    arch = load_torch(checkpoint, "classifier checkpoint")["arch"]

    def cached(mth):
        return {s: heatmap_cache.cached_heatmaps(run_dir, checkpoint, images[s], s, mth, layer, fuse, batch_size, device,
                                        seed=seed, loader=loader, progress=False) for s in SPLITS}

    def as_maps(h):
        return {s: np.asarray(v.heatmap, np.float32) for s, v in h.items()}

    out = {}
    for mth in methods:
        h = cached(mth)
        out[mth] = as_maps(h)
        r = int(guided_radius)
        if r < 0:
            table = run_dir / "metrics" / "05_dice_table.csv"
            if not table.exists():
                raise FileNotFoundError(f"guided_radius=-1 reads the radius 05 chose from {table}, which does not exist: "
                                        f"run notebook 05 first, or give guided_radius (0: no refined heatmaps)")
            t = pd.read_csv(table)
            row = t[(t.arch == arch) & (t.method == mth) & (t.layer == layer) & (t.refinement == "guided")]
            r = int(row.guided_radius.iloc[0]) if len(row) else 0
        if r:
            out[f"{mth}{GUIDED} r={r}"] = as_maps({s: selection.setting_heatmaps(v, {"guided_radius": r}, images[s], device)
                                                   for s, v in h.items()})
    out[RANDOM] = as_maps(cached("random"))
    return out


def blur_check_ks(heatmaps: Iterable[str], ks: Sequence[float]) -> dict[str, Sequence[float]]:
    """``ks_for`` of :func:`run_experiment`: ``ks`` for every heatmap :func:`study_heatmaps` refined (the blur
    check, kept to fewer k than the others to keep the run affordable)."""
    return {name: ks for name in heatmaps if GUIDED in name}
