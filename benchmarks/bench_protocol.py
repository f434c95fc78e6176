"""Notebook 05's validation protocol alone, timed (and profiled) on a run folder finished through 04.

The sweep over every (method, layer) with the notebook's full grid (thresholds, top-k, Otsu, both
heatmap scales, the guided radii, head and classifier gates, the clean-up on the best settings), then
the chosen settings on test: what ``protocol.study_cams`` does in 05 before the U-Net. The heatmaps come
from the run's cache (a cache miss fills it first: run it twice and time the second). Prints seconds and,
with ``--profile N``, the N functions with the most time of their own.

    python benchmarks/bench_protocol.py runs/lgg_cpu --methods hirescam random [--threads 1] [--profile 25]

Writes nothing but the run's heatmap cache.
"""

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from camseg_utils import data, protocol
from camseg_utils.device import device_name, resolve_device

ap = argparse.ArgumentParser()
ap.add_argument("run_dir", help="a run folder finished through notebook 04 (data, classifier, heatmap cache)")
ap.add_argument("--arch", default="small_cnn")
ap.add_argument("--methods", nargs="+", default=["hirescam", "random"])
ap.add_argument("--layers", nargs="+", default=["early", "middle", "last"])
ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
ap.add_argument("--profile", type=int, default=0, help="print this many functions by their own time")
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
run_dir, dev = Path(args.run_dir), resolve_device(args.device)
ds = data.load_dataset(run_dir / "data", mmap=True)
val, test = protocol.Split.of(ds.split("val")), protocol.Split.of(ds.split("test"))
# notebook 05's defaults
grid = protocol.SweepGrid([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], [1, 2, 5, 10, 20], ["per_image", "global"],
                          [0, 8, 16], 1e-3, 1, [False, True], [0.0, 0.5], [False, True], 5, "mean_dice")
prof = cProfile.Profile() if args.profile else None
t0 = time.perf_counter()
if prof:
    prof.enable()
study = protocol.study_cams(protocol.run_heatmaps(run_dir, val, test, "mean", 32, dev, 0, args.methods, args.layers),
                            protocol.run_probabilities(run_dir), [args.arch], args.methods, args.layers, val, test, grid,
                            fuse="mean", n_boot=1000, seed=0, device=dev)
if prof:
    prof.disable()
print(f"{device_name(dev)}: protocol {time.perf_counter() - t0:.1f} s for "
      f"{args.methods} at {args.layers} ({len(val.images)} validation, {len(test.images)} test slices of "
      f"{val.images.shape[1]} px; {len(study.curves)} validation rows)", flush=True)
if prof:
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
