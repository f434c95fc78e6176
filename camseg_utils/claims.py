"""The paper's two claims judged from the filtered re-training's numbers, and the record notebook 06 writes.

The claims: classifiers rely mainly on the hot areas; the dark regions also carry class information.
The rules (:func:`judge`, :func:`claim_verdicts`): two readings differ when their means are more than
``Z`` x the larger standard deviation apart (at least ``Z`` x ``MIN_SD``, also the margin of the
seedless original-classifier readings); a reading whose seeds spread more than ``MAX_SD`` is
inconclusive. A test is *supported* when its reading beats its baseline (the random control for
claim 1, chance for claim 2) and the shape-only control, *confounded by the heatmap's shape* when it
beats the baseline but not the shape, *not supported* when it does not beat the baseline. A claim's
verdict is its primary test's (the hard filter at the smallest k with the fill that hides the outline
best), except that a primary 'not supported' against an original classifier that supports the claim
is 'inconclusive' (the two tests disagree), and 'supported' stays so when the original classifier
disagrees (filtered images are outside what it was trained on: the reason to re-train at all).

Apart from :mod:`.retrain` because the rules read nothing but its summary table
(:func:`.retrain.summarise`): they are unit-tested on hand-made tables, without an experiment.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from . import filtering
from .retrain import RANDOM, display_table, pm, unfiltered

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
CONFOUNDED, INCONCLUSIVE = "confounded by the heatmap's shape", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, CONFOUNDED, INCONCLUSIVE)
CLAIMS = {"hot": "classifiers rely mainly on the hot areas",
          "dark": "the dark regions also carry class information"}
CHANCE = 0.5
Z, MIN_SD, MAX_SD = 2.0, 0.01, 0.1


def compare(a: tuple[float, float], b: tuple[float, float], z: float = Z, min_sd: float = MIN_SD) -> int:
    """+1 when reading a = (mean, sd) beats b by more than z x the larger sd (at least z x min_sd), -1 when b beats
    a so, 0 when they are within that margin. A missing sd (a seedless reading) counts as min_sd."""
    sds = [s for s in (a[1], b[1]) if s is not None and not math.isnan(s)]
    margin = z * max(sds + [min_sd])
    d = a[0] - b[0]
    return 1 if d > margin else -1 if d < -margin else 0


def judge(reading: tuple[float, float], baseline: tuple[float, float], shape: tuple[float, float] | None = None,
          z: float = Z, min_sd: float = MIN_SD, max_sd: float = MAX_SD) -> tuple[str, str]:
    """(verdict, reason) of one test: ``reading`` against its ``baseline`` and, when given, its shape-only control."""
    parts = [("reading", reading), ("baseline", baseline)] + ([("shape-only", shape)] if shape is not None else [])
    for what, (m, _) in parts:
        if m is None or math.isnan(m):
            return INCONCLUSIVE, f"the {what} reading is missing"
    wide = [f"{what} sd {s:.3f}" for what, (_, s) in parts if s is not None and not math.isnan(s) and s > max_sd]
    if wide:
        return INCONCLUSIVE, f"seeds disagree ({', '.join(wide)} > {max_sd})"
    if compare(reading, baseline, z, min_sd) <= 0:
        return NOT_SUPPORTED, f"{pm(*reading)} does not beat the baseline {pm(*baseline)}"
    if shape is not None and compare(reading, shape, z, min_sd) <= 0:
        return CONFOUNDED, (f"{pm(*reading)} beats the baseline {pm(*baseline)} but not the shape alone "
                            f"{pm(*shape)}")
    return SUPPORTED, f"{pm(*reading)} beats the baseline {pm(*baseline)}" + (
        f" and the shape alone {pm(*shape)}" if shape is not None else "")


def overall(primary: str, original: str) -> str:
    """A claim's verdict from its primary re-trained test and the original classifier's test (module docstring)."""
    if primary not in VERDICTS or original not in VERDICTS:
        raise ValueError(f"verdicts {primary!r}, {original!r}: expected among {VERDICTS}")
    if primary == NOT_SUPPORTED and original == SUPPORTED:
        return INCONCLUSIVE
    return primary


def claim_verdicts(summary: pd.DataFrame, heatmap: str, k: float, imputations: Sequence[str] = filtering.IMPUTATIONS,
                   z: float = Z, min_sd: float = MIN_SD, max_sd: float = MAX_SD) -> list[dict]:
    """The tests of both claims for one heatmap at one k (re-trained per fill, soft, original classifier), each
    with its verdict, then one 'overall' row per claim. ``summary``: :func:`summarise`'s table, with the
    random control's rows."""
    idx = summary.set_index(["heatmap", "filter", "k", "imputation"])

    def get(name, kind, kk, imp, col):
        key = (name, kind, float(kk), imp)
        if key not in idx.index:
            return math.nan, math.nan
        r = idx.loc[key]
        return (float(r[col]), math.nan) if col == "original_auc" else (float(r[col]), float(r[col + "_sd"]))

    chance = (CHANCE, 0.0)
    primary_fill = "nli" if "nli" in imputations else imputations[0]
    rows = []
    for claim, hard, soft in (("hot", "keep", "keep_hot"), ("dark", "remove", "keep_dark")):
        tests = []
        for imp in imputations:
            base = get(RANDOM, hard, k, imp, "auc") if claim == "hot" else chance
            tests.append((f"re-trained, {hard} hottest {k:g} %, {imp} fill", get(heatmap, hard, k, imp, "auc"), base,
                          get(heatmap, hard, k, imp, "shape_auc"), imp == primary_fill))
        tests.append((f"re-trained, soft {soft}", get(heatmap, soft, 0, "-", "auc"),
                      get(RANDOM, soft, 0, "-", "auc") if claim == "hot" else chance,
                      get(heatmap, soft, 0, "-", "shape_auc"), False))
        tests.append((f"original classifier, {hard} hottest {k:g} %, mean fill",
                      get(heatmap, hard, k, "mean", "original_auc"),
                      get(RANDOM, hard, k, "mean", "original_auc") if claim == "hot" else chance, None, False))
        found = {}
        for test, reading, base, shape, primary in tests:
            verdict, reason = judge(reading, base, shape, z, min_sd, max_sd)
            found["primary" if primary else test] = verdict
            rows.append({"claim": CLAIMS[claim], "heatmap": heatmap, "test": test + (" (primary)" if primary else ""),
                         "reading": pm(*reading), "baseline": ("random " if claim == "hot" else "chance ") + pm(*base),
                         "shape only": pm(*shape) if shape else "-", "verdict": verdict, "reason": reason})
        orig = found[tests[-1][0]]
        rows.append({"claim": CLAIMS[claim], "heatmap": heatmap, "test": "overall", "reading": "", "baseline": "",
                     "shape only": "", "verdict": overall(found["primary"], orig),
                     "reason": f"primary re-trained test: {found['primary']}; original classifier: {orig}"})
    return rows


