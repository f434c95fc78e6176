"""The aggregate over seeds, on hand-made metrics: mean ± sd, per-seed values, winners, verdicts."""

import json
import math

import pytest

from camseg_utils import aggregate
from camseg_utils.io import write_json


def _metrics(auc, dice, winner=("small_cnn", "layercam", "middle", "guided"), radius=2, verdict="supported"):
    arch, method, layer, refinement = winner
    best = {"arch": arch, "method": method, "layer": layer, "refinement": refinement, "mean_dice": dice,
            "patient_dice": dice / 2}
    return {
        "02_train": {"tables": {"Classifiers (test split)": [{"arch": "small_cnn", "test_auc": auc, "test_accuracy": 0.5},
                                                             {"arch": "resnet18", "test_auc": 0.9, "test_accuracy": 0.8}]}},
        "05_dice": {"best_cam": best, "best_cam_by_refinement": {refinement: best},
                    "unet": {"mean_dice": 0.7, "patient_dice": 0.6}, "random_baseline": {"mean_dice": 0.1, "patient_dice": 0.05}},
        "06_filtered_retrain": {
            "results": [{"heatmap": f"layercam + guided r={radius}", "filter": "keep", "k": 10.0, "imputation": "mean",
                         "auc": auc - 0.1, "shape_auc": 0.6, "original_auc": float("nan")}],
            "verdicts": [{"heatmap": f"layercam + guided r={radius}", "claim": "hot areas", "test": "overall",
                          "verdict": verdict}, {"heatmap": "layercam", "claim": "hot areas", "test": "k=10",
                                                "verdict": "not supported"}]},
        "07_pseudo_labels": {"pseudo": {"mean_dice": dice + 0.1, "patient_dice": dice}, "control": {"mean_dice": 0.05},
                             "tables": {"Paired comparisons (test split, a - b per patient)": [
                                 {"comparison": "pseudo-label U-Net vs its CAM masks", "metric": "mean_dice",
                                  "difference": 0.1}]}},
        "03_gradcam": {"seconds": 3.0},  # a stage without headline numbers: read, not aggregated
    }


def _find(agg, number, **what):
    return next(n for n in agg["numbers"] if n["number"] == number and all(n["what"].get(k) == v for k, v in what.items()))


