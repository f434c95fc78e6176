"""A study's headline numbers over training seeds: mean ± sd beside the value of every seed.

    python -m camseg_utils.aggregate RUN_DIR      # (re)write RUN_DIR/aggregate.json and aggregate.md

A multi-seed run (``--seeds``, see :mod:`camseg_utils.seeds`) keeps one complete run folder per
seed, ``RUN_DIR/seed-<S>/``. This module reads each one's ``metrics/*.json`` (only the files that
exist: a run stopped early with ``--to`` aggregates what it has) and collects:

- 02: test ROC AUC and accuracy of every classifier architecture;
- 05: test mean-Dice and patient Dice of the CAM setting chosen on validation (over every method,
  layer and refinement, and the best without refinement), of the supervised U-Net and of the
  random heatmap; the paired differences of 05's comparisons (each seed's a and b are the settings
  it chose); and how often each (architecture, method, layer, refinement) won on validation;
- 06: the re-trained, shape-only and original-classifier test ROC AUC per heatmap, filter, k and
  fill, and how often each claim got each verdict. The guided radius of a refined heatmap is chosen
  on validation per seed, so '<method> + guided r=<radius>' is read as '<method> + guided';
- 07: test mean-Dice and patient Dice of the U-Net trained on CAM pseudo-masks and of its
  random-heatmap control, and 07's paired differences (against its CAM masks, the supervised U-Net
  and the control).

Each number is given as mean ± sd over the seeds that have it (sd: the sample standard deviation,
n - 1 in the denominator; none for one seed), with n and every seed's value. A value that is not a
number (NaN, e.g. an AUC on a split without both classes) is listed as null and left out of the
mean. What a metrics file records per stage is read by one function per file in ``READERS``; a
stage with no reader is not aggregated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from .formatting import markdown_table, num, pm
from .io import UnreadableFileError, atomic_path, read_json, write_json

GUIDED_RADIUS = re.compile(r"^(?P<name>.+ \+ guided) r=\d+$")


class AggregateError(ValueError):
    """A run folder without seed folders, or a metrics file that cannot be read."""


def seed_folder(run_dir: str | Path, seed: int) -> Path:
    return Path(run_dir) / f"seed-{seed}"


def numbered_folders(run_dir: str | Path, prefix: str = "seed") -> dict[int, Path]:
    """``{n: folder}`` of every ``<prefix>-<n>`` folder under ``run_dir`` (seed or fold folders), by n."""
    run_dir = Path(run_dir)
    pattern = re.compile(rf"^{re.escape(prefix)}-(?P<n>\d+)$")
    found = {int(m["n"]): p for p in run_dir.iterdir() if p.is_dir() and (m := pattern.match(p.name))} \
        if run_dir.is_dir() else {}
    return dict(sorted(found.items()))


def seed_folders(run_dir: str | Path) -> dict[int, Path]:
    """``{seed: folder}`` of every ``seed-<S>`` folder under ``run_dir``, by seed."""
    return numbered_folders(run_dir, "seed")


# ----------------------------------------------------------------------------- reading one seed
# A reader turns one metrics file into readings: (section, what it is, number name, value).

Reading = tuple[str, dict, str, Any]


def _rows(m: dict, prefix: str) -> list[dict]:
    return next((rows for title, rows in (m.get("tables") or {}).items() if title.startswith(prefix)), []) or []


def _classifier(m: dict) -> Iterable[Reading]:
    for r in _rows(m, "Classifiers"):
        for key, name in (("test_auc", "test ROC AUC"), ("test_accuracy", "test accuracy")):
            if key in r:
                yield "classifiers", {"arch": r["arch"]}, name, r[key]


def _dice_entries(m: dict) -> list[tuple[str, dict | None]]:
    return [("best CAM setting (chosen on validation)", m.get("best_cam")),
            ("best CAM setting without refinement", (m.get("best_cam_by_refinement") or {}).get("none")),
            ("U-Net, supervised (reference)", m.get("unet")),
            ("random heatmap (baseline)", m.get("random_baseline"))]


def _segmentation(entries: list[tuple[str, dict | None]]) -> Iterable[Reading]:
    for masks, entry in entries:
        if not isinstance(entry, dict):
            continue
        for key, name in (("mean_dice", "test mean-Dice"), ("patient_dice", "test patient Dice")):
            if key in entry:
                yield "segmentation", {"masks": masks}, name, entry[key]


def _paired(m: dict) -> Iterable[Reading]:
    for r in _rows(m, "Paired comparisons"):
        if isinstance(r, dict) and {"comparison", "metric", "difference"} <= set(r):
            yield "paired", {"comparison": r["comparison"], "metric": r["metric"]}, "a - b per patient", r["difference"]


def _dice(m: dict) -> Iterable[Reading]:
    yield from _segmentation(_dice_entries(m))
    yield from _paired(m)


def heatmap_name(name: str) -> str:
    """A heatmap's name with the guided radius (chosen on validation per seed) left out."""
    m = GUIDED_RADIUS.match(str(name))
    return m["name"] if m else str(name)


