"""Notebook 07's pseudo-label U-Net under other knobs, on a run folder finished through 05 (target on
`lgg_cpu`: test mean-Dice >= 0.72 and patient Dice >= 0.70). Prints every number with its knobs.

The CAM source of 07 alone (no random-heatmap control): pseudo-masks of the training split from the
CAM setting 05 chose, U-Nets trained on them with 05's U-Net recipe, band, round, epoch and 3-D
clean-up chosen on validation, scored once on test. The networks go to ``--out`` (a temporary folder
by default), never into the run folder, so a finished run's own 07 is left as it was; the run
folder's heatmap cache is read (and filled, for the training split, when 07 has not run there).

    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --epochs 10 --bands 0 --rounds 0
    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --epochs 5 --bands 0 0.3 --rounds 1 --threads 2
"""

import argparse
import json
import tempfile
import time

from camseg_utils import pseudo_study
from camseg_utils.io import load_torch
from camseg_utils.workers import pinned_threads

ap = argparse.ArgumentParser()
ap.add_argument("--run", required=True, help="run folder finished through 05_dice (e.g. runs/lgg_cpu)")
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--bands", nargs="+", type=float, default=[0.0])
ap.add_argument("--rounds", type=int, default=0)
ap.add_argument("--empty-share", type=float, default=0.5)
ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU numbers depend on it)")
ap.add_argument("--out", default=None, help="folder for the networks (kept; a rerun reuses them)")
args = ap.parse_args()

grid = pseudo_study.PseudoGrid(args.bands, args.rounds, args.epochs, args.empty_share)
with tempfile.TemporaryDirectory() as tmp, pinned_threads(args.threads):
    t0 = time.perf_counter()
    study = pseudo_study.study_pseudo(args.run, grid, control=False, device="cpu", progress=False,
                                      models_dir=args.out or tmp)
    seconds = time.perf_counter() - t0
    cam = study.sources["cam"]
    history = load_torch(cam.chosen["network"], "pseudo-label U-Net checkpoint")["history"]
print(f"run {args.run}; knobs: bands {args.bands}, rounds {args.rounds}, epochs {args.epochs}, empty share "
      f"{args.empty_share}; {args.threads} torch thread(s), CPU; {seconds:.0f} s")
print(f"pseudo-masks from {pseudo_study.source_name(cam.setting)}")
for row in cam.rows:
    print(f"  band {row['band']:g} round {row['round']}: best epoch {row['best_epoch']}, val mean-Dice "
          f"{row['val_mean_dice']:.3f}, val patient Dice {row['val_patient_dice']:.3f}")
print("  chosen network's val mean-Dice per epoch: " + " ".join(f"{h['val_mean_dice']:.3f}" for h in history))
print(pseudo_study.results_table(study).to_string(index=False))
print(json.dumps({k: cam.unet.scores[k] for k in ("mean_dice", "patient_dice", "fp_area")}))
