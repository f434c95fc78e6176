"""The README's tables of a multi-seed run (``--seeds``) and of a cross-validated one (``--folds``).

Both are computed afresh from the seed or fold folders each time (:func:`.aggregate.aggregate`,
:func:`.crossval.crossval`), never read from an ``aggregate.json`` or ``crossval.json`` that a later
seed or fold could have left behind. ``seeds``: each headline number as mean ± sd over seeds, every
seed's value and how far they spread (max - min: how far one seed's number can move), the CAM
setting each seed chose and 06's verdicts; ``folds``: the classifier, Dice and paired comparisons
pooled over every fold's test patients (each patient tested once) with patient-bootstrap CIs, beside
the same number's mean ± sd over folds.
"""

from __future__ import annotations

from pathlib import Path

from . import aggregate as agg_
from . import crossval as cv_
from .formatting import interval, markdown_table, num, p_value, pm
from .readme_sources import ReadmeError, data_line, provenance

SEED_SECTIONS = ("classifiers", "segmentation", "paired")
# crossval's pooled roles -> the aggregate's names of the same masks (numbers over folds)
ROLE_NAMES = {"CAM setting chosen on validation": "best CAM setting (chosen on validation)",
              "best CAM setting without refinement": "best CAM setting without refinement",
              "U-Net": "U-Net, supervised (reference)", "random heatmap": "random heatmap (baseline)",
              "U-Net on CAM pseudo-masks (07)": "U-Net on CAM pseudo-masks (weakly supervised)",
              "U-Net on random-heatmap pseudo-masks (07)": "U-Net on random-heatmap masks (control)"}


def _folders(run_dir: Path, prefix: str) -> dict[int, Path]:
    folders = agg_.numbered_folders(run_dir, prefix)
    if not folders:
        flag = "--seeds" if prefix == "seed" else "--folds"
        raise ReadmeError(f"{run_dir} holds no {prefix}-<N> folders: run the pipeline with {flag} first")
    return folders


def _commits(per_run: dict[int, dict[str, dict]], unit: str) -> str:
    """The commit(s) behind the runs' metrics: one when all agree, else which stages (and, when not all of
    them, which runs) each commit made."""
    found: dict[str, tuple[set[str], set[int]]] = {}
    for n, metrics in per_run.items():
        for stage, m in metrics.items():
            stages, runs = found.setdefault(provenance(m), (set(), set()))
            stages.add(stage)
            runs.add(n)
    if len(found) == 1:
        return next(iter(found))
    which = lambda runs: "" if runs == set(per_run) else f"; {unit}s {', '.join(map(str, sorted(runs)))}"  # noqa: E731
    return "; ".join(f"{c} ({', '.join(sorted(stages))}{which(runs)})" for c, (stages, runs) in found.items())


def _label(n: dict) -> str:
    what = n["what"]
    if n["section"] == "classifiers":
        return f"{what['arch']}: {n['number']}"
    if n["section"] == "segmentation":
        return f"{what['masks']}: {n['number']}"
    return f"paired, {what['comparison']} ({what['metric']}): a - b"