def _retrain(m: dict) -> Iterable[Reading]:
    for r in m.get("results") or []:
        if not isinstance(r, dict) or not {"heatmap", "filter", "k", "imputation"} <= set(r):
            continue
        what = {"heatmap": heatmap_name(r["heatmap"]), "filter": r["filter"], "k": float(r["k"] or 0),
                "fill": r["imputation"]}
        for key, name in (("auc", "re-trained ROC AUC"), ("shape_auc", "shape-only ROC AUC"),
                          ("original_auc", "original classifier ROC AUC")):
            if key in r:
                yield "retraining", what, name, r[key]


def _pseudo(m: dict) -> Iterable[Reading]:
    yield from _segmentation([("U-Net on CAM pseudo-masks (weakly supervised)", m.get("pseudo")),
                              ("U-Net on random-heatmap masks (control)", m.get("control"))])
    yield from _paired(m)


READERS: dict[str, Callable[[dict], Iterable[Reading]]] = {
    "02_train": _classifier, "05_dice": _dice, "06_filtered_retrain": _retrain, "07_pseudo_labels": _pseudo}


def winner(metrics: dict[str, dict]) -> dict | None:
    """The CAM setting 05 chose on validation: architecture, method, layer, refinement (None without 05)."""
    best = (metrics.get("05_dice") or {}).get("best_cam")
    if not isinstance(best, dict):
        return None
    return {k: best.get(k) for k in ("arch", "method", "layer", "refinement")}


def verdicts(metrics: dict[str, dict]) -> list[dict]:
    """06's overall verdict per (heatmap, claim)."""
    out = []
    for v in (metrics.get("06_filtered_retrain") or {}).get("verdicts") or []:
        if isinstance(v, dict) and v.get("test", "overall") == "overall" and "verdict" in v:
            out.append({"heatmap": heatmap_name(v.get("heatmap", "")), "claim": v.get("claim", ""),
                        "verdict": v["verdict"]})
    return out


def load_seed_metrics(folder: str | Path) -> dict[str, dict]:
    """``{stage: metrics}`` of one seed folder (empty when it has none yet)."""
    out = {}
    for p in sorted((Path(folder) / "metrics").glob("*.json")):
        try:
            m = read_json(p)
        except UnreadableFileError as e:
            raise AggregateError(f"{e}; re-run the pipeline with the same --seeds (or --folds) to rewrite it") from None
        if isinstance(m, dict):
            out[p.stem] = m
    return out


