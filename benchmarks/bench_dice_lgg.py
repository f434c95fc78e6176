"""Segmentation quality on LGG (targets: best CAM mean-Dice >= 0.60 and >= 0.8x the U-Net; U-Net
mean-Dice >= 0.75 and patient Dice >= 0.82 at 256 x 256). Prints every number with the device.

A condensed notebook 02 + 05 for one architecture, through the same protocol
(:mod:`camseg_utils.protocol`): every knob chosen on validation per (method, layer), scored once on
test with patient-bootstrap CIs. The CAMs' clean-up and threshold-free metrics are left out here to
keep the run short. Each (method, layer) is scored with the heatmap alone (refinement none) and with the
guided refinement (radius chosen on validation). The U-Net comes last (it takes longest), with its
3-D clean-up chosen on validation as in 05; every fraction's test score is printed beside it.

    python benchmarks/bench_dice_lgg.py [--root ../shared/data/lgg/kaggle_3m] [--size 256] [--arch resnet18]
    python benchmarks/bench_dice_lgg.py --unet-only --unet-width 8 --unet-epochs 20   # the U-Net reference alone
    python benchmarks/bench_dice_lgg.py --unet-only ... --out DIR   # keep the checkpoints: a rerun resumes from them
"""

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from camseg_utils import classification, data, protocol, train, unet
from camseg_utils.device import device_name, resolve_device

ap = argparse.ArgumentParser()
ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "lgg", "kaggle_3m"))
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--arch", default="resnet18")
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--methods", nargs="+", default=["gradcam", "xgradcam", "layercam"])
ap.add_argument("--layers", nargs="+", default=["early", "middle", "last"])
ap.add_argument("--unet-epochs", type=int, default=30)
ap.add_argument("--unet-width", type=int, default=32)
ap.add_argument("--unet-lr", type=float, default=1e-3, help="one-cycle peak (the LGG presets' value)")
ap.add_argument("--guided-radii", nargs="+", type=int, default=None,
                help="guided-filter radii to choose from (0: none); default 0, size/16, size/8")
ap.add_argument("--volume-cleanups", nargs="+", type=float, default=[0.0, 0.1, 0.3, 1.0],
                help="U-Net 3-D clean-up fractions to choose from on validation (0: none)")
ap.add_argument("--unet-only", action="store_true", help="skip the classifier and the heatmaps: the U-Net alone")
ap.add_argument("--device", default="auto")
ap.add_argument("--out", default=None,
                help="keep checkpoints and heatmaps here (a later run with the same settings resumes from them); default: a temporary folder")
args = ap.parse_args()
dev = resolve_device(args.device)
radii = args.guided_radii or [0, args.size // 16, args.size // 8]
t0 = time.perf_counter()
ds = data.build_dataset("lgg", args.root, args.size, seed=0, progress=False)
tr, va, te = (ds.split(s) for s in data.SPLITS)
print(f"device: {device_name(dev)}; LGG {len(ds)} slices at {args.size}, split {len(tr)}/{len(va)}/{len(te)}",
      flush=True)
val, test = protocol.Split.of(va), protocol.Split.of(te)


def print_row(r: dict) -> None:
    print(f"  {r['method']:9s} @ {r['layer']:6s} refinement {r['refinement']:6s}: val mean-Dice {r['val_mean_dice']:.3f} -> test "
          f"mean-Dice {r['mean_dice']:.3f} [{r['mean_dice_ci'][0]:.3f}, {r['mean_dice_ci'][1]:.3f}], patient Dice "
          f"{r['patient_dice']:.3f} ({r['rule']} {r['value']:g}, {r['normalisation']}, radius {r['guided_radius']}, "
          f"head {r['head_gate']}, gate {r['prob_gate']})", flush=True)


def cam_protocol(tmp: Path) -> dict:
    """Train the classifier, then choose every CAM knob on validation and score on test."""
    cfg = train.TrainConfig(arch=args.arch, epochs=args.epochs, batch_size=64, lr=1e-3, device=args.device)
    clf_dir = tmp / "models" / args.arch  # where protocol.run_heatmaps looks for it
    train.train_classifier(tr, va, cfg, clf_dir, progress=False)
    model, norm, meta = train.load_classifier(clf_dir / "best.pt", device=dev)
    p_v, p_t = train.predict(model, norm, va.images, amp=True), train.predict(model, norm, te.images, amp=True)
    m = classification.classification_metrics(te.manifest.tumour, p_t)
    print(f"{args.arch}: test accuracy {m['accuracy']:.3f}, AUC {m['auc']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    heatmaps = protocol.run_heatmaps(tmp, val, test, batch_size=64, device=dev, progress=False,
                                     loader=lambda: (model, norm, meta))
    grid = protocol.SweepGrid([i / 10 for i in range(1, 10)], [1, 2, 5, 10, 20], guided_radii=radii)
    study = protocol.study_cams(heatmaps, lambda _: (p_v, p_t),
                                [args.arch], args.methods, args.layers, val, test, grid, device=dev,
                                localisation=False, on_row=print_row)
    _, best = protocol.best_cams(study.results)
    for kind, b in best.items():
        print(f"best CAM, refinement {kind} (chosen on validation): {b.method} @ {b.layer}, test mean-Dice {b.mean_dice:.3f}, "
              f"patient Dice {b.patient_dice:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return best


with (contextlib.nullcontext(args.out) if args.out else tempfile.TemporaryDirectory()) as tmp:
    tmp = Path(tmp)
    best = {} if args.unet_only else cam_protocol(tmp)
    tu = time.perf_counter()
    net, unorm, uck = unet.train_unet(tr, va, tmp / "unet", epochs=args.unet_epochs, width=args.unet_width,
                                      lr=args.unet_lr, device=args.device, progress=args.unet_only)
    print(f"U-Net (width {args.unet_width}, {args.unet_epochs} epochs, {time.perf_counter() - tu:.0f} s; best epoch "
          f"{uck['best']['epoch']}, val mean-Dice {uck['best']['val_mean_dice']:.3f})", flush=True)
    # the 3-D clean-up as 05 does it: the fraction chosen on validation (by mean-Dice); 0 = the raw masks
    u = protocol.study_unet(net, unorm, va, test, args.volume_cleanups, every_fraction=True)
    for r, uf in zip(u.val_rows, u.test_by_fraction):
        print(f"  3-D clean-up {r['volume_cleanup']:g}{' (chosen)' if r is u.chosen else ''}: val mean-Dice "
              f"{r['mean_dice']:.3f}, patient Dice {r['patient_dice']:.3f} -> test mean-Dice {uf['mean_dice']:.3f} "
              f"[{uf['mean_dice_ci'][0]:.3f}, {uf['mean_dice_ci'][1]:.3f}], patient Dice {uf['patient_dice']:.3f} "
              f"[{uf['patient_dice_ci'][0]:.3f}, {uf['patient_dice_ci'][1]:.3f}], FP area {uf['fp_area']:.5f}", flush=True)
    if best:
        print("best CAM / U-Net (chosen 3-D clean-up): "
              + ", ".join(f"{k} {b.mean_dice / u.scores['mean_dice']:.2f}" for k, b in best.items()), flush=True)
