"""The README's results: Markdown tables and the example figure, generated from a finished run folder.

    python -m camseg_utils.readme_tables tables RUN_DIR                  # print every table
    python -m camseg_utils.readme_tables update README.md NAME=RUN_DIR ...  # rewrite marked blocks
    python -m camseg_utils.readme_tables figure RUN_DIR OUT.png [--index I]

Tables come from the run's ``metrics/*.json`` only (02: classifiers, 05: Dice of the best CAM
setting, the best heatmap alone, the U-Net and the random heatmap, 06: filtered re-training, 07:
the U-Net trained on pseudo-masks beside its CAM masks, the supervised U-Net and the control), and
each one names the run folder and, where the metrics record it, the commit that produced them
(reading them: :mod:`camseg_utils.readme_sources`). A multi-seed run folder (``--seeds``) gives the
``seeds`` table and a cross-validated one (``--folds``) the ``folds`` table (:mod:`camseg_utils.readme_multi`):
``tables RUN_DIR --kinds seeds``.
In the README a generated block sits between ``<!-- table:NAME:KIND -->`` and ``<!-- /table -->``
(KIND: classifier, dice, paired, retrain, pseudo, seeds or folds); ``update`` replaces the text between the
markers of every NAME given, so the tables are regenerated rather than edited by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from .aggregate import numbered_folders
from .formatting import interval, markdown_table, num, p_value, pm
from .readme_multi import MULTI
from .readme_sources import ReadmeError, data_line, load_metrics, provenance, stage_metrics

KINDS = ("classifier", "dice", "paired", "retrain", "pseudo")  # of one run folder
ALL_KINDS = KINDS + tuple(MULTI)  # and of a multi-seed or cross-validated one (:mod:`.readme_multi`)
MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+):(?P<kind>[\w-]+) -->)(?P<body>.*?)(<!-- /table -->)", re.S)


# ----------------------------------------------------------------------------- formatting


def source_line(run_dir: Path, metrics: dict[str, dict], stage: str) -> str:
    """What a table is from: the run's data, the stage's metrics file and its commit (``tables RUN_DIR`` prints it)."""
    return f"{data_line(metrics)}*From `{run_dir}/metrics/{stage}.json`, {provenance(metrics[stage])}.*"


def _setting(row: dict) -> str:
    """A chosen CAM setting in words: rule and value, scale, refinement radius, gates, clean-up."""
    rule, value = row.get("rule"), row.get("value")
    rule_words = {"threshold": f"threshold {num(value, 2)}", "otsu": "Otsu", "top_k": f"top {float(value or 0):g} %"}
    said = [(rule_words.get(rule, str(rule)), True), ("global scale", row.get("normalisation") == "global"),
            (f"r = {int(row.get('guided_radius') or 0)}", row.get("guided_radius")), ("head gate", row.get("head_gate")),
            (f"classifier gate {float(row.get('prob_gate') or 0):g}", row.get("prob_gate")), ("clean-up", row.get("cleanup"))]
    return ", ".join(words for words, on in said if on)


# ----------------------------------------------------------------------------- the tables


def classifier_table(m: dict, run_dir: Path) -> str:
    """Notebook 02: one row per classifier, test split, model chosen on validation ROC AUC."""
    rows = next((r for t, r in (m.get("tables") or {}).items() if t.startswith("Classifiers")), None)
    if not rows:
        raise ReadmeError(f"{run_dir / 'metrics/02_train.json'} has no 'Classifiers ...' table")
    body = [[r["arch"], str(r.get("best_epoch", "")), num(r.get("val_auc")), num(r["test_accuracy"]),
             num(r["test_sensitivity"]), num(r["test_specificity"]), num(r["test_auc"]),
             num(r.get("train_seconds"), 0)] for r in rows]
    header = ["classifier", "best epoch", "val ROC AUC", "test accuracy", "sensitivity", "specificity",
              "test ROC AUC", "training s"]
    return markdown_table(header, body) + "\n"


def _dice_row(name: str, what: str, r: dict, chosen: str) -> list[str]:
    """One row of a Dice table (05's and 07's): validation and test mean-Dice, patient Dice, FP area, the knobs."""
    return [name, what, num(r.get("val_mean_dice")), num(r["mean_dice"]) + interval(r.get("mean_dice_ci")),
            num(r["patient_dice"]) + interval(r.get("patient_dice_ci")), num(r.get("fp_area")), chosen]


def _volume_cleanup(fraction) -> str:
    return f"3-D clean-up {float(fraction):g}" if fraction else "no 3-D clean-up"


def dice_table(m: dict, run_dir: Path) -> str:
    """Notebook 05: the best CAM setting, the best heatmap alone, the U-Net and the random heatmap."""
    for key in ("best_cam", "unet"):
        if key not in m:
            raise ReadmeError(f"{run_dir / 'metrics/05_dice.json'} has no '{key}' entry")

    def row(name: str, r: dict, what: str = "", chosen: str = "") -> list[str]:
        """One row; a heatmap's model and setting are read from ``r``, the U-Net's are given."""
        baseline = r.get("layer") in (None, "-")  # random and Sobel heatmaps: no model, no layer
        what = what or (r["method"] if baseline else f"{r['arch']} {r['method']} @ {r['layer']}")
        return _dice_row(name, what, r, chosen or _setting(r))

    body = [row("best CAM setting (chosen on validation)", m["best_cam"])]
    alone = (m.get("best_cam_by_refinement") or {}).get("none")
    if alone and alone != m["best_cam"]:
        body.append(row("best heatmap alone (no refinement)", alone))
    cleanup = float(m.get("unet_volume_cleanup") or 0)
    val = [r for r in m.get("unet_val_volume_cleanups") or [] if float(r.get("volume_cleanup", -1)) == cleanup]
    body.append(row("U-Net, supervised (reference)", dict(m["unet"], **({"val_mean_dice": val[0]["mean_dice"]} if val else {})),
                    "-", _volume_cleanup(cleanup)))
    if m.get("random_baseline"):
        body.append(row("random heatmap (baseline)", m["random_baseline"]))
    header = ["masks", "model, method @ layer", "val mean-Dice", "test mean-Dice [95 % CI]",
              "patient Dice [95 % CI]", "FP area", "chosen on validation"]
    return markdown_table(header, body) + "\n" + f"Knobs chosen by {m.get('select_by', 'mean_dice')} on the validation split. "


def _paired_rows(m: dict) -> list[dict] | None:
    return next((t for title, t in (m.get("tables") or {}).items() if title.startswith("Paired comparisons")), None)


def _paired_body(rows: list[dict], short=lambda name: name) -> str:
    """Paired comparisons a - b per test patient on both metrics, with CI and Wilcoxon p, one row per (question, a, b)."""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r["comparison"], r["a"], r["b"]), {})[r["metric"]] = r
    body = []
    for (what, a, b), mets in by.items():
        cells = []
        for metric in ("mean_dice", "patient_dice"):
            r = mets.get(metric)
            cells += [f"{num(r['difference'])}{interval(r['ci'])}", f"{r['a_better']} / {r['b_better']}", p_value(r["p"])] \
                if r else ["", "", ""]
        body.append([what, f"{short(a)} - {short(b)}"] + cells)
    header = ["comparison", "a - b", "mean-Dice a - b [95 % CI]", "patients a / b better", "p",
              "patient Dice a - b [95 % CI]", "patients a / b better", "p"]
    return markdown_table(header, body) + "\nDifferences per test patient, CIs by patient bootstrap, p: Wilcoxon signed-rank. "


def paired_table(m: dict, run_dir: Path) -> str:
    """Notebook 05's paired comparisons: a - b per test patient on both metrics, with CI and Wilcoxon p."""
    rows = _paired_rows(m)
    if not rows:  # a run older than the comparisons: said, not failed, as for a stage the run lacks
        return (f"*Not generated: `{run_dir / 'metrics/05_dice.json'}` was written before notebook 05 compared "
                f"settings per patient; re-run 05 (`--from 05_dice`) to get them.*\n\n")
    short = lambda name: name.split(" ", 1)[1] if " " in name and name != "U-Net" else name  # noqa: E731 (no model)
    return _paired_body(rows, short)