# ----------------------------------------------------------------------------- over seeds


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample sd, n) of the values that are numbers; sd is None for fewer than two."""
    xs = [x for x in values if x is not None]
    n = len(xs)
    if not n:
        return None, None, 0
    mean = math.fsum(xs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return mean, sd, n


def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict:
    """The aggregate of ``{seed: {stage: metrics}}``: numbers (mean, sd, n, per seed), winners, verdicts."""
    seeds = sorted(per_seed)
    groups: dict[tuple, dict] = {}
    for seed in seeds:
        for stage, m in per_seed[seed].items():
            reader = READERS.get(stage)
            if reader is None:
                continue
            for section, what, name, value in reader(m):
                key = (stage, section, json.dumps(what, sort_keys=True), name)
                g = groups.setdefault(key, {"stage": stage, "section": section, "what": what, "number": name,
                                            "values": {}})
                g["values"][str(seed)] = _number(value)
    numbers = []
    for g in groups.values():
        values = {str(s): g["values"].get(str(s)) for s in seeds}  # null: that seed has no such number
        mean, sd, n = mean_sd(values.values())
        if n:  # a reading no seed has (e.g. no shape-only control for the random heatmap) is left out
            numbers.append({**g, "values": values, "mean": mean, "sd": sd, "n": n})
    wins: dict[str, dict] = {}
    for seed in seeds:
        w = winner(per_seed[seed])
        if w is not None:
            wins.setdefault(json.dumps(w), {**w, "wins": 0, "seeds": []})
            wins[json.dumps(w)]["wins"] += 1
            wins[json.dumps(w)]["seeds"].append(seed)
    said: dict[tuple, dict] = {}
    for seed in seeds:
        for v in verdicts(per_seed[seed]):
            k = (v["heatmap"], v["claim"], v["verdict"])
            said.setdefault(k, {**v, "seeds": []})["seeds"].append(seed)
    return {"seeds": seeds, "numbers": numbers,
            "winners": sorted(wins.values(), key=lambda w: (-w["wins"], w["seeds"])),
            "verdicts": [dict(v, count=len(v["seeds"])) for v in said.values()]}


# ----------------------------------------------------------------------------- report


def number_pm(n: dict, seeds: list[int]) -> str:
    """One aggregated number as 'mean ± sd', with '(n = k)' when fewer than all ``seeds`` (or folds) have it."""
    return pm(n["mean"], n["sd"]) + (f" (n = {n['n']})" if n["n"] < len(seeds) else "")


SECTIONS = {"classifiers": "Classifiers (02, test split)",
            "segmentation": "Segmentation (05 and 07, test split; knobs chosen on validation per seed)",
            "paired": "Paired comparisons (05 and 07, test split: mean difference a - b per patient; a and b as each seed chose)",
            "retraining": "Filtered re-training (06, test ROC AUC; each seed's value a mean over its re-training seeds)"}


def markdown(agg: dict, title: str = "", source: str = "", unit: str = "seed") -> str:
    """The aggregate as Markdown; ``unit``: what the runs are ('seed', or 'fold' for :mod:`.crossval`)."""
    seeds = agg["seeds"]
    order = " / ".join(map(str, seeds))
    tool = "aggregate" if unit == "seed" else "crossval"
    parts = [f"# camseg over {unit}s: {title}\n",
             f"{unit.capitalize()}s {', '.join(map(str, seeds))}. Each number as mean ± sd over {unit}s (sample sd; "
             f"n = the {unit}s that have it, when not all), then its value per {unit}, in the order {order}. "
             f"Regenerated from `{unit}-*/metrics/*.json` by `python -m camseg_utils.{tool} {source}`.\n"]
    by_section: dict[str, list[dict]] = {}
    for n in agg["numbers"]:
        by_section.setdefault(n["section"], []).append(n)
    for section, nums in by_section.items():
        cols = list(dict.fromkeys(k for n in nums for k in n["what"]))
        names = list(dict.fromkeys(n["number"] for n in nums))
        rows: dict[str, dict[str, dict]] = {}  # one row per what, one pair of columns per number
        for n in nums:
            rows.setdefault(json.dumps(n["what"], sort_keys=True), {})[n["number"]] = n
        body = []
        for cells in rows.values():
            what = next(iter(cells.values()))["what"]
            row = [_cell(what.get(c)) for c in cols]
            for name in names:
                n = cells.get(name)
                row += [number_pm(n, seeds), " / ".join(num(n["values"].get(str(s))) for s in seeds)] if n else ["", ""]
            body.append(row)
        header = cols + [h for name in names for h in (f"{name}, mean ± sd", f"per {unit}")]
        title_ = SECTIONS.get(section, section).replace("per seed", f"per {unit}").replace("each seed", f"each {unit}")
        parts.append(f"\n## {title_}\n\n" + markdown_table(header, body))
    if agg["winners"]:
        rows = [[w["arch"], w["method"], str(w["layer"]), w["refinement"], f"{w['wins']} of {len(seeds)}",
                 ", ".join(map(str, w["seeds"]))] for w in agg["winners"]]
        parts.append("\n## CAM setting chosen on validation (05)\n\n"
                     + markdown_table(["architecture", "method", "layer", "refinement", "chosen", f"{unit}s"], rows))
    if agg["verdicts"]:
        rows = [[v["heatmap"], v["claim"], v["verdict"], f"{v['count']} of {len(seeds)}", ", ".join(map(str, v["seeds"]))]
                for v in agg["verdicts"]]
        parts.append("\n## Verdicts of the filtered re-training (06)\n\n"
                     + markdown_table(["heatmap", "claim", "verdict", f"{unit}s with it", f"{unit}s"], rows))
    if not agg["numbers"]:
        parts.append(f"\nNo {unit} folder has metrics with headline numbers yet (02, 05 or 06).\n")
    return "\n".join(parts)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def write_aggregate(run_dir: str | Path, seeds: Iterable[int] | None = None, title: str = "") -> Path:
    """Read every seed folder's metrics, write ``aggregate.json`` and ``aggregate.md``; returns the Markdown path.

    ``seeds``: the seed folders to read (default: every ``seed-<S>`` folder under ``run_dir``).
    """
    run_dir = Path(run_dir)
    folders = seed_folders(run_dir) if seeds is None else {int(s): seed_folder(run_dir, s) for s in seeds}
    if not folders:
        raise AggregateError(f"{run_dir} holds no seed-<S> folders: run the pipeline with --seeds first")
    agg = aggregate({s: load_seed_metrics(f) for s, f in folders.items()})
    agg["run_dir"] = str(run_dir)
    write_json(run_dir / "aggregate.json", agg)
    with atomic_path(run_dir / "aggregate.md") as tmp:
        tmp.write_text(markdown(agg, title or run_dir.name, str(run_dir)))
    return run_dir / "aggregate.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a multi-seed run folder (holding seed-<S>/ folders)")
    a = ap.parse_args(argv)
    try:
        print(f"wrote {write_aggregate(a.run_dir)}")
    except AggregateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
