"""The study's protocol: every knob is chosen on the validation split, and the chosen setting is
applied once, unchanged, to the test split and scored there with patient-bootstrap CIs.

For the CAMs (:func:`study_cams`): per (model, method, layer), a sweep of rules, scales, guided
radii, gates and clean-up on validation (:func:`.selection.sweep_settings`), the best setting per
refinement ('none': the heatmap alone, 'guided': refined along the image's edges), its test masks
and scores. The baselines (random, Sobel) do not depend on the layer and are scored once. For the
supervised U-Net (:func:`study_unet`): the 3-D clean-up fraction is chosen on validation the same
way. The claims between settings are read as paired differences per test patient
(:func:`paired_comparisons`, :mod:`.paired`). Notebook 05, :mod:`.evaluate` and ``benchmarks/bench_dice_lgg.py`` all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import cams, heatmap_cache, metrics, paired
from .data import Dataset
from .io import file_sha256
from .masks import NORMALISATIONS, check_threshold, head_masks
from .morphology import keep_volume_components
from .refinement import GUIDE_CHANNEL, GUIDED_EPS
from .selection import SELECT_BY, apply_setting, best_settings, setting_heatmaps, sweep_settings
from .unet import choose_volume_cleanup, predict_masks

TABLE_COLUMNS = ["arch", "method", "layer", "refinement", "val_mean_dice", "val_patient_dice", "mean_dice", "mean_dice_ci",
                 "patient_dice", "patient_dice_ci", "two_class_dice", "fp_area", "pointing_game", "mass_inside",
                 "pixel_ap", "rule", "value", "normalisation", "guided_radius", "head_gate", "prob_gate", "cleanup",
                 "volume_cleanup"]


@dataclass
class Split:
    """One split as the protocol reads it: the dataset, its true masks, head masks and patient per slice."""

    part: Dataset
    gt: np.ndarray
    heads: np.ndarray
    patients: np.ndarray

    @classmethod
    def of(cls, part: Dataset) -> Split:
        return cls(part, np.asarray(part.masks), head_masks(part.images), part.manifest.patient.to_numpy())

    @property
    def images(self) -> np.ndarray:
        return self.part.images


@dataclass
class SweepGrid:
    """What the validation sweep tries (see :func:`.selection.sweep_settings`) and what it picks by."""

    thresholds: Sequence[float]
    top_ks: Sequence[float]
    normalisations: Sequence[str] = NORMALISATIONS
    guided_radii: Sequence[int] = (0,)
    guided_eps: float = GUIDED_EPS
    guide_channel: int = GUIDE_CHANNEL
    head_gates: Sequence[bool] = (False, True)
    prob_gates: Sequence[float] = (0.0, 0.5)
    cleanups: Sequence[bool] = (False,)
    cleanup_candidates: int | None = 5
    select_by: str = "mean_dice"

    def __post_init__(self) -> None:
        for t in self.thresholds:
            check_threshold(t)
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by={self.select_by!r}: expected one of {SELECT_BY}")

    def sweep(self, heatmaps, val: Split, probs: np.ndarray, device=None) -> list[dict]:
        return sweep_settings(heatmaps, val.images, val.gt, val.heads, probs, self.thresholds, self.top_ks,
                              self.normalisations, self.guided_radii, self.guided_eps, self.guide_channel, device,
                              head_gates=self.head_gates, prob_gates=self.prob_gates, cleanups=self.cleanups,
                              patients=val.patients, select_by=self.select_by,
                              cleanup_candidates=self.cleanup_candidates)


@dataclass
class CamStudy:
    """:func:`study_cams`' outcome: every validation sweep row (``curves``), one test row per chosen
    setting (``results``), per-patient test Dice frames and the chosen test masks by (arch, method, layer, refinement)."""

    curves: pd.DataFrame
    results: pd.DataFrame
    per_patient: list[pd.DataFrame] = field(default_factory=list)
    masks: dict = field(default_factory=dict)


@dataclass
class UnetStudy:
    """:func:`study_unet`' outcome: the chosen validation row, every validation row, the test masks and scores,
    and (when asked for) the test scores of every fraction in the order of ``val_rows``."""

    chosen: dict
    val_rows: list[dict]
    masks: np.ndarray
    scores: dict
    test_by_fraction: list[dict] = field(default_factory=list)


def apply_chosen(heatmaps, setting, images: np.ndarray, heads: np.ndarray, probs: np.ndarray, device=None):
    """A setting chosen on validation applied unchanged to other slices: (heatmaps refined as it says, masks)."""
    refined = setting_heatmaps(heatmaps, setting, images, device)
    return refined, apply_setting(refined, setting, heads, probs)


def patient_frame(masks: np.ndarray, split: Split, model: str, kind: str) -> pd.DataFrame:
    """Per-patient (3-D) Dice of ``masks`` on ``split``, labelled for the per-patient figure."""
    return pd.DataFrame({"patient_dice": metrics.patient_dice(masks, split.gt, split.patients)}).assign(
        model=model, kind=kind)


def run_heatmaps(run_dir: str | Path, val: Split, test: Split, fuse: str = "mean", batch_size: int = 32,
                 device=None, seed: int = 0, methods: Sequence[str] = (), layers: Sequence[str] = (),
                 **cached_kw) -> Callable:
    """``heatmaps(arch, method, layer, split_name)`` from a run folder's heatmap cache (the classifier
    ``models/<arch>/best.pt``); what :func:`study_cams` asks for.

    With ``methods`` and ``layers``, the first request for a (classifier, split) fills every missing
    (method, layer) entry of it in one sweep over the images (one forward and one backward pass per
    batch for all gradient methods and layers together).
    """
    run_dir = Path(run_dir)
    parts = {"val": val, "test": test}
    swept: dict[tuple[str, str], dict] = {}

    def heatmaps(arch: str, method: str, layer: str, split: str):
        ckpt = run_dir / "models" / arch / "best.pt"
        if method in methods and layer in layers:
            if (arch, split) not in swept:
                swept[arch, split] = heatmap_cache.cached_heatmaps_many(run_dir, ckpt, parts[split].images, split, methods,
                                                               layers, [fuse], batch_size, device, seed=seed,
                                                               **cached_kw)
            return swept[arch, split][method, layer, fuse]
        return heatmap_cache.cached_heatmaps(run_dir, ckpt, parts[split].images, split, method, layer, fuse, batch_size,
                                    device, seed=seed, **cached_kw)
    return heatmaps


def run_probabilities(run_dir: str | Path) -> Callable:
    """``probabilities(arch) -> (validation, test)`` tumour probabilities from ``models/<arch>/predictions.csv``."""
    def probabilities(arch: str):
        pred = pd.read_csv(Path(run_dir) / "models" / arch / "predictions.csv")
        return tuple(pred.loc[pred.split == s, "prob"].to_numpy() for s in ("val", "test"))
    return probabilities


def study_cams(heatmaps: Callable, probabilities: Callable, architectures: Sequence[str], methods: Sequence[str],
               layers: Sequence[str], val: Split, test: Split, grid: SweepGrid, *, fuse: str = "mean",
               n_boot: int = 1000, seed: int = 0, device=None, localisation: bool = True,
               on_row: Callable[[dict], None] | None = None) -> CamStudy:
    """Choose on validation, score on test, for every (architecture, layer, method) and refinement.

    ``heatmaps(arch, method, layer, split_name)`` gives the heatmaps of 'val' or 'test';
    ``probabilities(arch)`` the (validation, test) tumour probabilities the classifier gate uses.
    ``localisation``: also the threshold-free metrics of the (refined) test heatmaps. ``on_row`` is
    called with each test row as soon as it is scored.
    """
    curves, results, per_patient, masks_by = [], [], [], {}
    for arch in architectures:
        p_v, p_t = probabilities(arch)
        for layer in layers:
            for mth in methods:
                if mth in cams.BASELINES and layer != layers[0]:
                    continue  # baselines do not depend on the layer
                hv, ht = heatmaps(arch, mth, layer, "val"), heatmaps(arch, mth, layer, "test")
                sw = pd.DataFrame(grid.sweep(hv, val, p_v, device)).assign(arch=arch, layer=layer, method=mth)
                curves.append(sw)
                for kind, best in best_settings(sw.to_dict("records"), grid.select_by).items():
                    ht_r, masks = apply_chosen(ht, best, test.images, test.heads, p_t, device)
                    row = _test_row(arch, mth, layer, kind, best, masks, ht_r.heatmap, test, grid, fuse, n_boot, seed,
                                    localisation)
                    name = f"{arch} {mth} @ {layer}" + (" + guided" if kind == "guided" else "")
                    per_patient.append(patient_frame(masks, test, name, "baseline" if mth in cams.BASELINES else "CAM"))
                    results.append(row)
                    masks_by[(arch, mth, layer, kind)] = masks
                    if on_row is not None:
                        on_row(row)
    return CamStudy(pd.concat(curves, ignore_index=True), pd.DataFrame(results), per_patient, masks_by)


def _test_row(arch, mth, layer, kind, best, masks, heat, test: Split, grid: SweepGrid, fuse, n_boot, seed,
              localisation) -> dict:
    s = metrics.score_masks(masks, test.gt, test.patients, n_boot, seed)
    loc = {"pointing_game": metrics.pointing_game(heat, test.gt), "mass_inside": metrics.mass_inside(heat, test.gt),
           "pixel_ap": metrics.pixel_average_precision(heat, test.gt, seed=seed)} if localisation else {}
    return {"arch": arch, "method": mth, "layer": layer if mth not in cams.BASELINES else "-", "refinement": kind,
            "val_mean_dice": best["mean_dice"], "val_patient_dice": best["patient_dice"], **s, **loc,
            "rule": best["rule"], "value": best["value"], "normalisation": best["normalisation"],
            "guided_radius": int(best["guided_radius"]), "guided_eps": grid.guided_eps,
            "guide_channel": grid.guide_channel, "head_gate": bool(best["head_gate"]), "prob_gate": best["prob_gate"],
            "cleanup": bool(best["cleanup"]), "reference": best["reference"], "fuse": fuse, "seed": seed}


def study_unet(net, norm, val: Dataset, test: Split, fractions: Sequence[float], select_by: str = "mean_dice",
               n_boot: int = 1000, seed: int = 0, every_fraction: bool = False, batch_size: int = 32) -> UnetStudy:
    """The U-Net's 3-D clean-up fraction chosen on validation by ``select_by``, applied to test and scored;
    ``every_fraction`` also scores every other fraction on test (to show what the choice costs)."""
    chosen, val_rows = choose_volume_cleanup(net, norm, val, fractions, select_by)
    raw = predict_masks(net, norm, test.images, batch_size)
    case, slices = test.part.manifest["case"], test.part.manifest["slice"]
    by_fraction = []
    for r in val_rows if every_fraction else [chosen]:
        masks = keep_volume_components(raw, case, slices, r["volume_cleanup"])
        scores = metrics.score_masks(masks, test.gt, test.patients, n_boot, seed)
        by_fraction.append(scores)
        if r is chosen:
            chosen_masks, chosen_scores = masks, scores
    return UnetStudy(chosen, val_rows, chosen_masks, chosen_scores, by_fraction if every_fraction else [])


def best_cams(results: pd.DataFrame, select_by: str = "mean_dice") -> tuple[pd.Series, dict[str, pd.Series]]:
    """The CAM test row (baselines aside) with the best validation ``select_by``, overall and per refinement
    (of equals, the first scored)."""
    cam_rows = results[~results.method.isin(cams.BASELINES)]
    key = f"val_{select_by}"
    return cam_rows.loc[cam_rows[key].idxmax()], {k: g.loc[g[key].idxmax()] for k, g in cam_rows.groupby("refinement")}


def best_cam_lines(by_refinement: dict[str, pd.Series], unet: UnetStudy, select_by: str = "mean_dice") -> str:
    """The best CAM per refinement (:func:`best_cams`) against the U-Net, one line each: its test mean-Dice with
    CI, patient Dice, and its mean-Dice as a share of the U-Net's."""
    u = unet.scores["mean_dice"]
    return "\n".join(f"best CAM, refinement={kind} (chosen on validation by {select_by}): {b.arch} {b.method} @ {b.layer}: "
                     f"test mean-Dice {b.mean_dice:.3f} [{b.mean_dice_ci[0]:.3f}, {b.mean_dice_ci[1]:.3f}], "
                     f"patient Dice {b.patient_dice:.3f}; U-Net {u:.3f}; ratio {b.mean_dice / u:.2f}"
                     for kind, b in by_refinement.items())


