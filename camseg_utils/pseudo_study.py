"""Notebook 07's protocol: a U-Net trained on pseudo-masks, its knobs chosen on validation, scored once on test.

On the training split only images and slice labels are read (:func:`training_inputs`): pseudo-masks
come from the CAM setting notebook 05 chose on validation, applied unchanged to the training
heatmaps (:mod:`.pseudo_labels`), after the intensity re-draw best on validation (the masks as they are
among the candidates; the masks of 05's setting on the validation slices against their drawn masks,
no training needed). Every uncertain band is trained once; the band best on
validation goes on to the self-training rounds; with ``ensemble`` > 1, that many networks (seeds
``seed``, ``seed`` + 1, ...) trained on the targets of the best (band, round) so far predict together
(their mean probability) as one more candidate. The candidate best on validation by 05's ``select_by``
is chosen, then the 3-D clean-up of its masks, as for 05's U-Net. Each training keeps its best epoch
on validation. The random heatmap, with 05's setting for it, goes through the same path with the chosen
re-draw, band, rounds and number of networks: what a network learns from noise and the gates alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import heatmap_cache, paired, protocol
from .data import Dataset, load_dataset
from .device import resolve_device
from .io import file_sha256, load_torch, read_json
from .masks import head_masks, scaled_heatmaps
from .metrics import score_masks
from .morphology import keep_volume_components
from .pseudo_labels import (
    PseudoLabelError,
    as_ensemble,
    band_targets,
    check_band,
    check_redraw,
    kept_slices,
    load_networks,
    network_masks,
    probability_maps,
    redraw,
    self_training_targets,
    train_on_targets,
)
from .selection import SELECT_BY
from .unet import load_unet, predict_masks, predict_volumes

TABLE = "Weakly supervised segmentation (test split)"
GRID_TABLE = "Pseudo-label U-Net on validation (one row per band and round)"
REDRAW_TABLE = "Pseudo-mask re-draw on validation (the CAM masks against the drawn masks)"
PAIRED_TABLE = "Paired comparisons (test split, a - b per patient)"
# the test masks 07 compares per patient, and the comparisons: (question, a, b)
PSEUDO, CAM_MASKS, UNET, CONTROL = ("U-Net on CAM pseudo-masks", "CAM masks it learned from", "U-Net, supervised",
                                    "U-Net on random-heatmap masks")
PAIRS = [("pseudo-label U-Net vs its CAM masks", PSEUDO, CAM_MASKS),
         ("supervised vs pseudo-label U-Net", UNET, PSEUDO),
         ("pseudo-label U-Net vs its control", PSEUDO, CONTROL)]
POSTPROCESSING = ("volume_cleanup", "output_redraw_level", "output_redraw_radius")  # a network's, chosen on validation
SOURCES = {"cam": "U-Net on CAM pseudo-masks (weakly supervised)", "random": "U-Net on random-heatmap masks (control)"}


@dataclass
class PseudoGrid:
    """What 07 tries: uncertain ``bands`` (round 0), self-training ``rounds`` after it, ``epochs`` per
    training (the best one kept), the share of empty-target slices per epoch, ``ensemble``: networks
    averaged on the best targets (1: none), the U-Net's 3-D clean-ups, the classifier ``gate`` on
    tumour-labelled training slices (0: the label alone), the intensity re-draws tried on validation
    (every level with every radius; no level: the masks as they are) and whether they are also tried on
    the networks' masks (with each 3-D clean-up)."""

    bands: Sequence[float] = (0.0,)
    rounds: int = 0
    epochs: int = 8
    empty_share: float = 1.0
    volume_cleanups: Sequence[float] = (0.0, 0.1, 0.3, 1.0)
    select_by: str = "mean_dice"
    ensemble: int = 1
    gate: float = 0.0
    redraw_levels: Sequence[float] = ()
    redraw_radii: Sequence[int] = (8,)
    redraw_outputs: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.gate, (int, float)) and 0 <= self.gate <= 1):
            raise PseudoLabelError(f"gate={self.gate!r}: expected a probability in [0, 1] (0: the slice label alone)")
        if len(self.redraw_levels) and not len(self.redraw_radii):
            raise PseudoLabelError("redraw_radii is empty: give at least one radius for the redraw levels")
        self.redraw_levels = [check_redraw(lv, 1)[0] for lv in self.redraw_levels]
        self.redraw_radii = [check_redraw(1, r)[1] for r in self.redraw_radii]
        if not len(self.bands):
            raise PseudoLabelError("bands is empty: give at least one (0 means no uncertain band)")
        self.bands = [check_band(b) for b in self.bands]
        if int(self.rounds) != self.rounds or self.rounds < 0:
            raise PseudoLabelError(f"rounds={self.rounds!r}: expected a whole number >= 0 (0: no self-training)")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise PseudoLabelError(f"epochs={self.epochs!r}: expected a whole number >= 1")
        if not 0 < self.empty_share <= 1:
            raise PseudoLabelError(f"empty_share={self.empty_share!r}: expected a share in (0, 1]")
        if int(self.ensemble) != self.ensemble or self.ensemble < 1:
            raise PseudoLabelError(f"ensemble={self.ensemble!r}: expected a whole number >= 1 (1: one network)")
        if self.select_by not in SELECT_BY:
            raise PseudoLabelError(f"select_by={self.select_by!r}: expected one of {SELECT_BY}")