def test_aggregate_of_hand_made_metrics():
    agg = aggregate.aggregate({0: _metrics(0.8, 0.30), 1: _metrics(0.9, 0.50, radius=4),
                               2: _metrics(0.7, 0.40, ("small_cnn", "gradcam", "last", "none"), verdict="inconclusive")})
    auc = _find(agg, "test ROC AUC", arch="small_cnn")
    assert auc["values"] == {"0": 0.8, "1": 0.9, "2": 0.7} and auc["n"] == 3
    assert auc["mean"] == pytest.approx(0.8) and auc["sd"] == pytest.approx(0.1)  # sqrt((0 + .01 + .01) / 2)
    other = _find(agg, "test ROC AUC", arch="resnet18")
    assert other["mean"] == pytest.approx(0.9) and other["sd"] == pytest.approx(0.0, abs=1e-15)
    best = _find(agg, "test mean-Dice", masks="best CAM setting (chosen on validation)")
    assert best["mean"] == pytest.approx(0.4) and best["sd"] == pytest.approx(0.1)
    assert _find(agg, "test patient Dice", masks="best CAM setting (chosen on validation)")["mean"] == pytest.approx(0.2)
    assert _find(agg, "test mean-Dice", masks="U-Net, supervised (reference)")["sd"] == pytest.approx(0.0, abs=1e-15)
    # seed 2's best setting had no refinement: the 'without refinement' number has that seed only
    alone = _find(agg, "test mean-Dice", masks="best CAM setting without refinement")
    assert alone["n"] == 1 and alone["sd"] is None and alone["mean"] == pytest.approx(0.4)
    # the guided radius (chosen per seed) is not part of the heatmap's name: r=2 and r=4 are one reading
    re_auc = _find(agg, "re-trained ROC AUC", heatmap="layercam + guided", filter="keep", k=10.0, fill="mean")
    assert re_auc["n"] == 3 and re_auc["mean"] == pytest.approx(0.7)
    # a reading no seed has (NaN everywhere) is left out
    assert not [n for n in agg["numbers"] if n["number"] == "original classifier ROC AUC"]
    pseudo = _find(agg, "test mean-Dice", masks="U-Net on CAM pseudo-masks (weakly supervised)")
    assert pseudo["stage"] == "07_pseudo_labels" and pseudo["mean"] == pytest.approx(0.5) and pseudo["sd"] == pytest.approx(0.1)
    control = [n for n in agg["numbers"] if n["what"].get("masks", "").endswith("(control)")]
    assert [(n["number"], n["mean"]) for n in control] == [("test mean-Dice", pytest.approx(0.05))]  # no patient Dice
    assert _find(agg, "a - b per patient", comparison="pseudo-label U-Net vs its CAM masks")["stage"] == "07_pseudo_labels"
    assert {n["stage"] for n in agg["numbers"]} == {"02_train", "05_dice", "06_filtered_retrain", "07_pseudo_labels"}
    assert agg["winners"] == [
        {"arch": "small_cnn", "method": "layercam", "layer": "middle", "refinement": "guided", "wins": 2, "seeds": [0, 1]},
        {"arch": "small_cnn", "method": "gradcam", "layer": "last", "refinement": "none", "wins": 1, "seeds": [2]}]
    assert sorted((v["verdict"], v["count"]) for v in agg["verdicts"]) == [("inconclusive", 1), ("supported", 2)]
    md = aggregate.markdown(agg, "hand")
    assert "| small_cnn | 0.800 ± 0.100 | 0.800 / 0.900 / 0.700 | 0.500 ± 0.000 | 0.500 / 0.500 / 0.500 |" in md
    assert "| best CAM setting without refinement | 0.400 (n = 1) | n/a / n/a / 0.400 |" in md
    assert "| small_cnn | layercam | middle | guided | 2 of 3 | 0, 1 |" in md
    json.dumps(agg, allow_nan=False)  # NaN readings are written as null: valid JSON


def test_aggregate_of_a_seed_without_later_stages():
    only_02 = {"02_train": _metrics(0.6, 0.1)["02_train"]}
    agg = aggregate.aggregate({0: _metrics(0.8, 0.3), 3: only_02})
    auc = _find(agg, "test ROC AUC", arch="small_cnn")
    assert auc["n"] == 2 and auc["mean"] == pytest.approx(0.7) and auc["sd"] == pytest.approx(math.sqrt(0.02))
    unet = _find(agg, "test mean-Dice", masks="U-Net, supervised (reference)")
    assert unet["n"] == 1 and unet["values"] == {"0": 0.7, "3": None}


def test_write_aggregate_reads_the_seed_folders(tmp_path, capsys):
    for s, auc in ((0, 0.8), (2, 0.6)):
        for stage, m in _metrics(auc, 0.3).items():
            write_json(tmp_path / f"seed-{s}" / "metrics" / f"{stage}.json", m)
    (tmp_path / "seed-x").mkdir()  # not a seed folder
    assert aggregate.main([str(tmp_path)]) == 0
    agg = json.loads((tmp_path / "aggregate.json").read_text())
    assert agg["seeds"] == [0, 2] and _find(agg, "test ROC AUC", arch="small_cnn")["mean"] == pytest.approx(0.7)
    (tmp_path / "seed-2" / "metrics" / "02_train.json").write_text("{")
    assert aggregate.main([str(tmp_path)]) == 1 and "02_train.json is not valid JSON" in capsys.readouterr().err
    assert aggregate.main([str(tmp_path / "seed-x")]) == 1 and "no seed-<S> folders" in capsys.readouterr().err