def retrain_table(m: dict, run_dir: Path) -> str:
    """Notebook 06 at its smallest k: each re-trained reading beside its shape-only control, their difference and
    the original classifier's reading, per heatmap (the random control last); then the verdict per claim."""
    rows = [r for r in m.get("results") or [] if isinstance(r, dict) and {"heatmap", "filter", "k", "auc"} <= set(r)]
    if not rows:
        raise ReadmeError(f"{run_dir / 'metrics/06_filtered_retrain.json'} has no results with heatmap, filter, k and auc")
    hard_ks = [float(r["k"]) for r in rows if r["filter"] in ("keep", "remove")]
    k0 = min(hard_ks, default=None)
    order = {"none": 0, "keep": 1, "remove": 2, "keep_hot": 3, "keep_dark": 4}
    shown = sorted((r for r in rows if r["filter"] not in ("keep", "remove") or float(r["k"]) == k0),
                   key=lambda r: (r["heatmap"] == "random", order.get(r["filter"], 5), str(r.get("imputation"))))
    body = [[r["heatmap"] + (" (control)" if r["heatmap"] == "random" else ""), _condition(r), _pm(r, "auc"),
             _pm(r, "shape_auc"), _pm(r, "image_minus_shape"), num(r.get("original_auc"))] for r in shown]
    header = ["heatmap", "filter", "re-trained on the images", "on the mask alone", "images - mask", "original classifier"]
    lines = [markdown_table(header, body), f"Test ROC AUC, mean ± sd over {rows[0].get('seeds') or 'the'} seeds of re-training"
             + (f"; hard filters at k = {k0:g} % shown (every k: `report.md` of the run)." if k0 is not None else ".")]
    verdicts = m.get("verdicts")
    if isinstance(verdicts, list):
        lines += [f"- {v}" if isinstance(v, str) else f"- {v.get('heatmap', '')}, *{v.get('claim', '')}*: **{v.get('verdict', '')}**"
                  for v in verdicts if isinstance(v, str) or v.get("test", "overall") == "overall"]
    return "\n".join(lines) + "\n"


