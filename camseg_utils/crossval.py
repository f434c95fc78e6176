"""A cross-validated study's numbers pooled over all patients, each tested once (``--folds``).

    python -m camseg_utils.crossval RUN_DIR      # (re)write RUN_DIR/crossval.json and crossval.md

A cross-validated run (:mod:`camseg_utils.folds`) keeps one complete run folder per fold,
``RUN_DIR/fold-<F>/``, whose test patients are disjoint from every other fold's. This module stacks
what the folds measured on their test patients and scores the stack as one test set:

- classifiers (02): ROC AUC, accuracy, sensitivity, specificity of the pooled test slices (each fold's
  classifier on its own test patients; ``models/<arch>/predictions.csv``);
- segmentation (05): mean-Dice and patient Dice with patient-bootstrap CIs of each fold's CAM setting
  chosen on its validation split, its best setting without refinement, its random heatmap and its
  U-Net, from the per-slice counts ``metrics/05_test_counts.csv`` (:mod:`camseg_utils.paired`);
- weakly supervised segmentation (07), where the folds ran it: the U-Net trained on each fold's CAM
  pseudo-masks and its random-heatmap control, the same way, from ``metrics/07_test_counts.csv``;
- paired comparisons (05, 07): each comparison of 05's and 07's tables (chosen CAM vs random heatmap,
  U-Net vs CAM, guided vs none, one layer vs another, pseudo-label U-Net vs its CAM masks, ...) pooled
  the same way, a difference per patient over every fold that made it, with its bootstrap CI and
  Wilcoxon p-value;
- per fold: its test patients, the setting it chose and its headline numbers; and every number of
  :mod:`camseg_utils.aggregate` (06's readings included) as mean ± sd over folds.

A fold still running or stopped early adds what it has; the report says how many folds and patients
each number covers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import pandas as pd

from . import aggregate as agg_
from . import paired
from .classification import classification_metrics, roc_auc_ci
from .formatting import interval, markdown_table, num, p_value
from .io import UnreadableFileError, atomic_path, read_json, write_json
from .pseudo_study import CONTROL, PAIRED_TABLE, PSEUDO

ROLES = ("CAM setting chosen on validation", "best CAM setting without refinement", "random heatmap", "U-Net")
# 07's masks pooled beside 05's: role -> its name in 07_test_counts.csv (07's CAM masks and U-Net are 05's)
PSEUDO_ROLES = {"U-Net on CAM pseudo-masks (07)": PSEUDO, "U-Net on random-heatmap pseudo-masks (07)": CONTROL}


class CrossvalError(ValueError):
    """A run folder without fold folders, folds that share test patients, or an unreadable metrics file."""


def fold_folder(run_dir: str | Path, fold: int) -> Path:
    return Path(run_dir) / f"fold-{fold}"


def fold_folders(run_dir: str | Path) -> dict[int, Path]:
    return agg_.numbered_folders(run_dir, "fold")


def _name(entry: dict, baseline: str | None = None) -> str:
    if baseline:
        return paired.setting_name(entry["arch"], baseline, "-", entry["refinement"], baseline=True)
    return paired.setting_name(entry["arch"], entry["method"], entry["layer"], entry["refinement"])


def roles(dice: dict) -> dict[str, str]:
    """Role -> the setting's name in one fold's counts, from its ``05_dice.json``."""
    best = dice["best_cam"]
    out = {ROLES[0]: _name(best)}
    plain = (dice.get("best_cam_by_refinement") or {}).get("none")
    if plain:
        out[ROLES[1]] = _name(plain)
    if dice.get("random_baseline"):
        out[ROLES[2]] = _name(best, baseline="random")
    out[ROLES[3]] = "U-Net"
    return out


def _read(path: Path, what: str):
    try:
        return read_json(path) if path.suffix == ".json" else pd.read_csv(path)
    except (UnreadableFileError, OSError, ValueError) as e:
        raise CrossvalError(f"{path}: cannot read the fold's {what} ({e}); re-run the pipeline with the same "
                            f"--folds to rewrite it") from None


def pooled_counts(folders: dict[int, Path]) -> tuple[pd.DataFrame, list[tuple[str, str, str]], list[int]]:
    """Every fold's counts relabelled by role (and by comparison: '<comparison>: a' / ': b'), stacked;
    the comparisons to pool as (label, a, b); the folds that had 05's outputs."""
    parts, pairs, used, seen = [], {}, [], {}

    def add(fold: int, counts: pd.DataFrame, counts_p: Path, record_p: Path, relabel: list[tuple[str, str]],
            comparisons: list[dict]) -> None:
        for r in comparisons:
            label = r["comparison"]
            pairs[label] = (label, f"{label}: a", f"{label}: b")
            relabel += [(f"{label}: a", r["a"]), (f"{label}: b", r["b"])]
        for new, name in dict(relabel).items():
            part = counts[counts.setting == name]
            if part.empty:
                raise CrossvalError(f"{counts_p} has no counts for {name!r}, which {record_p} names")
            parts.append(part.assign(setting=new, fold=fold))

    for fold, folder in folders.items():
        dice_p, counts_p = folder / "metrics" / "05_dice.json", folder / "metrics" / "05_test_counts.csv"
        if not (dice_p.exists() and counts_p.exists()):
            continue
        dice, counts = _read(dice_p, "Dice record"), _read(counts_p, "per-slice counts")
        for patient in counts.patient.unique():
            if patient in seen:
                raise CrossvalError(f"patient {patient} is a test patient of fold {seen[patient]} and of fold {fold}: "
                                    f"these are not folds of one cross-validation")
            seen[patient] = fold
        add(fold, counts, counts_p, dice_p, list(roles(dice).items()),
            (dice.get("tables") or {}).get("Paired comparisons (test split, a - b per patient)", []))
        used.append(fold)
        pseudo_p, counts7_p = folder / "metrics" / "07_pseudo_labels.json", folder / "metrics" / "07_test_counts.csv"
        if pseudo_p.exists() and counts7_p.exists():
            pseudo, counts7 = _read(pseudo_p, "pseudo-label record"), _read(counts7_p, "per-slice counts of 07")
            present = set(counts7.setting)
            add(fold, counts7, counts7_p, pseudo_p, [(role, name) for role, name in PSEUDO_ROLES.items() if name in present],
                (pseudo.get("tables") or {}).get(PAIRED_TABLE, []))
    counts = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=paired.COUNT_COLUMNS + ["fold"])
    return counts, list(pairs.values()), used


