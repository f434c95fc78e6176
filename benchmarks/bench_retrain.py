"""One re-training of notebook 06, timed: a classifier (``--arch``, 06's default) trained from scratch on a run's
unfiltered images at the re-training size, scored on test (what every one of 06's re-trainings costs).

Times ``--repeats`` re-trainings (seeds 0, 1, ...) at each ``--threads`` count, one after another in this
process, then the same re-trainings ``--jobs`` at a time in one-thread worker processes, as 06 runs them.
Each re-training writes into a temporary folder, so none is reused.

    python benchmarks/bench_retrain.py runs/synthetic --size 32 [--epochs 3] [--threads 1 2] [--repeats 4] [--jobs 2]

Writes nothing to the run folder.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from camseg_utils import data, retrain


def one_by_one(images, manifests, seeds, arch, epochs, batch_size, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sd in seeds:
            retrain.retrain_and_score(images, manifests, Path(tmp) / f"s{sd}", sd, arch, epochs, batch_size, "cpu")
    return time.perf_counter() - t0


def side_by_side(images, manifests, seeds, arch, epochs, batch_size, jobs: int) -> float:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, retrain._Trainings(jobs, 1, None) as runs:
        for sd in seeds:
            runs.submit({"seed": sd}, (images, manifests, Path(tmp) / f"s{sd}", sd, arch, epochs, batch_size, "cpu"))
        runs.results()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", help="a run folder finished through notebook 01 (its data)")
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--size", type=int, default=32, help="re-training size in px (06's retrain_size)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the one-by-one runs")
    ap.add_argument("--repeats", type=int, default=4, help="re-trainings per case (seeds 0, 1, ...)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the side-by-side case (0: skip it)")
    args = ap.parse_args()
    ds = data.load_dataset(Path(args.run_dir) / "data", mmap=True)
    images = {s: retrain.resize_images(ds.split(s).images, args.size) for s in data.SPLITS}
    manifests = {s: ds.split(s).manifest for s in data.SPLITS}
    case = (images, manifests, range(args.repeats), args.arch, args.epochs, args.batch_size)
    what = (f"{args.arch}, {len(images['train'])} training slices at {args.size} px, {args.epochs} epochs, "
            f"{args.repeats} re-trainings")
    for threads in args.threads:
        s = one_by_one(*case, threads)
        print(f"{what}: one by one at {threads} thread(s) {s:.1f} s, {s / args.repeats:.2f} s each", flush=True)
    if args.jobs:
        s = side_by_side(*case, args.jobs)
        print(f"{what}: {args.jobs} side by side at 1 thread each {s:.1f} s (worker start-up included), "
              f"{s / args.repeats:.2f} s each", flush=True)


if __name__ == "__main__":  # 06's worker processes are spawned: they import this file without running it
    main()