def _pm(r: dict, col: str) -> str:
    return pm(r.get(col), r.get(col + "_sd"))


def _condition(r: dict) -> str:
    f, k = r["filter"], float(r.get("k") or 0)
    fill = {"mean": ", mean fill", "nli": ", imputed"}.get(r.get("imputation"), "")
    return {"keep": f"hottest {k:g} % kept{fill}", "remove": f"hottest {k:g} % removed{fill}", "keep_hot": "soft keep-hot",
            "keep_dark": "soft keep-dark", "none": "unfiltered"}.get(f, f"{f} {k:g}")


def pseudo_table(m: dict, run_dir: Path) -> str:
    """Notebook 07: the U-Net trained on pseudo-masks beside the masks it learned from, the supervised U-Net
    and the same path from random heatmaps."""
    for key in ("pseudo", "cam", "unet"):
        if not m.get(key):
            raise ReadmeError(f"{run_dir / 'metrics/07_pseudo_labels.json'} has no '{key}' entry")

    def net(r: dict) -> str:
        n = int(r.get("networks") or 1)
        redraw = (f"re-drawn at level {float(r['redraw_level']):g} within {int(r['redraw_radius'])} px, "
                  if r.get("redraw_level") else "")  # runs before the re-draw have none
        out = (f", its masks re-drawn at level {float(r['output_redraw_level']):g} within "
               f"{int(r['output_redraw_radius'])} px" if r.get("output_redraw_level") else "")
        return (redraw + f"band {float(r['band']):g}, round {int(r['round'])}, "
                + (f"mean of {n} networks, " if n > 1 else f"epoch {int(r['best_epoch'])}, ")
                + _volume_cleanup(r.get("volume_cleanup")) + out)

    cam, unet = m["cam"], m["unet"]
    entries = [("U-Net on CAM pseudo-masks (weakly supervised)", m["pseudo"]["source"], m["pseudo"], net(m["pseudo"])),
               ("CAM masks it learned from (05)", m["pseudo"]["source"], cam, _setting(cam)),
               ("U-Net, supervised (05, reference)", "drawn masks", unet,
                _volume_cleanup(unet.get("volume_cleanup")))]
    if m.get("control"):
        entries.append(("U-Net on random-heatmap masks (control)", m["control"]["source"], m["control"], net(m["control"])))
    body = [_dice_row(*entry) for entry in entries]
    header = ["masks", "trained on / from", "val mean-Dice", "test mean-Dice [95 % CI]", "patient Dice [95 % CI]",
              "FP area", "chosen on validation"]
    text = (markdown_table(header, body) + "\n" + f"No drawn mask of the training split was read; knobs chosen by "
            f"{m.get('select_by', 'mean_dice')} on the validation split.\n")
    rows = _paired_rows(m)  # runs older than 07's paired comparisons have none
    return text + ("\n" + _paired_body(rows) if rows else "")


