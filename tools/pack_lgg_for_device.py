"""Pack a kaggle_3m folder small enough to travel to the lent GPU machine (64 MiB per call), and unpack it there.

Lossless PNG of all 80 patients at 256 x 256 is about 160 MiB, so images travel as JPEG (quality
90, no chroma subsampling: the three channels are different MRI sequences; mean absolute error
about 1.4 grey levels of 255) and masks as PNG (lossless). Results on the unpacked copy are
therefore on slightly altered images: say so next to any number measured on it.

    python tools/pack_lgg_for_device.py pack ../shared/data/lgg/kaggle_3m data/lgg_subset/lgg256_jpeg.tar
    python tools/pack_lgg_for_device.py unpack data/lgg_subset/lgg256_jpeg.tar /tmp/kaggle_3m
"""

import io
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image


def pack(src: Path, tar_path: Path, quality: int = 90) -> None:
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / "data.csv", "kaggle_3m/data.csv")
        for f in sorted(src.glob("*/*")):
            if f.suffix.lower() not in (".png", ".tif", ".tiff"):
                continue
            im = Image.open(f)
            buf = io.BytesIO()
            rel = f"kaggle_3m/{f.parent.name}/{f.stem}"
            if f.stem.endswith("_mask"):
                im.save(buf, "PNG", optimize=True)
                name = rel + ".png"
            else:
                im.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=0)
                name = rel + ".jpg"
            info = tarfile.TarInfo(name)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    print(f"{tar_path}: {tar_path.stat().st_size / 2**20:.1f} MiB")


def _to_png(path: str) -> None:
    p = Path(path)
    Image.open(p).convert("RGB").save(p.with_suffix(".png"), compress_level=1)
    p.unlink()


def unpack(tar_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest.parent if dest.name == "kaggle_3m" else dest, filter="data")
    root = dest if dest.name == "kaggle_3m" else dest / "kaggle_3m"
    jpgs = [str(p) for p in root.glob("*/*.jpg")]
    with ProcessPoolExecutor() as pool:  # the loader reads .tif and .png, as the Kaggle layout has
        list(pool.map(_to_png, jpgs, chunksize=64))
    print(f"{root}: {len(jpgs)} images")


if __name__ == "__main__":
    verb, a, b = sys.argv[1:4]
    (pack if verb == "pack" else unpack)(Path(a), Path(b))