@dataclass
class SourceStudy:
    """One heatmap source through 07: its 05 setting, a validation row per network trained, the chosen
    row and the chosen network's test study (3-D clean-up chosen on validation)."""

    name: str
    setting: dict
    rows: list[dict]
    chosen: dict
    unet: protocol.UnetStudy | None = None
    redraw: dict = field(default_factory=lambda: {"redraw_level": 0.0, "redraw_radius": 0})
    redraw_rows: list[dict] = field(default_factory=list)  # validation, one per re-draw tried (the CAM's only)


@dataclass
class PseudoStudy:
    """:func:`study_pseudo`'s outcome: per source ('cam', 'random') its study, 05's record, the grid as run
    (``select_by`` and the 3-D clean-ups taken from 05), the test split and 05's test masks."""

    sources: dict[str, SourceStudy]
    dice: dict
    grid: PseudoGrid
    test: protocol.Split
    extra_masks: dict = field(default_factory=dict)  # test masks of 05's CAM setting and U-Net, for figures


def training_inputs(part: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A training split's images and slice labels: all that pseudo-masks may use (its drawn masks are never read)."""
    return part.images, part.manifest["tumour"].to_numpy().astype(bool)


def setting_values(heatmaps, setting: dict, images: np.ndarray, probs: np.ndarray, device=None, heads=None):
    """A 05 setting applied unchanged to other slices: (heatmaps on the setting's scale, its masks)."""
    heads = head_masks(images) if heads is None else heads
    refined, masks = protocol.apply_chosen(heatmaps, setting, images, heads, probs, device)
    return scaled_heatmaps(refined, setting["normalisation"], setting.get("reference")), masks


def redrawn(masks: np.ndarray, images: np.ndarray, heads: np.ndarray, level: float, radius: int) -> np.ndarray:
    """``masks`` re-drawn at ``level`` within ``radius`` px (level 0: as they are)."""
    return redraw(masks, images, heads, level, radius) if level else np.asarray(masks, bool)


def redraws(grid: PseudoGrid) -> list[tuple[float, int]]:
    """(level, radius) of every re-draw the grid tries, after (0, 0): the masks as they are."""
    return [(0.0, 0)] + [(lv, r) for lv in grid.redraw_levels for r in grid.redraw_radii]


def choose_postprocessing(net, norm, val: Dataset, heads: np.ndarray, grid: PseudoGrid,
                          batch_size: int = 32) -> tuple[dict, list[dict]]:
    """A network's 3-D clean-up and (with ``grid.redraw_outputs``) re-draw of its masks, chosen together on
    validation by ``grid.select_by``: (the best row, one row per pair). Ties keep the first listed: the
    smallest clean-up fraction as 05 lists them, then no re-draw."""
    masks = predict_masks(net, norm, val.images, batch_size)
    gt, patients = np.asarray(val.masks), val.manifest["patient"].to_numpy()
    outputs = redraws(grid) if grid.redraw_outputs else [(0.0, 0)]
    rows = []
    for f in grid.volume_cleanups:
        kept = keep_volume_components(masks, val.manifest["case"], val.manifest["slice"], f)
        for level, radius in outputs:
            sc = score_masks(redrawn(kept, val.images, heads, level, radius), gt, patients, n_boot=1)
            rows.append({"volume_cleanup": float(f), "output_redraw_level": level, "output_redraw_radius": radius,
                         "mean_dice": sc["mean_dice"], "patient_dice": sc["patient_dice"], "fp_area": sc["fp_area"]})
    return max(rows, key=lambda r: r[grid.select_by]), rows


def study_network(net, norm, val: Dataset, test: protocol.Split, heads: np.ndarray, grid: PseudoGrid,
                  n_boot: int = 1000, seed: int = 0, batch_size: int = 32) -> protocol.UnetStudy:
    """A network's post-processing chosen on validation (:func:`choose_postprocessing`; ``heads``: the
    validation slices'), applied to test and scored, as :func:`.protocol.study_unet` does for 05's U-Net."""
    chosen, rows = choose_postprocessing(net, norm, val, heads, grid, batch_size)
    masks = network_masks(net, norm, test.part, chosen["volume_cleanup"], chosen["output_redraw_level"],
                          chosen["output_redraw_radius"], test.heads, batch_size)
    return protocol.UnetStudy(chosen, rows, masks, score_masks(masks, test.gt, test.patients, n_boot, seed))


def choose_redraw(masks: np.ndarray, val: Dataset, heads: np.ndarray, grid: PseudoGrid) -> tuple[dict, list[dict]]:
    """Validation masks (bool N x H x W, a 05 setting's) as they are and under every re-draw of ``grid``,
    scored against the drawn masks: (the row best by ``grid.select_by``, every row). Level 0 is the masks
    as they are, listed first, so a tie keeps them."""
    gt, patients = np.asarray(val.masks), val.manifest["patient"].to_numpy()
    rows = []
    for level, radius in redraws(grid):
        choice = {"redraw_level": level, "redraw_radius": radius}
        sc = score_masks(redrawn(masks, val.images, heads, level, radius), gt, patients, n_boot=1)  # point estimates
        rows.append({**choice, "val_mean_dice": sc["mean_dice"], "val_patient_dice": sc["patient_dice"],
                     "val_fp_area": sc["fp_area"]})
    return max(rows, key=lambda r: r[f"val_{grid.select_by}"]), rows


def _row(net, norm, val: Dataset, grid: PseudoGrid, band: float, rnd: int, targets, ckpts: list[dict],
         paths: list[str]) -> dict:
    """A candidate's validation row (its post-processing chosen on validation); ``paths``: its networks."""
    chosen, _ = choose_postprocessing(net, norm, val, head_masks(val.images), grid)
    return {"band": band, "round": rnd, "networks": len(paths), "best_epoch": ckpts[0]["best"]["epoch"],
            "val_mean_dice": chosen["mean_dice"], "val_patient_dice": chosen["patient_dice"],
            "val_fp_area": chosen["fp_area"], **{k: chosen[k] for k in POSTPROCESSING}, **targets.shares(),
            "train_seconds": sum(c["history"][-1]["seconds"] for c in ckpts), "network": paths[0], "members": paths}


def _train(images, targets, val: Dataset, out_dir: Path, grid: PseudoGrid, band: float, rnd: int, **train_kw):
    net, norm, ck = train_on_targets(images, targets, val, out_dir, grid.epochs, empty_share=grid.empty_share,
                                     **train_kw)
    return _row(net, norm, val, grid, band, rnd, targets, [ck], [str(out_dir / "best.pt")]), (net, norm, ck)


def study_source(name: str, values: np.ndarray, masks: np.ndarray, images: np.ndarray, keep: np.ndarray,
                 val: Dataset, out_dir: str | Path, grid: PseudoGrid, choose: bool = True, predict_batch: int = 32,
                 **train_kw) -> SourceStudy:
    """Train on the pseudo-masks of every band, self-train the best band ``grid.rounds`` times, average
    ``grid.ensemble`` networks on the best targets, choose.

    ``values``/``masks``: the training slices' heatmaps on their setting's scale and its masks;
    ``keep``: :func:`.pseudo_labels.kept_slices`. ``choose`` False takes the last candidate (the control,
    trained with knobs chosen for the CAM: its ensemble is built on its last targets).
    ``train_kw`` go to :func:`.pseudo_labels.train_on_targets`."""
    out_dir, key = Path(out_dir), f"val_{grid.select_by}"
    rows, nets, targets = [], {}, {}
    for band in grid.bands:
        targets[band, 0] = band_targets(values, masks, keep, band)
        row, nets[band, 0] = _train(images, targets[band, 0], val, out_dir / name / f"band{band:g}_round0", grid, band,
                                    0, **train_kw)
        rows.append(row)
    band = max(rows, key=lambda r: r[key])["band"]  # max keeps the first of equals
    for rnd in range(1, grid.rounds + 1):
        targets[band, rnd] = self_training_targets(probability_maps(*nets[band, rnd - 1][:2], images, predict_batch),
                                                   keep, band)
        row, nets[band, rnd] = _train(images, targets[band, rnd], val, out_dir / name / f"band{band:g}_round{rnd}",
                                      grid, band, rnd, **train_kw)
        rows.append(row)
    if grid.ensemble > 1:
        best = max(rows, key=lambda r: r[key]) if choose else rows[-1]
        b, r, seed = best["band"], best["round"], train_kw.pop("seed", 0)
        members, paths = [nets[b, r]], [best["network"]]
        for k in range(1, grid.ensemble):
            folder = out_dir / name / f"band{b:g}_round{r}_seed{seed + k}"
            members.append(train_on_targets(images, targets[b, r], val, folder, grid.epochs,
                                            empty_share=grid.empty_share, seed=seed + k, **train_kw))
            paths.append(str(folder / "best.pt"))
        net, norm = as_ensemble([(m, n) for m, n, _ in members], paths)
        rows.append(_row(net, norm, val, grid, b, r, targets[b, r], [c for _, _, c in members], paths))
    chosen = max(rows, key=lambda r: r[key]) if choose else rows[-1]
    return SourceStudy(name, {}, rows, chosen)


def study_pseudo(run_dir: str | Path, grid: PseudoGrid, control: bool = True, batch_size: int = 32,
                 device: str = "auto", seed: int = 0, n_boot: int = 1000, resume: bool = True,
                 progress: bool = True, models_dir: str | Path | None = None) -> PseudoStudy:
    """Notebook 07 on a run folder finished through 05: pseudo-masks of the training split from 05's chosen
    CAM setting (and, with ``control``, from its random-heatmap setting), U-Nets trained on them, scored on test.

    The networks go to ``models_dir`` (default ``run_dir/models/pseudo``; elsewhere leaves the run's own
    untouched, as ``benchmarks/bench_pseudo.py`` does)."""
    run_dir = Path(run_dir)
    dice_path = run_dir / "metrics" / "05_dice.json"
    if not dice_path.is_file():
        raise PseudoLabelError(f"{dice_path} is missing: run the pipeline through notebook 05 first")
    dice = read_json(dice_path)
    fractions = [r["volume_cleanup"] for r in dice.get("unet_val_volume_cleanups") or []]
    grid = replace(grid, select_by=dice.get("select_by", grid.select_by),
                   volume_cleanups=fractions or list(grid.volume_cleanups))  # as 05 chose for its U-Net
    ds = load_dataset(run_dir / "data", mmap=True)
    images, labels = training_inputs(ds.split("train"))
    va, te = ds.split("val"), ds.split("test")
    test, dev = protocol.Split.of(te), resolve_device(device)
    best = dice["best_cam"]
    ckpt = run_dir / "models" / best["arch"] / "best.pt"
    pred = pd.read_csv(run_dir / "models" / best["arch"] / "predictions.csv")
    p_train, p_val, p_test = (pred.loc[pred.split == s, "prob"].to_numpy() for s in ("train", "val", "test"))
    keep = kept_slices(labels, p_train, grid.gate)
    heads = head_masks(images)
    recipe = load_torch(run_dir / "models" / "unet" / "best.pt", "U-Net checkpoint")["config"]  # 05's U-Net
    train_kw = {"batch_size": recipe["batch_size"], "lr": recipe["lr"], "width": recipe["width"], "seed": seed,
                "device": device, "resume": resume, "progress": progress}
    settings = {"cam": best, **({"random": dice["random_baseline"]} if control and dice.get("random_baseline") else {})}
    sources = {}
    for name, setting in settings.items():
        layer = setting["layer"] if setting["layer"] != "-" else "last"  # baselines do not depend on the layer

        def heatmaps(part: np.ndarray, split: str):
            return heatmap_cache.cached_heatmaps(run_dir, ckpt, part, split, setting["method"], layer,
                                                 setting.get("fuse", "mean"), batch_size, dev,
                                                 seed=int(setting.get("seed", 0)), progress=progress)
        if name == "cam":
            choice, redraw_rows = {"redraw_level": 0.0, "redraw_radius": 0}, []
            if grid.redraw_levels:  # chosen on validation: 05's masks there against the drawn masks
                val_heads = head_masks(va.images)
                _, val_masks = setting_values(heatmaps(va.images, "val"), setting, va.images, p_val, dev, val_heads)
                choice, redraw_rows = choose_redraw(val_masks, va, val_heads, grid)
                choice = {k: choice[k] for k in ("redraw_level", "redraw_radius")}
                del val_masks
        else:  # the control follows the CAM's choices
            choice, redraw_rows = sources["cam"].redraw, []
        values, masks = setting_values(heatmaps(images, "train"), setting, images, p_train, dev, heads)
        masks = redrawn(masks, images, heads, choice["redraw_level"], choice["redraw_radius"])
        c = sources["cam"].chosen if name != "cam" else {}
        g = grid if name == "cam" else replace(grid, bands=[c["band"]], rounds=c["round"], ensemble=c["networks"])
        s = study_source(name, values, masks, images, keep, va, Path(models_dir or run_dir / "models" / "pseudo"), g,
                         choose=name == "cam", predict_batch=batch_size, **train_kw)
        s.redraw, s.redraw_rows = choice, redraw_rows
        del values, masks
        net, norm, _ = load_networks(s.chosen["members"], dev)
        s.setting, s.unet = setting, study_network(net, norm, va, test, head_masks(va.images), grid, n_boot, seed,
                                                   batch_size)
        sources[name] = s
    hm = heatmap_cache.cached_heatmaps(run_dir, ckpt, te.images, "test", best["method"], best["layer"],
                                       best.get("fuse", "mean"), batch_size, dev, seed=int(best.get("seed", 0)),
                                       progress=progress)
    extra = {"cam": protocol.apply_chosen(hm, best, te.images, test.heads, p_test, dev)[1]}
    net, unorm, _ = load_unet(run_dir / "models" / "unet" / "best.pt", dev)
    extra["unet"] = predict_volumes(net, unorm, te, float(dice.get("unet_volume_cleanup") or 0), batch_size)
    return PseudoStudy(sources, dice, grid, test, extra)


def redraw_text(choice: dict, prefix: str = "") -> str:
    """', re-drawn at level L within R px' for a re-draw (keys ``prefix`` + 'redraw_level' and
    'redraw_radius'), nothing for the masks as they are."""
    if not choice.get(prefix + "redraw_level"):
        return ""
    return f", re-drawn at level {choice[prefix + 'redraw_level']:g} within {choice[prefix + 'redraw_radius']} px"


COLUMNS = ["masks", "source", "val_mean_dice", "val_patient_dice", "mean_dice", "mean_dice_ci", "patient_dice",
           "patient_dice_ci", "two_class_dice", "fp_area", "redraw_level", "redraw_radius", "band", "round", "networks",
           "best_epoch", "volume_cleanup", "output_redraw_level", "output_redraw_radius"]


def source_name(setting: dict) -> str:
    if setting.get("layer") in (None, "-"):
        return f"{setting['method']} heatmap"
    return f"{setting['arch']} {setting['method']} @ {setting['layer']}" + (
        " + guided" if setting.get("refinement") == "guided" else "")


def results_table(study: PseudoStudy) -> pd.DataFrame:
    """The test table: each pseudo-label U-Net beside the masks it learned from, and 05's supervised U-Net."""
    d, rows = study.dice, []
    score_keys = ["mean_dice", "mean_dice_ci", "patient_dice", "patient_dice_ci", "two_class_dice", "fp_area"]
    for name, s in study.sources.items():
        c = s.chosen
        rows.append({"masks": SOURCES[name], "source": source_name(s.setting), "val_mean_dice": c["val_mean_dice"],
                     "val_patient_dice": c["val_patient_dice"], **{k: s.unet.scores[k] for k in score_keys},
                     **s.redraw, "band": c["band"], "round": c["round"], "networks": c["networks"], "best_epoch": c["best_epoch"],
                     **{k: s.unet.chosen[k] for k in POSTPROCESSING}})
        what = "CAM masks it learned from (05)" if name == "cam" else "random-heatmap masks (05)"
        rows.append({"masks": what, "source": source_name(s.setting), "val_mean_dice": s.setting["val_mean_dice"],
                     "val_patient_dice": s.setting["val_patient_dice"], **{k: s.setting[k] for k in score_keys}})
    rows.insert(2, {"masks": "U-Net, supervised (05)", "source": "drawn masks", **supervised_row(d)})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def test_counts(study: PseudoStudy) -> pd.DataFrame:
    """Per-slice counts (:mod:`.paired`) of the test masks 07 compares: the pseudo-label U-Net, the CAM masks
    it learned from, 05's supervised U-Net and the random-heatmap control (when the study has one).

    07 writes them to ``metrics/07_test_counts.csv``; a cross-validation pools them over folds
    (:mod:`.crossval`) as it pools 05's."""
    masks = {PSEUDO: study.sources["cam"].unet.masks, CAM_MASKS: study.extra_masks.get("cam"),
             UNET: study.extra_masks.get("unet")}
    if "random" in study.sources:
        masks[CONTROL] = study.sources["random"].unet.masks
    return paired.split_counts(masks, study.test)


def paired_comparisons(counts: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The pseudo-label U-Net against the CAM masks it learned from, the supervised U-Net and its random-heatmap
    control, as differences per test patient with patient-bootstrap CIs (:mod:`.paired`), from
    :func:`test_counts`; a comparison whose masks the study lacks (no control) is left out."""
    have = set(counts.setting)
    return paired.compare(counts, [p for p in PAIRS if {p[1], p[2]} <= have], n_boot, seed)


def supervised_row(dice: dict) -> dict:
    """05's U-Net: its test scores with its validation scores at the 3-D clean-up 05 chose."""
    cleanup = float(dice.get("unet_volume_cleanup") or 0)
    val = [r for r in dice.get("unet_val_volume_cleanups") or [] if float(r["volume_cleanup"]) == cleanup]
    return {**({"val_mean_dice": val[0]["mean_dice"], "val_patient_dice": val[0]["patient_dice"]} if val else {}),
            **dice["unet"], "volume_cleanup": cleanup}


def grid_records(study: PseudoStudy, run_dir: str | Path | None = None) -> list[dict]:
    """One validation row per candidate (a network, or the mean of several) of every source; paths relative
    to ``run_dir`` when given, and the members of an ensemble joined by ';' (a row of a CSV file)."""
    def rel(path: str) -> str:
        return str(Path(path).relative_to(run_dir)) if run_dir is not None else path

    return [dict(r, source=name, network=rel(r["network"]), members=";".join(rel(m) for m in r["members"]))
            for name, s in study.sources.items() for r in s.rows]


COUNTS = ("round", "networks", "best_epoch", "redraw_radius", "output_redraw_radius")  # whole numbers in a record


def table_records(table: pd.DataFrame) -> list[dict]:
    """Rows of a table as JSON records: a value a row lacks is left out, counts stay whole numbers."""
    out = []
    for r in table.to_dict(orient="records"):
        r = {k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))}
        out.append({k: int(v) if k in COUNTS else v for k, v in r.items()})
    return out


