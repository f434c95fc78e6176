"""Data: the LGG loader (kaggle_3m layout), the synthetic default, the patient split.

Conventions: an image is uint8 H x W x 3, a mask is bool H x W.
A :class:`Dataset` holds every slice of a study in memory, in the order of its
manifest (one row per slice). Nothing in this module ever writes into a data root.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from .io import atomic_path, read_json, text_sha256, write_json

SPLITS = ("train", "val", "test")

LGG_HELP = (
    "Expected the Kaggle 'kaggle_3m' layout: DATA_ROOT/TCGA_<institution>_<patient>_<date>/"
    "TCGA_<institution>_<patient>_<date>_<slice>.tif with a matching ..._<slice>_mask.tif "
    "(.png works too). Get it from https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation "
    "(`kaggle datasets download -d mateuszbuda/lgg-mri-segmentation`, unzip, and point "
    "data_root at the 'kaggle_3m' folder), or run the embedded synthetic default instead."
)

_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)\.(?P<ext>tif|tiff|png)$", re.IGNORECASE)
_CASE_RE = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]+)_(?P<pid>[A-Z0-9]+)_(?P<date>\d+)$", re.IGNORECASE)


class DataError(ValueError):
    """Bad or missing input data; the message names the file or folder and what was expected."""


@dataclass
class Dataset:
    """All slices of one study: ``images[i]``, ``masks[i]`` and ``manifest.iloc[i]`` belong together."""

    images: np.ndarray  # N x H x W x 3, uint8
    masks: np.ndarray  # N x H x W, bool
    manifest: pd.DataFrame

    def __post_init__(self) -> None:
        n = len(self.manifest)
        if self.images.shape[0] != n or self.masks.shape[0] != n:
            raise DataError(
                f"dataset parts disagree: {self.images.shape[0]} images, {self.masks.shape[0]} masks, "
                f"{n} manifest rows"
            )
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 N x H x W x 3, got {self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != bool:
            raise DataError(f"masks must be bool N x H x W matching images, got {self.masks.dtype} {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, rows: np.ndarray | Sequence[int] | pd.Series) -> "Dataset":
        """Slices by position (ints) or by a boolean selector over the manifest."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        return Dataset(self.images[idx], self.masks[idx], self.manifest.iloc[idx].reset_index(drop=True))

    def split(self, name: str) -> "Dataset":
        if "split" not in self.manifest:
            raise DataError("this dataset has no 'split' column: run split_patients first")
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.subset((self.manifest["split"] == name).to_numpy())


# --------------------------------------------------------------------------- LGG