# kind -> (the stage whose metrics it reads, its body; :func:`table` adds where the numbers come from)
TABLES = {"classifier": ("02_train", classifier_table), "dice": ("05_dice", dice_table),
          "paired": ("05_dice", paired_table),
          "retrain": ("06_filtered_retrain", retrain_table), "pseudo": ("07_pseudo_labels", pseudo_table)}


def table(kind: str, metrics: dict[str, dict], run_dir: Path) -> str:
    """One table in Markdown, closed by the line naming the data, the command and the commit behind it."""
    stage, body = TABLES[kind]
    return body(stage_metrics(metrics, stage, run_dir), run_dir) + source_line(run_dir, metrics, stage) + "\n"


def tables(run_dir: str | Path, kinds=KINDS) -> dict[str, str]:
    """``{kind: Markdown}`` for every kind asked for (a multi-run kind reads the seed or fold folders)."""
    run_dir = Path(run_dir)
    for kind in kinds:
        if kind not in ALL_KINDS:
            raise ReadmeError(f"unknown table kind {kind!r}; known: {', '.join(ALL_KINDS)}")
    metrics = load_metrics(run_dir) if set(kinds) & set(KINDS) else {}
    return {kind: MULTI[kind][1](run_dir) if kind in MULTI else table(kind, metrics, run_dir) for kind in kinds}


def _block(name: str, kind: str, run_dir: Path, cache: dict) -> str:
    """The body of one README block; a run that has not got that far says so instead of leaving a stale table."""
    if kind in MULTI:
        prefix, body = MULTI[kind]
        if not numbered_folders(run_dir, prefix):
            return f"*Not generated: `{run_dir}` holds no {prefix}-<N> folders.*\n"
        return body(run_dir)
    if name not in cache:
        cache[name] = load_metrics(run_dir)
    stage = TABLES[kind][0]
    if stage not in cache[name]:
        return f"*Not generated: `{run_dir / 'metrics' / (stage + '.json')}` is missing.*\n"
    return table(kind, cache[name], run_dir)


def update_readme(readme: str | Path, runs: dict[str, str | Path]) -> list[str]:
    """Fill every ``<!-- table:NAME:KIND -->`` block whose NAME is in ``runs``; returns the blocks filled.

    Blocks of other names are left as they are; a name given but found in no block is an error."""
    readme = Path(readme)
    text = readme.read_text()
    filled, cache = [], {}

    def fill(match: re.Match) -> str:
        name, kind = match["name"], match["kind"]
        if name not in runs:
            return match[0]
        if kind not in ALL_KINDS:
            raise ReadmeError(f"{readme}: block table:{name}:{kind} names an unknown kind; known: {', '.join(ALL_KINDS)}")
        filled.append(f"{name}:{kind}")
        return f"{match[1]}\n{_block(name, kind, Path(runs[name]), cache)}{match[5]}"

    new = MARKER.sub(fill, text)
    missing = sorted(set(runs) - {f.split(':')[0] for f in filled})
    if missing:
        raise ReadmeError(f"{readme} has no '<!-- table:NAME:KIND -->' block for {', '.join(missing)}")
    readme.write_text(new)
    return filled


# ----------------------------------------------------------------------------- the figure


