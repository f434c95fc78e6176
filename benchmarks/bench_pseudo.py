"""Notebook 07's pseudo-label U-Net under other knobs, on a run folder finished through 05 (target on
`lgg_cpu`: test mean-Dice >= 0.72 and patient Dice >= 0.70). Prints every number with its knobs.

The CAM source of 07 alone (no random-heatmap control): pseudo-masks of the training split from the
CAM setting 05 chose, U-Nets trained on them with 05's U-Net recipe, band, round, epoch and 3-D
clean-up chosen on validation, scored once on test. The networks go to ``--out`` (a temporary folder
by default), never into the run folder, so a finished run's own 07 is left as it was; the run
folder's heatmap cache is read (and filled, for the training split, when 07 has not run there).

    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --epochs 10 --bands 0 --rounds 0
    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --epochs 5 --bands 0 0.3 --rounds 1 --threads 2
    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --bands 0 0.3 --rounds 1 --threads 2 --seeds 0 1 2
    python benchmarks/bench_pseudo.py --run runs/lgg_cpu --bands 0 0.3 --rounds 1 --ensemble 3 --threads 2 --seeds 0 3 6

With several ``--seeds`` the whole choice is made once per U-Net training seed (the classifier and its
heatmaps stay those of the run) and the last line gives the test figures' mean and spread over them.
With ``--ensemble K`` a seed S trains seeds S .. S + K - 1 for the mean of networks: seeds K apart
share no network.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

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
ap.add_argument("--ensemble", type=int, default=1, help="networks averaged on the best targets (07's ensemble)")
ap.add_argument("--gate", type=float, default=0.0, help="classifier gate on tumour-labelled slices (0: the label alone)")
ap.add_argument("--redraw-levels", nargs="*", type=float, default=[], help="intensity re-draw levels tried on validation")
ap.add_argument("--redraw-radii", nargs="+", type=int, default=[8], help="intensity re-draw radii (px)")
ap.add_argument("--redraw-outputs", action="store_true", help="also try the re-draws on the networks' masks")
ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="U-Net training seeds, each a whole 07 choice")
ap.add_argument("--out", default=None, help="folder for the networks (kept; a rerun reuses them)")
args = ap.parse_args()

grid = pseudo_study.PseudoGrid(args.bands, args.rounds, args.epochs, args.empty_share, ensemble=args.ensemble,
                               gate=args.gate, redraw_levels=args.redraw_levels, redraw_radii=args.redraw_radii,
                               redraw_outputs=args.redraw_outputs)
scores = []
for seed in args.seeds:
    with tempfile.TemporaryDirectory() as tmp, pinned_threads(args.threads):
        t0 = time.perf_counter()
        study = pseudo_study.study_pseudo(args.run, grid, control=False, device="cpu", seed=seed, progress=False,
                                          models_dir=Path(args.out or tmp) / f"seed{seed}")
        seconds = time.perf_counter() - t0
        cam = study.sources["cam"]
        history = load_torch(cam.chosen["network"], "pseudo-label U-Net checkpoint")["history"]
    print(f"run {args.run}; knobs: bands {args.bands}, rounds {args.rounds}, epochs {args.epochs}, empty share "
          f"{args.empty_share}, ensemble {args.ensemble}; seed {seed}; {args.threads} torch thread(s), CPU; {seconds:.0f} s")
    print(f"pseudo-masks from {pseudo_study.source_name(cam.setting)}; classifier gate {args.gate:g}; re-draw "
          f"level {cam.redraw['redraw_level']:g}, radius {cam.redraw['redraw_radius']} px (0: none)")
    for row in cam.redraw_rows:
        print(f"  re-draw level {row['redraw_level']:g} radius {row['redraw_radius']}: CAM masks' val mean-Dice "
              f"{row['val_mean_dice']:.3f}, val patient Dice {row['val_patient_dice']:.3f}")
    for row in cam.rows:
        print(f"  band {row['band']:g} round {row['round']}, {row['networks']} network(s): best epoch "
              f"{row['best_epoch']}, val mean-Dice "
              f"{row['val_mean_dice']:.3f}, val patient Dice {row['val_patient_dice']:.3f}, 3-D clean-up "
              f"{row['volume_cleanup']:g}{pseudo_study.redraw_text(row, 'output_')}")
    print("  chosen network's val mean-Dice per epoch: " + " ".join(f"{h['val_mean_dice']:.3f}" for h in history))
    print(pseudo_study.results_table(study).to_string(index=False))
    scores.append({k: cam.unet.scores[k] for k in ("mean_dice", "patient_dice", "fp_area")})
    print(json.dumps({"seed": seed, **scores[-1]}))
if len(scores) > 1:
    spread = {k: f"{np.mean([s[k] for s in scores]):.3f} ± {np.std([s[k] for s in scores], ddof=1):.3f}"
              for k in ("mean_dice", "patient_dice")}
    print(f"over seeds {args.seeds} (mean ± sd): test mean-Dice {spread['mean_dice']}, "
          f"patient Dice {spread['patient_dice']}")
