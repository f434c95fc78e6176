"""Apply a finished run, unchanged, to new patients, and score it where masks exist.

    python -m camseg_utils.evaluate --run runs/lgg --data /path/to/kaggle_3m [--out DIR]
    python -m camseg_utils.evaluate --run runs/lgg-folds --fold 2 --data ...   (a cross-validated run)

Everything comes from the run folder: the classifier (``models/<arch>/best.pt``), the U-Net
(``models/unet/best.pt``), and the CAM setting and every knob that notebook 05 chose on the
validation split (method, layer, fusion, rule and value, heatmap scale and its reference,
head gate, classifier gate, clean-up; the U-Net's 3-D clean-up); when the run has finished
notebook 07, also the U-Net trained on pseudo-masks with its 3-D clean-up. Nothing is tuned on
the new data. Images of another size are resized exactly as in training (the report says so);
slices without a mask get predictions only.

A cross-validated run (``--folds``) is applied one fold at a time (``--fold F``), never as an
ensemble: each fold's threshold, gates and clean-up were chosen on its own validation split for its
own classifier's heatmaps, and an average of the folds' heatmaps is a new heatmap no fold validated.
Any fold is a valid choice; the pooled report (``crossval.md``) says how far the folds differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import classification, data, metrics, protocol, pseudo_labels, train, unet
from .aggregate import numbered_folders
from .heatmap_cache import cached_heatmaps
from .io import UnreadableFileError, arrays_digest, atomic_path, file_sha256, read_json, write_json
from .masks import head_masks
from .provenance import data_fingerprint, provenance
from .report import markdown_table


class RunError(ValueError):
    """A run folder that lacks what evaluation needs."""


def resolve_run(run_dir: str | Path, fold: int | None = None) -> Path:
    """The run folder to apply: ``run_dir`` itself, or fold ``fold`` of a cross-validated run."""
    run_dir = Path(run_dir)
    folds = list(numbered_folders(run_dir, "fold"))
    if fold is None:
        if folds and not (run_dir / "metrics").is_dir():
            raise RunError(f"{run_dir} is a cross-validated run (folds {', '.join(map(str, folds))}): give --fold F to "
                           f"apply one fold's classifier, CAM setting and U-Net (the folds are not ensembled: each "
                           f"fold's knobs were chosen for its own classifier's heatmaps)")
        return run_dir
    if fold not in folds:
        raise RunError(f"--fold {fold}: {run_dir} has no fold-{fold} folder"
                       + (f"; its folds are {', '.join(map(str, folds))}" if folds else " (it is no cross-validated run)"))
    return run_dir / f"fold-{fold}"


def required_files(run_dir: Path) -> tuple[dict, list[Path]]:
    dice_path = run_dir / "metrics" / "05_dice.json"
    missing = [] if dice_path.exists() else [dice_path]
    chosen = read_json(dice_path) if dice_path.exists() else {}
    arch = (chosen.get("best_cam") or {}).get("arch", "<arch>")
    need = [run_dir / "models" / arch / "best.pt", run_dir / "models" / "unet" / "best.pt"]
    missing += [p for p in need if not p.exists()]
    return chosen, missing


def pseudo_network(run_dir: Path) -> dict | None:
    """Notebook 07's chosen prediction (its record: ``network``, ``network_sha256``, ``members``: every network
    it averages, ``volume_cleanup``), or None when the run has none; a network file that is not the one 07
    scored is refused."""
    path = run_dir / "metrics" / "07_pseudo_labels.json"
    if not path.exists():
        return None
    chosen = read_json(path).get("pseudo")
    if not chosen:
        return None
    members = chosen.get("members") or [{k: chosen[k] for k in ("network", "network_sha256")}]  # older runs: one
    for m in members:
        net = run_dir / m["network"]
        if not net.is_file() or file_sha256(net) != m["network_sha256"]:
            raise RunError(f"{net} is missing or not the network 07 scored (07_pseudo_labels.json records sha256 "
                           f"{m['network_sha256'][:12]}); re-run notebook 07 on this run: python -m "
                           f"camseg_utils.pipeline --preset NAME --run-dir {run_dir} --from 07_pseudo_labels")
    return {**chosen, "members": members}


MARKER = ".camseg-evaluate"  # in every output folder: only such a folder may be written into again


def check_out_dir(out_dir: Path, data_root: Path) -> None:
    """Refuse an output folder inside the data, a file, or a folder holding anything but an earlier evaluation."""
    out, root = out_dir.resolve(), data_root.resolve()
    if out == root or root in out.parents:
        raise RunError(f"--out {out_dir} is inside the data folder {data_root}; the data is never written into: "
                       f"choose a folder outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file; expected a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise RunError(f"--out {out_dir} already holds files that no evaluation wrote; choose an empty or new folder")


def check_classifier(run_dir: Path, chosen: dict, ckpt_path: Path) -> str:
    """The classifier must be the one notebook 05 chose its settings on; returns its sha256."""
    want = chosen.get("classifier_sha256")
    have = file_sha256(ckpt_path)
    if want != have:
        why = ("05_dice.json records no classifier hash (made by an older camseg)" if want is None
               else f"{ckpt_path} (sha256 {have[:12]}) is not the classifier 05 chose on ({want[:12]})")
        raise RunError(f"{why}: the CAM settings may not fit it. Re-run notebook 05 on this run: python -m "
                       f"camseg_utils.pipeline --preset NAME --run-dir {run_dir} --from 05_dice")
    return have


def evaluate(run_dir: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
             device: str = "auto", batch_size: int = 32, n_boot: int = 1000, progress: bool = True) -> dict:
    """Predict, segment and (where masks exist) score every slice under ``data_root``; returns the metrics."""
    t0 = time.perf_counter()
    run_dir, data_root = Path(run_dir), Path(data_root)
    if batch_size < 1:
        raise RunError(f"batch size {batch_size}: expected a positive integer")
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    chosen, missing = required_files(run_dir)
    if missing:
        raise RunError(f"run folder {run_dir} is incomplete; missing: " + ", ".join(str(p) for p in missing)
                       + " (run the pipeline through notebook 05 first)")
    best, rand = chosen["best_cam"], chosen.get("random_baseline")
    arch = best["arch"]
    ckpt_path = run_dir / "models" / arch / "best.pt"
    out_dir = Path(out_dir or run_dir / "external" / data_root.name)
    check_out_dir(out_dir, data_root)
    classifier_sha256 = check_classifier(run_dir, chosen, ckpt_path)
    weak = pseudo_network(run_dir)
    dev = train.resolve_device(device)
    model, norm, ckpt = train.load_classifier(ckpt_path, device=dev)
    size = int(ckpt["image_size"])
    ds = data.load_lgg(data_root, size=size, progress=progress, require_masks=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(f"camseg evaluate output: {run_dir} on {data_root}\n")
    m = ds.manifest
    resized = sorted(set(int(s) for s in m.native_size) - {size})

    probs = train.predict(model, norm, ds.images, batch_size * 2, amp=True)
    heads = head_masks(ds.images)
    key = f"external-{arrays_digest(ds.images)[:16]}"  # by pixels: two cohorts may share every name
    hm = cached_heatmaps(out_dir, ckpt_path, ds.images, key, best["method"], best["layer"], best["fuse"],
                              batch_size, dev, seed=int(best.get("seed", 0)), progress=progress,
                              loader=lambda: (model, norm, ckpt))
    _, cam_masks = protocol.apply_chosen(hm, best, ds.images, heads, probs, dev)
    net, unorm, _ = unet.load_unet(run_dir / "models" / "unet" / "best.pt", dev)
    unet_cleanup = float(chosen.get("unet_volume_cleanup", 0.0))  # absent: no 3-D clean-up
    unet_masks = unet.predict_volumes(net, unorm, ds, unet_cleanup, batch_size)
    named = {"cam": cam_masks, "unet": unet_masks}
    if weak:
        wnet, wnorm, _ = pseudo_labels.load_networks([run_dir / m["network"] for m in weak["members"]], dev)
        named["pseudo"] = pseudo_labels.network_masks(wnet, wnorm, ds, float(weak["volume_cleanup"]),
                                                      float(weak.get("output_redraw_level") or 0),
                                                      int(weak.get("output_redraw_radius") or 0), heads, batch_size)

    # outputs: masks as PNG beside an index of what was read (paths only, no copies of the images)
    rows = []
    for i, r in m.iterrows():
        case_dir = out_dir / "masks" / r["case"]
        case_dir.mkdir(parents=True, exist_ok=True)
        pngs = {}
        for name, masks in named.items():
            pngs[f"{name}_mask"] = path = case_dir / f"{r['case']}_{r['slice']}_{name}.png"
            with atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(masks[i].astype(np.uint8) * 255).save(tmp, format="PNG")
        rows.append({"patient": r["patient"], "slice": r["slice"], "image_path": r["image_path"],
                     "mask_path": r["mask_path"], "tumour_probability": float(probs[i]),
                     "predicted_tumour": bool(probs[i] >= 0.5),
                     **{k: str(p.relative_to(out_dir)) for k, p in pngs.items()}})
    index = pd.DataFrame(rows)

    has = m["has_mask"].to_numpy()
    result = {"run": str(run_dir), "data": str(data_root), "slices": len(m), "patients": int(m.patient.nunique()),
              "slices_with_mask": int(has.sum()), "image_size": size, "resized_from": resized,
              "classifier": arch, "cam_setting": {k: best[k] for k in ("method", "layer", "fuse", "rule", "value",
                                                                      "normalisation", "reference", "head_gate",
                                                                      "prob_gate", "cleanup", "guided_radius",
                                                                      "guided_eps", "guide_channel") if k in best},
              "unet_volume_cleanup": unet_cleanup, "skipped": ds.skipped,
              **({"pseudo_network": weak["network"], "pseudo_networks": [m["network"] for m in weak["members"]],
                  "pseudo_volume_cleanup": float(weak["volume_cleanup"]),
                  "pseudo_output_redraw_level": float(weak.get("output_redraw_level") or 0),
                  "pseudo_output_redraw_radius": int(weak.get("output_redraw_radius") or 0)} if weak else {}),
              "notes": {str(k): int(v) for k, v in m["notes"][m["notes"] != ""].value_counts().items()},
              "classifier_sha256": classifier_sha256, "provenance": provenance(data={
                  "data": data_fingerprint(data_root)})}
    if has.any():
        gt, pats = np.asarray(ds.masks)[has], m.patient.to_numpy()[has]
        for name, masks in named.items():
            index.loc[has, f"{name}_dice"] = metrics.dice(masks[has], gt)
        result["classification"] = {k: v for k, v in classification.classification_metrics(m.tumour[has], probs[has]).items()}
        seed = int(best.get("seed", 0))
        for name, masks in named.items():
            result[name] = metrics.score_masks(masks[has], gt, pats, n_boot, seed)
        if rand:
            rh = cached_heatmaps(out_dir, ckpt_path, ds.images, key, "random", "last", rand["fuse"], batch_size,
                                      dev, seed=int(rand.get("seed", 0)), progress=False, loader=lambda: (model, norm, ckpt))
            _, rand_masks = protocol.apply_chosen(rh, rand, ds.images, heads, probs, dev)
            result["random_baseline"] = metrics.score_masks(rand_masks[has], gt, pats, n_boot, seed)
    result["seconds"] = time.perf_counter() - t0
    with atomic_path(out_dir / "predictions.csv") as tmp:
        index.to_csv(tmp, index=False)
    write_json(out_dir / "metrics.json", result)
    _write_report(out_dir, result)
    return result


def _write_report(out_dir: Path, r: dict) -> None:
    s = r["cam_setting"]
    lines = [f"# External evaluation of {r['run']}", "",
             f"- data: `{r['data']}`: {r['slices']} slices of {r['patients']} patients, {r['slices_with_mask']} with a mask",
             f"- classifier: {r['classifier']}; CAM: {s['method']} @ {s['layer']} (fuse {s['fuse']}), rule {s['rule']} "
             f"{s['value']:g}, scale {s['normalisation']}, head gate {s['head_gate']}, classifier gate {s['prob_gate']}, "
             f"clean-up {s['cleanup']}, guided refinement radius {s.get('guided_radius', 0)} (0: none); U-Net 3-D clean-up "
             f"{r.get('unet_volume_cleanup', 0.0):g} (0: none)"
             + (f"; U-Net trained on pseudo-masks (notebook 07, "
                f"{', '.join(f'`{n}`' for n in r.get('pseudo_networks') or [r['pseudo_network']])}"
                f"{', their mean probability' if len(r.get('pseudo_networks') or []) > 1 else ''}), 3-D clean-up "
                f"{r['pseudo_volume_cleanup']:g}" if r.get("pseudo_network") else "")
             + "; all chosen on the run's validation split, applied unchanged",
             f"- images were resized from {r['resized_from']} to {r['image_size']} x {r['image_size']} exactly as in training"
             if r["resized_from"] else f"- images already at the run's size ({r['image_size']} x {r['image_size']})",
             f"- {r['seconds']:.0f} s", ""]
    notes = r.get("notes") or {}
    if notes.get("1-channel image"):
        lines.insert(-1, f"- warning: {notes['1-channel image']} images had one channel; it was copied into all "
                         f"three (the run's classifier saw three MRI sequences)")
    if notes.get("soft mask"):
        lines.insert(-1, f"- note: {notes['soft mask']} masks were soft (more than one non-zero value); they were "
                         f"binarised at half their range")
    if r.get("skipped"):
        lines += ["## Skipped (not slices of the kaggle_3m layout)", "",
                  markdown_table([{"path": s["path"], "reason": s["reason"]} for s in r["skipped"]]), ""]
    if "cam" in r:
        c = r["classification"]
        lines += ["## Classifier", "", markdown_table([{k: c[k] for k in ("n", "accuracy", "sensitivity", "specificity", "auc")}]),
                  "## Segmentation (mean-Dice over slices with tumour; 95 % CIs by patient bootstrap)", ""]
        table = [{"masks": name, **{k: v for k, v in r[key].items()}} for name, key in
                 (("best CAM setting", "cam"), ("U-Net (supervised)", "unet"),
                  ("U-Net on pseudo-masks (weakly supervised)", "pseudo"), ("random heatmap", "random_baseline"))
                 if key in r]
        lines.append(markdown_table(table))
    else:
        lines.append("No ground-truth masks: predictions only (predictions.csv, masks/).")
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run", required=True, help="a finished run folder (runs/<preset>)")
    ap.add_argument("--data", required=True, help="a kaggle_3m-layout folder (.tif or .png)")
    ap.add_argument("--fold", type=int, help="with a cross-validated run (--folds): the fold to apply")
    ap.add_argument("--out", help="output folder (default RUN/external/<data folder name>, RUN the fold's folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)


def run_from_args(args: argparse.Namespace) -> int:
    try:
        run = resolve_run(args.run, args.fold)
        r = evaluate(run, args.data, args.out, args.device, args.batch_size)
    except (RunError, data.DataError, train.CheckpointError, UnreadableFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out or run / "external" / Path(args.data).name)
    print(f"evaluated {r['slices']} slices in {r['seconds']:.0f} s; report {out / 'report.md'}")
    if "cam" in r:
        print(f"classifier accuracy {r['classification']['accuracy']:.3f}, AUC {r['classification']['auc']:.3f}; "
              f"CAM mean-Dice {r['cam']['mean_dice']:.3f}, U-Net {r['unet']['mean_dice']:.3f}"
              + (f", pseudo-label U-Net {r['pseudo']['mean_dice']:.3f}" if "pseudo" in r else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