def pseudo_record(study: PseudoStudy, table: pd.DataFrame, n_boot: int, run_dir: str | Path, seconds: float,
                  pairs: pd.DataFrame | None = None) -> dict:
    """What ``metrics/07_pseudo_labels.json`` holds: the choices, the chosen networks' test scores beside
    05's CAM masks and U-Net, every validation row, and the tables (the pipeline adds the provenance);
    ``pairs``: :func:`paired_comparisons`."""
    run_dir, grid = Path(run_dir), study.grid
    cam = study.sources["cam"]
    u = supervised_row(study.dice)

    def entry(s: SourceStudy) -> dict:
        paths = [Path(m) for m in s.chosen["members"]]
        return {**s.unet.scores, **s.redraw, **{k: s.chosen[k] for k in ("band", "round", "networks", "best_epoch",
                                                                         "val_mean_dice", "val_patient_dice")},
                **{k: s.unet.chosen[k] for k in POSTPROCESSING}, "source": source_name(s.setting),
                # the first network alone, and every network the prediction averages (the first among them)
                "network": str(paths[0].relative_to(run_dir)), "network_sha256": file_sha256(paths[0]),
                "members": [{"network": str(m.relative_to(run_dir)), "network_sha256": file_sha256(m)} for m in paths]}

    p = entry(cam)
    grid_rows = grid_records(study, run_dir)
    return {
        "select_by": grid.select_by,
        "summary": (f"U-Nets trained on pseudo-masks of the training split (no drawn training mask); re-draw, band, "
                    f"round, networks averaged and post-processing chosen on validation by {grid.select_by}, best "
                    f"epoch of {grid.epochs} by validation mean-Dice; test split, 95 % CIs by patient bootstrap "
                    f"({n_boot}). Pseudo-masks from {p['source']}{redraw_text(cam.redraw)}, classifier gate "
                    f"{grid.gate:g}: band {p['band']:g}, round {p['round']}, {p['networks']} network(s), 3-D clean-up "
                    f"{p['volume_cleanup']:g}{redraw_text(p, 'output_')}; test mean-Dice {p['mean_dice']:.3f}, "
                    f"patient Dice {p['patient_dice']:.3f}; its CAM masks {cam.setting['mean_dice']:.3f} / "
                    f"{cam.setting['patient_dice']:.3f}; supervised U-Net {u['mean_dice']:.3f} / {u['patient_dice']:.3f}."),
        "pseudo": p, "control": entry(study.sources["random"]) if "random" in study.sources else None,
        "cam": cam.setting, "unet": u, "random_baseline": study.dice.get("random_baseline"),
        "grid": {"bands": list(grid.bands), "rounds": int(grid.rounds), "epochs": int(grid.epochs),
                 "empty_share": float(grid.empty_share), "ensemble": int(grid.ensemble),
                 "volume_cleanups": list(grid.volume_cleanups), "gate": float(grid.gate),
                 "redraw_levels": list(grid.redraw_levels), "redraw_radii": list(grid.redraw_radii),
                 "redraw_outputs": bool(grid.redraw_outputs)},
        "redraw": cam.redraw, "val_redraws": cam.redraw_rows,
        "val_grid": grid_rows, "classifier_sha256": study.dice.get("classifier_sha256"), "seconds": seconds,
        "tables": {TABLE: table_records(table), GRID_TABLE: grid_rows,
                   **({REDRAW_TABLE: cam.redraw_rows} if cam.redraw_rows else {}),
                   **({PAIRED_TABLE: pairs.to_dict(orient="records")} if pairs is not None and len(pairs) else {})},
    }