def pooled_classifiers(folders: dict[int, Path], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Each architecture's test slices of every fold, scored as one set; the ROC AUC with a patient-bootstrap CI."""
    preds: dict[str, list[pd.DataFrame]] = {}
    for fold, folder in folders.items():
        for p in sorted((folder / "models").glob("*/predictions.csv")):
            df = _read(p, "classifier predictions")
            preds.setdefault(p.parent.name, []).append(df[df.split == "test"].assign(fold=fold))
    out = []
    for arch, dfs in preds.items():
        df = pd.concat(dfs)
        y, prob = df.tumour.astype(bool).to_numpy(), df.prob.to_numpy()
        m = classification_metrics(y, prob)
        out.append({"arch": arch, "folds": len(dfs), "patients": int(df.patient.nunique()),
                    **{k: m[k] for k in ("n", "auc", "accuracy", "sensitivity", "specificity")},
                    "auc_ci": roc_auc_ci(y, prob, df.patient.to_numpy(), n_boot, seed)})
    return out


def per_fold(folders: dict[int, Path]) -> list[dict]:
    rows = []
    for fold, folder in folders.items():
        row: dict = {"fold": fold}
        d1 = folder / "metrics" / "01_data.json"
        if d1.exists():
            tables = (_read(d1, "data record").get("tables") or {}).values()
            test = [r for t in tables for r in t if r.get("split") == "test"]
            row["test patients"] = test[0].get("patients") if test else None
        d2 = folder / "metrics" / "02_train.json"
        if d2.exists():
            clf = (_read(d2, "classifier record").get("tables") or {}).get("Classifiers (test split)") or []
            row.update({f"{c['arch']} test AUC": c.get("test_auc") for c in clf})
        d5 = folder / "metrics" / "05_dice.json"
        if d5.exists():
            dice = _read(d5, "Dice record")
            best = dice["best_cam"]
            row["chosen CAM setting"] = f"{best['method']} @ {best['layer']}, {best['refinement']}"
            row["CAM mean-Dice"], row["CAM patient Dice"] = best.get("mean_dice"), best.get("patient_dice")
            row["U-Net mean-Dice"] = (dice.get("unet") or {}).get("mean_dice")
            row["random mean-Dice"] = (dice.get("random_baseline") or {}).get("mean_dice")
        d7 = folder / "metrics" / "07_pseudo_labels.json"
        if d7.exists():
            row["pseudo-label U-Net mean-Dice"] = (_read(d7, "pseudo-label record").get("pseudo") or {}).get("mean_dice")
        rows.append(row)
    return rows


def crossval(folders: dict[int, Path], n_boot: int = 1000, seed: int = 0,
             metrics: dict[int, dict[str, dict]] | None = None) -> dict:
    """Pooled numbers, per-fold rows and the aggregate over folds; ``metrics``: each fold's
    :func:`.aggregate.load_seed_metrics`, when the caller has read them already."""
    counts, pairs, used = pooled_counts(folders)
    segmentation = [dict(paired.scores(counts, role, n_boot, seed), folds=int(counts[counts.setting == role].fold.nunique()))
                    for role in (*ROLES, *PSEUDO_ROLES) if (counts.setting == role).any()]
    comparisons = paired.compare(counts, pairs, n_boot, seed) if pairs else pd.DataFrame()
    if len(comparisons):
        comparisons["folds"] = [int(counts[counts.setting == a].fold.nunique()) for a in comparisons.a]
        comparisons[["a", "b"]] = comparisons[["a", "b"]].replace(r"^.*: (a|b)$", r"\1", regex=True)
    return {"folds": list(folders), "folds_with_dice": used, "n_boot": n_boot, "seed": seed,
            "classifiers": pooled_classifiers(folders, n_boot, seed), "segmentation": segmentation,
            "paired": comparisons.to_dict(orient="records"), "per_fold": per_fold(folders),
            "over_folds": agg_.aggregate(metrics if metrics is not None else
                                          {f: agg_.load_seed_metrics(p) for f, p in folders.items()})}


def _f(v) -> str:
    """A float to three decimals ('n/a' when missing); counts and names as they are."""
    return num(v) if v is None or isinstance(v, float) else str(v)


def _ci(v, ci) -> str:
    return _f(v) + interval(ci)


def markdown(cv: dict, title: str = "", source: str = "") -> str:
    t = markdown_table
    parts = [f"# camseg cross-validated: {title}\n",
             f"Folds {', '.join(map(str, cv['folds']))}; each patient is tested once, by the fold that held it out. "
             f"Pooled numbers score every fold's test patients as one set (95 % CIs: {cv['n_boot']} patient-bootstrap "
             f"resamples); every knob was chosen on its fold's own validation split. Regenerated from `fold-*/` by "
             f"`python -m camseg_utils.crossval {source}`.\n"]
    if cv["classifiers"]:
        parts.append("\n## Classifiers (02), pooled test slices\n\n" + t(
            ["architecture", "folds", "patients", "slices", "ROC AUC [95 % CI]", "accuracy", "sensitivity",
             "specificity"],
            [[c["arch"], str(c["folds"]), str(c["patients"]), str(c["n"]), _ci(c["auc"], c.get("auc_ci"))]
             + [_f(c[k]) for k in ("accuracy", "sensitivity", "specificity")] for c in cv["classifiers"]]))
    if cv["segmentation"]:
        parts.append("\n## Segmentation (05, 07), pooled test patients\n\n" + t(
            ["masks", "folds", "patients", "mean-Dice [95 % CI]", "patient Dice [95 % CI]"],
            [[s["setting"], str(s["folds"]), str(s["patients"]), _ci(s["mean_dice"], s["mean_dice_ci"]),
              _ci(s["patient_dice"], s["patient_dice_ci"])] for s in cv["segmentation"]]))
    if cv["paired"]:
        parts.append("\n## Paired comparisons (05, 07), pooled: a - b per test patient\n\n"
                     "a and b are each fold's own settings for the comparison (its chosen CAM, random heatmap, U-Net, "
                     "...). p: Wilcoxon signed-rank test of the per-patient differences.\n\n" + t(
                         ["comparison", "metric", "folds", "patients", "a", "b", "a - b [95 % CI]", "p",
                          "patients a better / b better"],
                         [[r["comparison"], r["metric"], str(r["folds"]), str(r["patients"]), _f(r["a_value"]),
                           _f(r["b_value"]), _ci(r["difference"], r["ci"]), p_value(r["p"]),
                           f"{r['a_better']} / {r['b_better']}"] for r in cv["paired"]]))
    if cv["per_fold"]:
        cols = list(dict.fromkeys(k for r in cv["per_fold"] for k in r))
        parts.append("\n## Per fold (test split of each)\n\n"
                     + t(cols, [[_f(r.get(c)) if c != "fold" else str(r[c]) for c in cols] for r in cv["per_fold"]]))
    over = agg_.markdown(cv["over_folds"], title, source, unit="fold").split("\n", 2)[-1]
    parts.append("\n## Over folds: mean ± sd of each fold's numbers\n" + over.replace("\n## ", "\n### "))
    return "\n".join(parts)


def write_crossval(run_dir: str | Path, folds: Iterable[int] | None = None, title: str = "", n_boot: int = 1000,
                   seed: int = 0) -> Path:
    """Read every fold folder, write ``crossval.json`` and ``crossval.md``; returns the Markdown path."""
    run_dir = Path(run_dir)
    folders = fold_folders(run_dir) if folds is None else {int(f): fold_folder(run_dir, f) for f in folds}
    if not folders:
        raise CrossvalError(f"{run_dir} holds no fold-<F> folders: run the pipeline with --folds first")
    cv = crossval(folders, n_boot, seed)
    cv["run_dir"] = str(run_dir)
    write_json(run_dir / "crossval.json", cv)
    with atomic_path(run_dir / "crossval.md") as tmp:
        tmp.write_text(markdown(cv, title or run_dir.name, str(run_dir)))
    return run_dir / "crossval.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.crossval", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a cross-validated run folder (holding fold-<F>/ folders)")
    a = ap.parse_args(argv)
    try:
        print(f"wrote {write_crossval(a.run_dir)}")
    except (CrossvalError, agg_.AggregateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