def study_verdicts(summary: pd.DataFrame, heatmaps: Iterable[str], k: float,
                   imputations: Sequence[str] = filtering.IMPUTATIONS) -> list[dict]:
    """:func:`claim_verdicts` of every heatmap in turn but the random control (the baseline of claim 1)."""
    return [v for name in heatmaps if name != RANDOM for v in claim_verdicts(summary, name, k, imputations)]


def reading(verdicts: Sequence[dict]) -> str:
    """The overall verdicts as Markdown bullets, each with its reason."""
    return "\n".join(f"- **{v['heatmap']}**, claim *{v['claim']}*: **{v['verdict']}** ({v['reason']})."
                     for v in verdicts if v["test"] == "overall")


def record(runs: pd.DataFrame, summary: pd.DataFrame, verdicts: Sequence[dict], seeds: Sequence[int], size: int,
           epochs: int, seconds: float) -> dict:
    """What ``metrics/06_filtered_retrain.json`` holds: the overall verdicts and their reading, the summary table
    (:func:`.retrain.summarise` of ``runs``), every test's verdict, the settings, time and number of re-trainings."""
    ref = unfiltered(summary)
    return {
        "summary": reading(verdicts) + f"\n\nTest ROC AUC, mean ± sd over seeds {seeds}; re-trained at {size} px for "
                                       f"{epochs} epochs; unfiltered: re-trained {pm(ref.auc, ref.auc_sd)}, original "
                                       f"classifier {ref.original_auc:.3f}; {seconds:.0f} s.",
        "verdicts": [v for v in verdicts if v["test"] == "overall"], "results": summary.to_dict(orient="records"),
        "seconds": seconds, "trainings": int(runs.seed.notna().sum()),
        "tables": {"Filtered re-training (test ROC AUC, mean ± sd over seeds)": display_table(summary),
                   "Verdicts per claim and test": list(verdicts)}}
