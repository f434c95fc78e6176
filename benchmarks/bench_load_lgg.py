"""How long loading the LGG set takes (target: all 80 patients at 256 x 256 in under 60 s, warm cache).

    python benchmarks/bench_load_lgg.py [--root DATA/kaggle_3m] [--size 256]
"""

import argparse
import os
import time

from camseg_utils import data
from camseg_utils.data import load_lgg

ap = argparse.ArgumentParser()
ap.add_argument("--root", default=str(data.default_lgg_root()), help="kaggle_3m folder (default $CAMSEG_LGG_ROOT or data/raw/kaggle_3m)")
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--repeats", type=int, default=2, help="the first pass warms the disk cache")
args = ap.parse_args()
for r in range(args.repeats):
    t = time.perf_counter()
    ds = load_lgg(args.root, size=args.size, progress=False)
    dt = time.perf_counter() - t
    m = ds.manifest
    print(f"pass {r + 1}: {m.patient.nunique()} patients, {len(ds)} slices ({int(m.tumour.sum())} with tumour) "
          f"at {args.size}x{args.size} in {dt:.1f} s ({len(ds) / dt:.0f} slices/s), cpu count {os.cpu_count()}")
