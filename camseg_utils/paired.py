"""Paired comparisons: two segmentations of the same test patients, compared patient by patient.

Two settings scored on the same patients share most of their noise (the hard patients are hard for
both), so two separate means with overlapping intervals say little about which is better. Here the
difference is taken per patient and its interval comes from resampling patients, with a Wilcoxon
signed-rank test on the per-patient differences beside it.

The currency is a table of per-slice counts, one row per (setting, slice): ``patient``, ``slice``,
``inter`` = |prediction ∩ truth|, ``pred`` = |prediction|, ``gt`` = |truth|. Both headline numbers
come from it exactly as :func:`camseg_utils.metrics.score_masks` computes them from the masks
(mean-Dice: the mean per-slice Dice over slices with tumour; patient Dice: the 3-D Dice per patient,
averaged over patients), and tables of different runs on disjoint patients (the folds of a
cross-validation) can be stacked and scored as one.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from .metrics import bootstrap_ci

COUNT_COLUMNS = ["setting", "patient", "slice", "inter", "pred", "gt"]
METRICS = ("mean_dice", "patient_dice")


class PairedError(ValueError):
    """Counts that cannot be compared: a setting missing, or two settings scored on different slices."""


def slice_counts(masks: np.ndarray, gt: np.ndarray, patients: Sequence, slices: Sequence, setting: str) -> pd.DataFrame:
    """The per-slice counts of ``masks`` (N x H x W bool) against ``gt``, labelled ``setting``."""
    masks, gt = np.asarray(masks, bool), np.asarray(gt, bool)
    if masks.shape != gt.shape:
        raise PairedError(f"{setting}: masks {masks.shape} and ground truth {gt.shape} differ in shape")
    flat_m, flat_g = masks.reshape(len(masks), -1), gt.reshape(len(gt), -1)
    return pd.DataFrame({"setting": setting, "patient": np.asarray(patients), "slice": np.asarray(slices),
                         "inter": (flat_m & flat_g).sum(1), "pred": flat_m.sum(1), "gt": flat_g.sum(1)})


def split_counts(masks: Mapping[str, np.ndarray | None], split) -> pd.DataFrame:
    """:func:`slice_counts` of several settings' masks on one split (anything with ``part.manifest``, ``gt`` and
    ``patients``, as 05's and 07's test splits), stacked in the mapping's order; a setting without masks is
    left out. Slices are named ``case:slice``."""
    m = split.part.manifest
    slices = m["case"].astype(str) + ":" + m["slice"].astype(str)
    return pd.concat([slice_counts(v, split.gt, split.patients, slices, name) for name, v in masks.items()
                      if v is not None], ignore_index=True)


def _setting(counts: pd.DataFrame, name: str) -> pd.DataFrame:
    part = counts[counts.setting == name]
    if part.empty:
        known = ", ".join(sorted(counts.setting.unique()))
        raise PairedError(f"no counts for setting {name!r}; the table has: {known}")
    if part.duplicated(["patient", "slice"]).any():
        raise PairedError(f"setting {name!r} has two rows for one (patient, slice)")
    return part.set_index(["patient", "slice"]).sort_index()


def slice_dice(part: pd.DataFrame) -> pd.Series:
    """Per-slice Dice of slices with tumour (the values mean-Dice averages), indexed like ``part``."""
    t = part[part["gt"] > 0]
    return 2 * t["inter"] / (t["pred"] + t["gt"])


def patient_dice(part: pd.DataFrame) -> pd.Series:
    """3-D Dice per patient; a patient with neither tumour nor prediction has none (left out)."""
    s = part.groupby(level="patient")[["inter", "pred", "gt"]].sum()
    return (2 * s["inter"] / (s["pred"] + s["gt"]))[s["pred"] + s["gt"] > 0]


def scores(counts: pd.DataFrame, setting: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean-Dice and patient Dice of one setting with patient-bootstrap CIs (as :func:`metrics.score_masks`)."""
    part = _setting(counts, setting)
    sd, pd_ = slice_dice(part), patient_dice(part)
    return {"setting": setting, "patients": int(part.index.get_level_values("patient").nunique()),
            "mean_dice": float(sd.mean()) if len(sd) else float("nan"),
            "mean_dice_ci": list(bootstrap_ci(sd.to_numpy(), sd.index.get_level_values("patient"), n_boot, seed, level)),
            "patient_dice": float(pd_.mean()) if len(pd_) else float("nan"),
            "patient_dice_ci": list(bootstrap_ci(pd_.to_numpy(), pd_.index.to_numpy(), n_boot, seed, level))}


def _wilcoxon(d: np.ndarray) -> float:
    if len(d) == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0  # no patient differs: nothing to reject
    return float(wilcoxon(d, zero_method="wilcox").pvalue)


