"""Time `camseg_utils.evaluate` on 1,000 slices at 256 x 256 (target: under 3 minutes on this machine).

Builds a small run at 256 x 256 with the smoke preset (one classifier, the CAM methods of the smoke
preset, a U-Net), writes 1,000 synthetic slices of other patients in the kaggle_3m layout, and
evaluates them: classifier, one CAM method and the U-Net, masks written as PNG, metrics with CIs.

    python benchmarks/bench_evaluate.py [--workdir /tmp/camseg_bench_evaluate] [--slices 1000]
"""

import argparse
import shutil
import time
from pathlib import Path

from camseg_utils import data, evaluate, pipeline

ap = argparse.ArgumentParser()
ap.add_argument("--workdir", default="/tmp/camseg_bench_evaluate")
ap.add_argument("--slices", type=int, default=1000)
ap.add_argument("--size", type=int, default=256)
args = ap.parse_args()
work = Path(args.workdir)
run_dir = work / "run"
t = time.perf_counter()
pipeline.run("smoke", {"image_size": args.size, "05_dice.unet_width": 8}, run_dir=run_dir,
             figures_dir=work / "figures", stop="05_dice", progress=False)
print(f"run at {args.size} x {args.size} ready in {time.perf_counter() - t:.0f} s (not part of the timing)")
cohort = work / "cohort"
if cohort.exists():
    shutil.rmtree(cohort)
ds = data.generate_synthetic(n_patients=60, size=args.size, seed=1234)
ds = ds.subset(range(min(args.slices, len(ds))))
data.write_kaggle_layout(ds, cohort)
out = work / "out"
if out.exists():
    shutil.rmtree(out)
t = time.perf_counter()
r = evaluate.evaluate(run_dir, cohort, out, progress=False)
dt = time.perf_counter() - t
print(f"evaluated {r['slices']} slices at {args.size} x {args.size} ({r['classifier']}, "
      f"{r['cam_setting']['method']} @ {r['cam_setting']['layer']}, U-Net) in {dt:.1f} s "
      f"({r['slices'] / dt:.1f} slices/s); CAM mean-Dice {r['cam']['mean_dice']:.3f}, U-Net {r['unet']['mean_dice']:.3f}")