def scan_lgg(root: str | Path, require_masks: bool = True) -> pd.DataFrame:
    """List every slice of a kaggle_3m folder without reading pixels.

    Returns one row per slice, sorted by patient then slice number (numeric, 1-based).
    With ``require_masks=False`` an image without a mask is listed with an empty ``mask_path``
    (new patients to segment); otherwise it is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LGG data root {str(root)!r} is not a folder. {LGG_HELP}")
    rows = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _CASE_RE.match(case_dir.name)
        if not m:
            continue
        images, masks = {}, {}
        for f in case_dir.iterdir():
            name = f.name
            is_mask = False
            stem = name
            for suffix in ("_mask.tif", "_mask.tiff", "_mask.png"):
                if name.lower().endswith(suffix):
                    is_mask, stem = True, name[: -len(suffix)] + "." + suffix.split(".")[-1]
            sm = _SLICE_RE.match(stem)
            if not sm or sm.group("case") != case_dir.name:
                continue
            (masks if is_mask else images)[int(sm.group("slice"))] = f
        for s in sorted(set(images) | set(masks)):
            if s not in images:
                raise DataError(f"mask {masks[s]} has no image beside it (expected {case_dir.name}_{s}.tif or .png)")
            if s not in masks and require_masks:
                raise DataError(
                    f"image {images[s]} has no mask beside it (expected {case_dir.name}_{s}_mask.tif or .png)"
                )
            rows.append(
                {
                    "patient": "_".join(case_dir.name.split("_")[:3]),
                    "case": case_dir.name,
                    "institution": m.group("inst").upper(),
                    "slice": s,
                    "image_path": str(images[s]),
                    "mask_path": str(masks[s]) if s in masks else "",
                }
            )
    if not rows:
        raise DataError(f"no LGG cases found under {str(root)!r}. {LGG_HELP}")
    return pd.DataFrame(rows)


def _open(path: str, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except Exception as e:  # PIL raises several types for unreadable/truncated files
        raise DataError(f"cannot read {what} file {path}: {e} (unreadable or truncated image?)") from e


def read_slice(image_path: str, mask_path: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one image (uint8 H x W x 3) and its mask (bool H x W), optionally resized to size x size.

    An empty ``mask_path`` gives an empty mask (a slice without ground truth).
    """
    img = _open(image_path, "image")
    mask = _open(mask_path, "mask") if mask_path else np.zeros(img.shape[:2], np.uint8)
    if img.ndim == 2:  # a grey image: repeat it so models see three channels
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise DataError(f"image {image_path} has shape {img.shape}; expected H x W x 3")
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise DataError(f"image {image_path} has dtype {img.dtype}; expected 8-bit (uint8)")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != img.shape[:2]:
        raise DataError(
            f"image {image_path} is {img.shape[1]}x{img.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]}; they must be the same size"
        )
    mask = mask > 0
    if size is not None and img.shape[:2] != (size, size):
        img, mask = resize_slice(img, mask, size)
    return img, mask