def paired(counts: pd.DataFrame, a: str, b: str, metric: str = "mean_dice", n_boot: int = 1000, seed: int = 0,
           level: float = 0.95) -> dict:
    """``a`` minus ``b`` on ``metric`` over the patients both were scored on, with its patient-bootstrap CI.

    mean-Dice: the per-slice differences averaged over tumour slices (equal to a's mean-Dice minus b's);
    the bootstrap resamples patients with all their slices. patient Dice: the per-patient differences
    averaged over patients that have a 3-D Dice under both settings. ``p``: Wilcoxon signed-rank test of
    the per-patient differences (for mean-Dice, each patient's mean over its tumour slices).
    """
    if metric not in METRICS:
        raise PairedError(f"metric={metric!r}: expected one of {METRICS}")
    pa, pb = _setting(counts, a), _setting(counts, b)
    if not pa.index.equals(pb.index) or not pa["gt"].equals(pb["gt"]):
        raise PairedError(f"{a!r} and {b!r} were not scored on the same slices and ground truth: no paired comparison")
    if metric == "mean_dice":
        values_a, values_b = slice_dice(pa), slice_dice(pb)
        d = values_a - values_b
        patients = d.index.get_level_values("patient")
        per_patient = d.groupby(level="patient").mean()
    else:
        da, db = patient_dice(pa), patient_dice(pb)
        both = da.index.intersection(db.index)
        values_a, values_b = da[both], db[both]
        d = per_patient = values_a - values_b
        patients = d.index.to_numpy()
    lo, hi = bootstrap_ci(d.to_numpy(), np.asarray(patients), n_boot, seed, level)
    return {"a": a, "b": b, "metric": metric, "patients": int(len(per_patient)),
            "a_value": float(values_a.mean()) if len(values_a) else float("nan"),
            "b_value": float(values_b.mean()) if len(values_b) else float("nan"),
            "difference": float(d.mean()) if len(d) else float("nan"), "ci": [lo, hi],
            "p": _wilcoxon(per_patient.to_numpy()),
            "a_better": int((per_patient > 0).sum()), "b_better": int((per_patient < 0).sum())}


def compare(counts: pd.DataFrame, pairs: Iterable[tuple[str, str, str]], n_boot: int = 1000, seed: int = 0,
            level: float = 0.95) -> pd.DataFrame:
    """One row per (question, a, b) and metric: :func:`paired` on both headline metrics."""
    rows = [{"comparison": q, **paired(counts, a, b, m, n_boot, seed, level)}
            for q, a, b in pairs for m in METRICS]
    return pd.DataFrame(rows, columns=["comparison", "a", "b", "metric", "patients", "a_value", "b_value",
                                       "difference", "ci", "p", "a_better", "b_better"])


def setting_name(arch: str, method: str, layer: str, refinement: str, baseline: bool = False) -> str:
    """The label of a CAM or baseline setting in counts and comparisons (a baseline has no layer)."""
    return f"{arch} {method}" + ("" if baseline else f" @ {layer}") + (" + guided" if refinement == "guided" else "")


def study_pairs(best: pd.Series, results: pd.DataFrame, baselines: Iterable[str], unet: str = "U-Net") -> list[tuple]:
    """The comparisons behind the study's claims, for the CAM setting ``best`` chosen on validation:
    CAM vs random heatmap (at the same refinement), U-Net vs CAM, guided refinement vs none (same method
    and layer) and every other layer vs the chosen one (same method and refinement), where scored."""
    baselines = set(baselines)
    have = {(r.arch, r.method, r.layer, r.refinement) for r in results.itertuples()}
    name = setting_name(best.arch, best.method, best.layer, best.refinement)
    pairs = []
    if (best.arch, "random", "-", best.refinement) in have:
        pairs.append(("CAM vs random heatmap", name,
                      setting_name(best.arch, "random", "-", best.refinement, baseline=True)))
    pairs.append(("U-Net vs CAM", unet, name))
    other = "none" if best.refinement == "guided" else "guided"
    if (best.arch, best.method, best.layer, other) in have:
        guided, plain = (name, setting_name(best.arch, best.method, best.layer, other)) if other == "none" else \
            (setting_name(best.arch, best.method, best.layer, other), name)
        pairs.append(("guided vs none", guided, plain))
    for layer in dict.fromkeys(results.layer):
        if layer != best.layer and layer != "-" and (best.arch, best.method, layer, best.refinement) in have \
                and best.method not in baselines:
            pairs.append((f"{layer} vs {best.layer} layer", setting_name(best.arch, best.method, layer,
                                                                          best.refinement), name))
    return pairs