def patient_frames(study: CamStudy, unet: UnetStudy, test: Split) -> pd.DataFrame:
    """Per-patient test Dice of every chosen CAM and baseline setting and of the U-Net, in one frame."""
    return pd.concat(study.per_patient + [patient_frame(unet.masks, test, "U-Net", "U-Net")])


def test_counts(study: CamStudy, unet: UnetStudy, test: Split) -> pd.DataFrame:
    """Per-slice counts (:mod:`.paired`) of every chosen setting's test masks and of the U-Net's."""
    masks = {paired.setting_name(arch, mth, layer, kind, mth in cams.BASELINES): m
             for (arch, mth, layer, kind), m in study.masks.items()}
    return paired.split_counts({**masks, "U-Net": unet.masks}, test)


def paired_comparisons(counts: pd.DataFrame, results: pd.DataFrame, select_by: str = "mean_dice", n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """The study's claims as paired differences per test patient (:func:`.paired.study_pairs`) for the
    CAM setting chosen on validation by ``select_by``."""
    best, _ = best_cams(results, select_by)
    return paired.compare(counts, paired.study_pairs(best, results, cams.BASELINES), n_boot, seed)


def results_table(results: pd.DataFrame, unet: UnetStudy, select_by: str = "mean_dice") -> pd.DataFrame:
    """The test table: CAM and baseline rows by validation ``select_by``, then the U-Net's row."""
    u = {"arch": "U-Net (supervised)", "method": "-", "layer": "-", "val_mean_dice": unet.chosen["mean_dice"],
         "val_patient_dice": unet.chosen["patient_dice"], "volume_cleanup": unet.chosen["volume_cleanup"],
         **unet.scores}
    return pd.concat([results.sort_values(f"val_{select_by}", ascending=False), pd.DataFrame([u])],
                     ignore_index=True).reindex(columns=TABLE_COLUMNS)


def dice_record(study: CamStudy, unet: UnetStudy, table: pd.DataFrame, select_by: str, n_boot: int,
                unet_width: int, run_dir: str | Path | None = None, comparisons: pd.DataFrame | None = None) -> dict:
    """What ``metrics/05_dice.json`` holds: the choices, the U-Net, the random baseline at the best CAM's
    refinement (the setting :mod:`.evaluate` applies to new patients) and the test table.

    With ``run_dir``, also the hash of the classifier the choice was made on, which :mod:`.evaluate`
    checks before applying the choice to another classifier file; with ``comparisons``
    (:func:`paired_comparisons`), their table."""
    results = study.results
    best_cam, by_refinement = best_cams(results, select_by)
    rand = (results.method == "random") & (results.refinement == best_cam.refinement)
    u = unet.scores
    return {
        "select_by": select_by,
        "summary": (f"Knobs chosen on validation by {select_by} per (model, method, layer); test split; 95 % CIs by "
                    f"patient bootstrap ({n_boot}). mean_dice = mean per-slice Dice over test slices with tumour; "
                    f"patient_dice = 3-D Dice per patient. refinement: none = the heatmap alone, guided = re-drawn along "
                    f"the image's edges (guided filter). "
                    + " ".join(f"Best CAM, refinement={k}: {b.arch} {b.method} @ {b.layer}, mean-Dice {b.mean_dice:.3f}."
                               for k, b in by_refinement.items()) + f" U-Net: {u['mean_dice']:.3f}."),
        "best_cam": best_cam.to_dict(), "best_cam_by_refinement": {k: b.to_dict() for k, b in by_refinement.items()},
        "unet": u, "unet_width": unet_width, "unet_volume_cleanup": unet.chosen["volume_cleanup"],
        "unet_val_volume_cleanups": unet.val_rows,
        "random_baseline": results[rand].iloc[0].to_dict() if rand.any() else None,
        "tables": {"Segmentation (test split)": table.to_dict(orient="records"),
                   **({"Paired comparisons (test split, a - b per patient)": comparisons.to_dict(orient="records")}
                      if comparisons is not None else {})},
        **({"classifier_sha256": file_sha256(Path(run_dir) / "models" / best_cam.arch / "best.pt")} if run_dir else {}),
    }