def resize_slice(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to size x size: the image bilinearly (antialiased), the mask by nearest neighbour."""
    im = Image.fromarray(img).resize((size, size), Image.BILINEAR)
    mk = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(im), np.asarray(mk) > 0


def load_lgg(
    root: str | Path,
    size: int | None = 256,
    patients: Sequence[str] | int | None = None,
    workers: int = 4,
    progress: bool = True,
    require_masks: bool = True,
) -> Dataset:
    """Load a kaggle_3m folder (.tif or .png) into memory.

    ``patients`` restricts the load to a list of patient ids, or to the first N patients.
    ``size`` resizes every slice to size x size (None keeps the native 256 x 256).
    ``require_masks=False`` accepts images without masks (``has_mask`` False, empty mask).
    """
    manifest = scan_lgg(root, require_masks)
    if patients is not None:
        ids = sorted(manifest["patient"].unique())
        keep = ids[: int(patients)] if isinstance(patients, int) else list(patients)
        unknown = sorted(set(keep) - set(ids))
        if unknown:
            raise DataError(f"patients {unknown} are not under {root}")
        manifest = manifest[manifest["patient"].isin(keep)].reset_index(drop=True)
    if size is None:
        first = _open(manifest["image_path"].iloc[0], "image")
        size = first.shape[0]
    n = len(manifest)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)

    native = np.zeros(n, int)

    def work(i: int) -> None:
        row = manifest.iloc[i]
        img, mask = read_slice(row["image_path"], row["mask_path"], None)
        native[i] = img.shape[0] if img.shape[0] == img.shape[1] else -1
        if img.shape[:2] != (size, size):
            img, mask = resize_slice(img, mask, size)
        images[i], masks[i] = img, mask

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(work, range(n))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=n, desc=f"loading LGG ({manifest['patient'].nunique()} patients)", unit="slice")
        for _ in it:
            pass
    manifest["has_mask"] = manifest["mask_path"] != ""
    manifest["native_size"] = native
    return Dataset(images, masks, _finish_manifest(manifest, masks))


def _finish_manifest(manifest: pd.DataFrame, masks: np.ndarray) -> pd.DataFrame:
    manifest = manifest.copy()
    manifest["tumour_pixels"] = masks.reshape(len(masks), -1).sum(1).astype(int)
    manifest["tumour"] = manifest["tumour_pixels"] > 0
    return manifest


# --------------------------------------------------------------------- synthetic


def generate_synthetic(
    n_patients: int = 40,
    size: int = 128,
    slices: tuple[int, int] = (18, 30),
    seed: int = 0,
    tumour_free_patients: float = 0.1,
    progress: bool = False,
) -> Dataset:
    """The embedded default: brain-like axial slices with tumours and exact masks.

    Each patient is a short stack of consecutive slices through one synthetic head
    (skull, brain, ventricles, smooth tissue texture, a scanner-like intensity bias).
    Channels imitate pre-contrast / FLAIR / post-contrast MRI: the tumour is bright on
    FLAIR, slightly dark before contrast and enhances after contrast in some patients.
    Tumours are 3-D blobs of varied size (some only a few pixels wide), shape and
    contrast; the mask is exactly where the tumour was painted, restricted to the brain.
    Patients belong to four synthetic sites whose noise and bias differ, so the split
    can be stratified by site like LGG by institution. Deterministic for a given seed.
    """
    if n_patients < 3:
        raise DataError(f"n_patients={n_patients}: need at least 3 patients for a train/val/test split")
    if size < 32:
        raise DataError(f"size={size}: synthetic slices must be at least 32 x 32")
    lo, hi = slices
    if not 3 <= lo <= hi:
        raise DataError(f"slices={slices}: expected (min, max) with 3 <= min <= max")
    images, masks, rows = [], [], []
    it = range(n_patients)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="generating synthetic patients")
    for p in it:
        rng = np.random.default_rng([seed, p])
        site = "ABCD"[p % 4]
        img, msk = _synthetic_patient(rng, size, int(rng.integers(lo, hi + 1)), site, tumour_free_patients)
        images.append(img)
        masks.append(msk)
        for s in range(len(img)):
            rows.append(
                {
                    "patient": f"SYN_{site}_{p:03d}",
                    "case": f"SYN_{site}_{p:03d}",
                    "institution": site,
                    "slice": s + 1,
                    "image_path": "",
                    "mask_path": "",
                }
            )
    images = np.concatenate(images)
    masks = np.concatenate(masks)
    return Dataset(images, masks, _finish_manifest(pd.DataFrame(rows), masks))


_SITE_NOISE = {"A": 0.02, "B": 0.035, "C": 0.025, "D": 0.045}
_SITE_BIAS = {"A": 0.10, "B": 0.20, "C": 0.15, "D": 0.25}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def _synthetic_patient(
    rng: np.random.Generator, size: int, depth: int, site: str, p_free: float
) -> tuple[np.ndarray, np.ndarray]:
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    z = np.linspace(0.08, 0.92, depth, dtype=np.float32)  # position of each slice through the head
    cx, cy = s / 2 + rng.normal(0, 0.03 * s, 2)
    a, b = s * rng.uniform(0.33, 0.40), s * rng.uniform(0.38, 0.45)  # head semi-axes
    theta = rng.uniform(-0.25, 0.25)
    ct, st = np.cos(theta), np.sin(theta)
    u = ((xx - cx) * ct + (yy - cy) * st)[None]
    v = (-(xx - cx) * st + (yy - cy) * ct)[None]
    # heads narrow towards the top and bottom of the stack
    scale = np.sqrt(np.clip(1 - ((z - 0.5) / 0.62) ** 2, 0.2, 1))[:, None, None]
    r = (u / (a * scale)) ** 2 + (v / (b * scale)) ** 2
    head = r < 1
    brain = r < (1 - rng.uniform(0.06, 0.1)) ** 2
    skull = head & ~brain
    # two ventricles, largest in the middle slices
    vent_size = np.clip(1 - ((z - 0.5) / 0.3) ** 2, 0, 1)[:, None, None]
    vent = np.zeros_like(head)
    for side in (-1, 1):
        vr = ((u - side * 0.12 * a) / (0.07 * a + 1e-3)) ** 2 + (v / (0.28 * b + 1e-3)) ** 2
        vent |= (vr < vent_size) & brain
    texture = _smooth_noise(rng, (depth, size, size), (1.0, 0.02 * s, 0.02 * s))
    fine = _smooth_noise(rng, (depth, size, size), (0.5, 0.6, 0.6))
    gm = 0.5 + 0.05 * texture + 0.02 * fine  # tissue with grey/white-matter-like variation
    # scanner bias: a smooth multiplicative field, stronger at some sites
    bx, by = rng.normal(0, _SITE_BIAS[site], 2)
    bias = 1 + bx * (xx - cx) / s + by * (yy - cy) / s
    # the tumour: a lumpy ellipsoid, from a few pixels to a fifth of the head
    tumour = np.zeros_like(head)
    flair_gain = pre_gain = post_gain = 0.0
    weight = np.zeros(head.shape, np.float32)
    if rng.random() >= p_free:
        kind = rng.choice(["tiny", "small", "medium", "large"], p=[0.15, 0.3, 0.35, 0.2])
        radius = {"tiny": (0.015, 0.03), "small": (0.03, 0.06), "medium": (0.06, 0.11), "large": (0.11, 0.18)}[kind]
        rx, ry = s * rng.uniform(*radius, 2)
        rz = max(1.0, rng.uniform(0.2, 0.4) * depth * (rx + ry) / (0.25 * s))
        z0 = rng.uniform(0.25, 0.75) * (depth - 1)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.55)
        tx, ty = cx + rad * a * np.cos(ang), cy + rad * b * np.sin(ang)
        lumps = _smooth_noise(rng, (depth, size, size), (1.0, max(1.0, rx / 2), max(1.0, ry / 2)))
        zz = np.arange(depth, dtype=np.float32)[:, None, None]
        f = ((xx - tx) / rx) ** 2 + ((yy - ty) / ry) ** 2 + ((zz - z0) / rz) ** 2 + 0.25 * lumps
        tumour = (f < 1) & brain
        weight = np.where(tumour, np.sqrt(np.clip(1 - f, 0, 1)) * 0.6 + 0.4, 0).astype(np.float32)
        flair_gain = rng.uniform(0.12, 0.4)
        pre_gain = -rng.uniform(0.03, 0.12)
        post_gain = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else 0.0
    noise = _SITE_NOISE[site]
    chans = []
    for brain_v, vent_v, skull_v, gain in (
        (0.45, 0.22, 0.75, pre_gain), (0.5, 0.12, 0.35, flair_gain), (0.47, 0.22, 0.7, post_gain)
    ):
        c = np.where(brain, gm * (brain_v / 0.5), 0.0)
        c = np.where(vent, vent_v, c)
        c = np.where(skull, skull_v, c)
        c = c + gain * weight
        c = c * bias[None] * head
        c = c + head * rng.normal(0, noise, head.shape).astype(np.float32)
        chans.append(c)
    img = np.clip(np.stack(chans, -1), 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), tumour


def write_kaggle_layout(dataset: Dataset, root: str | Path, ext: str = "png") -> Path:
    """Write a dataset in the kaggle_3m layout (for synthetic cohorts used as external data).

    Refuses to write into a folder that already holds files, so it can never overwrite data.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} is not empty; write_kaggle_layout only writes into a new or empty folder")
    for i, row in dataset.manifest.iterrows():
        case = f"TCGA_{row['institution']}_{row['patient'].split('_')[-1]}_20000101"
        (root / case).mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.images[i]).save(root / case / f"{case}_{row['slice']}.{ext}")
        Image.fromarray(dataset.masks[i].astype(np.uint8) * 255).save(root / case / f"{case}_{row['slice']}_mask.{ext}")
    return root


