"""The LGG loader: folders in the Kaggle ``kaggle_3m`` layout (.tif or .png), read without ever writing into them."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .dataset import DataError, Dataset, finish_manifest

LGG_HELP = (
    "Expected the Kaggle 'kaggle_3m' layout: DATA_ROOT/TCGA_<institution>_<patient>_<date>/"
    "TCGA_<institution>_<patient>_<date>_<slice>.tif with a matching ..._<slice>_mask.tif "
    "(.png works too). Get it from https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation "
    "(`kaggle datasets download -d mateuszbuda/lgg-mri-segmentation`, unzip, and point "
    "data_root at the 'kaggle_3m' folder), or run the embedded synthetic default instead."
)

LGG_ENV = "CAMSEG_LGG_ROOT"


def default_lgg_root() -> Path:
    """Where the LGG data is looked for: $CAMSEG_LGG_ROOT, else data/raw/kaggle_3m from where the command runs."""
    return Path(os.environ.get(LGG_ENV) or "data/raw/kaggle_3m")


_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)\.(?P<ext>tif|tiff|png)$", re.IGNORECASE)
_CASE_RE = re.compile(r"^TCGA_(?P<inst>[A-Z0-9]+)_(?P<pid>[A-Z0-9]+)_(?P<date>\d+)$", re.IGNORECASE)


_MASK_SUFFIX = re.compile(r"^(?P<stem>.+)_mask\.(?P<ext>tif|tiff|png)$", re.IGNORECASE)


def _case_info(case: str) -> tuple[str, str]:
    """(patient id, institution) of a case folder: TCGA names give both, any other name is its own patient."""
    m = _CASE_RE.match(case)
    if m:
        return "_".join(case.split("_")[:3]), m.group("inst").upper()
    return case, "unknown"


def scan_folder(root: str | Path, require_masks: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """List every slice of a kaggle_3m-layout folder without reading pixels, and everything skipped.

    A case is any folder ``root/<case>/`` holding ``<case>_<n>.<ext>`` images and
    ``<case>_<n>_mask.<ext>`` masks (ext tif, tiff or png; n the slice number). Returns (one row
    per slice sorted by patient then slice number, the skipped files and folders with the
    reason for each). Two files for one slice (``_1.png`` and ``_01.png``, or ``.png`` and
    ``.tif``) are an error naming both. With ``require_masks=False`` an image without a mask
    is listed with an empty ``mask_path`` (new patients to segment); otherwise it is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LGG data root {str(root)!r} is not a folder. {LGG_HELP}")
    rows, skipped = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            if entry.name != "data.csv":  # the release's clinical table: expected beside the cases
                skipped.append({"path": str(entry), "reason": "a file, not a case folder"})
            continue
        if entry.name.startswith("."):
            skipped.append({"path": str(entry), "reason": "a hidden folder"})
            continue
        case = entry.name
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for f in sorted(entry.iterdir()):
            mm = _MASK_SUFFIX.match(f.name)
            is_mask = bool(mm)
            stem = f"{mm.group('stem')}.{mm.group('ext')}" if mm else f.name
            sm = _SLICE_RE.match(stem)
            if not f.is_file() or not sm or sm.group("case") != case:
                skipped.append({"path": str(f), "reason": f"not named {case}_<n>.<tif|png> or {case}_<n>_mask.<tif|png>"})
                continue
            n = int(sm.group("slice"))
            found = masks if is_mask else images
            if n in found:
                raise DataError(f"two files for slice {n} of {case}: {found[n].name} and {f.name} (in {entry}); "
                                f"keep one of them")
            found[n] = f
        if not images and not masks:
            skipped.append({"path": str(entry), "reason": f"no {case}_<n>.<tif|png> slices inside"})
            continue
        patient, institution = _case_info(case)
        for n in sorted(set(images) | set(masks)):
            if n not in images:
                raise DataError(f"mask {masks[n]} has no image beside it (expected {case}_{n}.tif or .png)")
            if n not in masks and require_masks:
                raise DataError(f"image {images[n]} has no mask beside it (expected {case}_{n}_mask.tif or .png)")
            rows.append({"patient": patient, "case": case, "institution": institution, "slice": n,
                         "image_path": str(images[n]), "mask_path": str(masks[n]) if n in masks else ""})
    if not rows:
        raise DataError(f"no LGG cases found under {str(root)!r}. {LGG_HELP}")
    manifest = pd.DataFrame(rows).sort_values(["patient", "case", "slice"], kind="stable").reset_index(drop=True)
    return manifest, skipped


def scan_lgg(root: str | Path, require_masks: bool = True) -> pd.DataFrame:
    """The slices of a kaggle_3m folder (see :func:`scan_folder`); skipped entries are warned about."""
    manifest, skipped = scan_folder(root, require_masks)
    _warn_skipped(root, skipped)
    return manifest


def _warn_skipped(root, skipped: list[dict]) -> None:
    if skipped:
        import warnings

        shown = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:5])
        warnings.warn(f"{len(skipped)} entries under {root} are not slices and were skipped: {shown}"
                      f"{' ...' if len(skipped) > 5 else ''}", stacklevel=3)


def _open(path: str, what: str) -> np.ndarray:
    """Pixels as stored, palette images decoded to their colours (a palette index is no intensity)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except Exception as e:  # PIL raises several types for unreadable/truncated files
        raise DataError(f"cannot read {what} file {path}: {e} (unreadable or truncated image?)") from e


def binarise_mask(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """(bool mask, whether it was soft).

    A mask with one non-zero value (0/255, 0/1) is that value's pixels. A soft mask (blurred
    or anti-aliased edges: more than one non-zero value) is cut at half its type's range
    (127.5 for 8 bits, 0.5 for floats), so a blurred edge does not count as tumour.
    """
    values = np.unique(mask)
    if len(values[values != 0]) <= 1:
        return mask > 0, False
    if np.issubdtype(mask.dtype, np.integer):
        half = np.iinfo(mask.dtype).max / 2
    elif mask.dtype == bool:
        half = 0
    else:
        half = 0.5
    return mask > half, True


def read_slice_notes(image_path: str, mask_path: str, size: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`read_slice` plus what a report should say about the slice ('1-channel image', 'soft mask')."""
    notes = []
    img = _open(image_path, "image")
    mask = _open(mask_path, "mask") if mask_path else np.zeros(img.shape[:2], np.uint8)
    if img.ndim == 2:  # a grey image: repeat it so models see three channels, and say so
        img = np.repeat(img[..., None], 3, axis=-1)
        notes.append("1-channel image")
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
    mask, soft = binarise_mask(mask)
    if soft:
        notes.append("soft mask")
    if size is not None and img.shape[:2] != (size, size):
        img, mask = resize_slice(img, mask, size)
    return img, mask, notes


def read_slice(image_path: str, mask_path: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one image (uint8 H x W x 3) and its mask (bool H x W), optionally resized to size x size.

    An empty ``mask_path`` gives an empty mask (a slice without ground truth).
    """
    img, mask, _ = read_slice_notes(image_path, mask_path, size)
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
    manifest, skipped = scan_folder(root, require_masks)
    _warn_skipped(root, skipped)
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
    notes = [""] * n

    def work(i: int) -> None:
        row = manifest.iloc[i]
        img, mask, note = read_slice_notes(row["image_path"], row["mask_path"], None)
        notes[i] = "; ".join(note)
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
    manifest["notes"] = notes
    ds = Dataset(images, masks, finish_manifest(manifest, masks))
    ds.skipped = skipped
    return ds


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