def seeds_table(run_dir: str | Path) -> str:
    """Every seed folder's headline numbers: mean ± sd, per seed, max - min; then the settings chosen and verdicts."""
    run_dir = Path(run_dir)
    per_seed = {s: agg_.load_seed_metrics(f) for s, f in _folders(run_dir, "seed").items()}
    agg = agg_.aggregate(per_seed)
    seeds = agg["seeds"]
    numbers = [n for n in agg["numbers"] if n["section"] in SEED_SECTIONS]
    if not numbers:
        raise ReadmeError(f"{run_dir}: no seed folder has 02 or 05 metrics yet")
    body = []
    for n in numbers:
        got = [v for v in n["values"].values() if v is not None]
        body.append([_label(n), agg_.number_pm(n, seeds),
                     " / ".join(num(n["values"][str(s)]) for s in seeds), num(max(got) - min(got))])
    lines = [markdown_table(["number (test split)", "mean ± sd over seeds", f"seed {' / '.join(map(str, seeds))}",
                             "max - min"], body)]
    if agg["winners"]:
        lines.append("CAM setting chosen on validation: " + "; ".join(
            f"{w['arch']} {w['method']} @ {w['layer']}, {w['refinement']} ({w['wins']} of {len(seeds)} seeds)"
            for w in agg["winners"]) + ".")
    if agg["verdicts"]:
        lines.append("06's verdicts: " + "; ".join(f"{v['heatmap']}, *{v['claim']}*: {v['verdict']} ({v['count']} of "
                                                   f"{len(seeds)} seeds)" for v in agg["verdicts"]) + ".")
    first = per_seed[seeds[0]]
    lines.append(f"{data_line(first)}*From `{run_dir}/seed-*/metrics/` (every number per seed: "
                 f"`python -m camseg_utils.aggregate {run_dir}`), {_commits(per_seed, 'seed')}.*")
    return "\n".join(lines) + "\n"


def _over(over: dict, section: str, what: dict, number: str) -> str:
    n = next((x for x in over["numbers"] if x["section"] == section and x["what"] == what and x["number"] == number),
             None)
    return "n/a" if n is None else pm(n["mean"], n["sd"])


def folds_table(run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> str:
    """Pooled over every fold's test patients, beside mean ± sd over folds; paired comparisons pooled."""
    run_dir = Path(run_dir)
    folders = _folders(run_dir, "fold")
    per_fold = {f: agg_.load_seed_metrics(p) for f, p in folders.items()}
    cv = cv_.crossval(folders, n_boot, seed, per_fold)
    if not cv["segmentation"] and not cv["classifiers"]:
        raise ReadmeError(f"{run_dir}: no fold folder has 02 or 05 results yet")
    over, k = cv["over_folds"], len(cv["folds"])
    body = [[f"{c['arch']}: test ROC AUC", f"{c['patients']} ({c['folds']} of {k})", num(c["auc"]) + interval(c.get("auc_ci")),
             _over(over, "classifiers", {"arch": c["arch"]}, "test ROC AUC")] for c in cv["classifiers"]]
    for s in cv["segmentation"]:
        name = ROLE_NAMES.get(s["setting"], s["setting"])
        for key, number in (("mean_dice", "test mean-Dice"), ("patient_dice", "test patient Dice")):
            body.append([f"{name}: {number.removeprefix('test ')}", f"{s['patients']} ({s['folds']} of {k})",
                         num(s[key]) + interval(s[key + "_ci"]), _over(over, "segmentation", {"masks": name}, number)])
    lines = [markdown_table(["number (test patients)", "patients (folds)", "pooled [95 % CI]",
                             "mean ± sd over folds"], body)]
    if cv["paired"]:
        lines.append(markdown_table(
            ["comparison", "metric", "patients", "a - b per patient [95 % CI]", "a / b better", "p"],
            [[r["comparison"], r["metric"], str(r["patients"]), num(r["difference"]) + interval(r["ci"]),
              f"{r['a_better']} / {r['b_better']}", p_value(r["p"])] for r in cv["paired"]]))
    chosen = [f"fold {r['fold']}: {r['chosen CAM setting']}" for r in cv["per_fold"] if r.get("chosen CAM setting")]
    if chosen:
        lines.append("CAM setting chosen on each fold's validation split: " + "; ".join(chosen) + ".")
    lines.append(f"Each patient tested once, by the fold that held it out; CIs: {n_boot} patient-bootstrap resamples "
                 f"of the pooled patients; p: Wilcoxon signed-rank. {data_line(per_fold[cv['folds'][0]], test_split=False)}"
                 f"*From `{run_dir}/fold-*/` (per fold: `python -m camseg_utils.crossval {run_dir}`), "
                 f"{_commits(per_fold, 'fold')}.*")
    return "\n".join(lines) + "\n"


# kind -> (the prefix of the run folders it reads, its table)
MULTI = {"seeds": ("seed", seeds_table), "folds": ("fold", folds_table)}