# ------------------------------------------------------------------------- split


def split_patients(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Assign whole patients to train / val / test, stratified by institution (or site).

    Patients are shuffled within each institution and the institutions laid end to end;
    walking that list, each patient goes to the split furthest behind its target share.
    Each institution is thus spread over the splits in proportion, and the global
    shares are as close to ``fractions`` as whole patients allow. Same seed, same split.
    """
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1):
        raise DataError(f"fractions={tuple(fractions)}: expected three non-negative shares summing to 1")
    patients = manifest.groupby("patient", sort=True).agg(
        institution=("institution", "first"), tumour=("tumour", "any"), free=("tumour", lambda t: (~t).any())
    )
    if len(patients) < 3:
        raise DataError(f"only {len(patients)} patients: need at least 3 for a patient-wise split")
    rng = np.random.default_rng(seed)
    order = []
    for _, group in patients.groupby("institution", sort=True):
        names = group.index.to_numpy().copy()
        rng.shuffle(names)
        order.extend(names)
    counts = np.zeros(3)
    assign = {}
    for i, name in enumerate(order):
        k = int(np.argmax(fractions * (i + 1) - counts))
        assign[name] = SPLITS[k]
        counts[k] += 1
    out = manifest.copy()
    out["split"] = out["patient"].map(assign)
    for name in SPLITS:
        part = out[out["split"] == name]
        if fractions[SPLITS.index(name)] > 0 and (part["tumour"].sum() == 0 or (~part["tumour"]).sum() == 0):
            raise DataError(
                f"split {name!r} ({part['patient'].nunique()} patients) lacks tumour or tumour-free slices; "
                f"use more patients or another seed (seed={seed})"
            )
    return out


def manifest_hash(manifest: pd.DataFrame) -> str:
    """A short fingerprint of which slice is in which split, recorded in checkpoints."""
    cols = [c for c in ("patient", "slice", "split", "tumour") if c in manifest]
    return text_sha256(manifest[cols].to_csv(index=False))[:16]


# ------------------------------------------------------------- save and reload


def save_dataset(dataset: Dataset, folder: str | Path, meta: dict | None = None) -> Path:
    """Write images.npy, masks.npy, manifest.csv, then meta.json last (the 'complete' marker)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for name, arr in (("images.npy", dataset.images), ("masks.npy", dataset.masks)):
        with atomic_path(folder / name, suffix=".npy") as tmp:
            np.save(tmp, arr)
    with atomic_path(folder / "manifest.csv") as tmp:
        dataset.manifest.to_csv(tmp, index=False)
    write_json(
        folder / "meta.json",
        {"n": len(dataset), "size": dataset.size, "manifest_hash": manifest_hash(dataset.manifest), **(meta or {})},
    )
    return folder


def load_dataset(folder: str | Path, mmap: bool = False) -> Dataset:
    """Reload what :func:`save_dataset` wrote (notebook 01's output)."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise DataError(f"{folder} holds no complete dataset (no meta.json): run notebook 01 (data) first")
    manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
    mode = "r" if mmap else None
    ds = Dataset(np.load(folder / "images.npy", mmap_mode=mode), np.load(folder / "masks.npy", mmap_mode=mode), manifest)
    meta = read_json(folder / "meta.json")
    if meta.get("manifest_hash") != manifest_hash(manifest):
        raise DataError(f"{folder}/manifest.csv does not match meta.json: the dataset folder was modified")
    return ds


def build_dataset(
    dataset: str = "synthetic",
    data_root: str | None = None,
    image_size: int = 128,
    seed: int = 0,
    n_patients: int | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: bool = True,
) -> Dataset:
    """What notebook 01 does: load or generate, resize, split. ``dataset`` is 'synthetic' or 'lgg'."""
    if dataset == "synthetic":
        ds = generate_synthetic(n_patients=n_patients or 40, size=image_size, seed=seed, progress=progress)
    elif dataset == "lgg":
        if not data_root:
            raise DataError(f"dataset='lgg' needs data_root. {LGG_HELP}")
        ds = load_lgg(data_root, size=image_size, patients=n_patients, progress=progress)
    else:
        raise DataError(f"unknown dataset {dataset!r}; expected 'synthetic' or 'lgg'")
    ds.manifest = split_patients(ds.manifest, split_fractions, seed=seed)
    return ds