def example_figure(run_dir: str | Path, path: str | Path | None = None, index: int | None = None,
                   device: str = "cpu", batch_size: int = 32):
    """Image, ground truth, the best CAM setting's heatmap, its mask and the U-Net's mask, for one test slice.

    The slice (``index``: position in the test split) is by default the test slice with tumour whose
    best-CAM Dice is the median of all of them: a typical slice, not the best one. Everything comes
    from the run folder (data, checkpoints, heatmap cache, the setting 05 chose on validation).
    """
    # torch and the study's modules only for the figure: the tables need nothing but the metrics files
    import matplotlib.pyplot as plt

    from . import data, heatmap_cache, masks, metrics, plots, protocol, unet
    from .device import resolve_device

    run_dir = Path(run_dir)
    chosen = stage_metrics(load_metrics(run_dir), "05_dice", run_dir)
    best = chosen["best_cam"]
    ckpt, unet_ckpt = run_dir / "models" / best["arch"] / "best.pt", run_dir / "models" / "unet" / "best.pt"
    for need in (run_dir / "data", ckpt, unet_ckpt):
        if not need.exists():
            raise ReadmeError(f"{need} is missing: the figure needs a run finished through notebook 05")
    test = data.load_dataset(run_dir / "data", mmap=True).split("test")
    split = protocol.Split.of(test)
    tumour = np.flatnonzero(split.gt.reshape(len(test), -1).any(1))
    if not len(tumour):
        raise ReadmeError(f"the test split of {run_dir} has no slice with tumour")
    dev = resolve_device(device)
    hm = heatmap_cache.cached_heatmaps(run_dir, ckpt, test.images, "test", best["method"], best["layer"], best.get("fuse", "mean"),
                              batch_size, dev, seed=int(best.get("seed", 0)), progress=False)
    probs = protocol.run_probabilities(run_dir)(best["arch"])[1]
    refined, cam_masks = protocol.apply_chosen(hm, best, test.images, split.heads, probs, dev)
    shown = masks.scaled_heatmaps(refined, best["normalisation"], best.get("reference"))
    cam_dice = metrics.dice(cam_masks[tumour], split.gt[tumour])
    if index is None:
        index = int(tumour[np.argsort(cam_dice, kind="stable")[len(tumour) // 2]])
    elif not 0 <= index < len(test):
        raise ReadmeError(f"index={index}: the test split has {len(test)} slices (0 to {len(test) - 1})")
    row = test.manifest.iloc[index]
    part = test.subset((test.manifest["case"] == row["case"]).to_numpy())
    net, unorm, _ = unet.load_unet(unet_ckpt, dev)
    unet_masks = unet.predict_volumes(net, unorm, part, float(chosen.get("unet_volume_cleanup") or 0), batch_size)
    unet_mask = unet_masks[int(np.flatnonzero(part.manifest["slice"].to_numpy() == row["slice"])[0])]

    image, truth, cam_mask = np.asarray(test.images[index]), split.gt[index], cam_masks[index]
    grey = image.mean(-1) / 255
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 2.9))
    plots.show_image(axes[0], image, "image (pre-contrast, FLAIR, post-contrast)")
    plots.show_image(axes[1], image, "ground truth")
    plots.outline(axes[1], truth, "lime")
    plots.show_image(axes[2], plots.overlay(image, shown[index]), f"{best['method']} @ {best['layer']} heatmap")
    plots.outline(axes[2], truth, "white")
    for ax, mask, name in ((axes[3], cam_mask, "CAM mask"), (axes[4], unet_mask, "U-Net mask")):
        plots.show_image(ax, np.clip(0.25 * grey[..., None] + 0.75 * mask[..., None] * np.array([1.0, 0.85, 0.2]), 0, 1),
                         f"{name}, Dice {num(metrics.dice(mask, truth), 2)}")
        plots.outline(ax, truth, "lime")
    fig.suptitle(f"{run_dir.name}: test slice {row['patient']} #{row['slice']} (green: ground truth)", fontsize=9)
    fig.tight_layout()
    plots.save(fig, path)
    return fig


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.readme_tables", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tables", help="print the Markdown tables of a run folder")
    t.add_argument("run_dir")
    t.add_argument("--kinds", nargs="+", default=list(KINDS), choices=ALL_KINDS)
    u = sub.add_parser("update", help="rewrite the marked table blocks of a README")
    u.add_argument("readme")
    u.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    f = sub.add_parser("figure", help="draw the example figure of a run folder")
    f.add_argument("run_dir")
    f.add_argument("out")
    f.add_argument("--index", type=int, default=None, help="position in the test split (default: the median slice)")
    f.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        if a.command == "tables":
            for kind, md in tables(a.run_dir, a.kinds).items():
                print(f"<!-- {kind} -->\n{md}")
        elif a.command == "update":
            runs = {}
            for item in a.runs:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    raise ReadmeError(f"{item!r}: expected NAME=RUN_DIR, e.g. synthetic=runs/synthetic")
                runs[name] = path
            print("filled: " + ", ".join(update_readme(a.readme, runs)))
        else:
            example_figure(a.run_dir, a.out, a.index, a.device)
            print(f"wrote {a.out}")
    except (ReadmeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
