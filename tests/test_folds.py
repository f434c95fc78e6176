"""Cross-validation by patient: fold folders, each patient tested once, numbers pooled over all patients."""

import json
import shutil
import statistics

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from camseg_utils import crossval, data, evaluate, paired, pipeline, pseudo_study, readme_multi, readme_tables, workers
from camseg_utils.params import default_notebook_dir, load_preset

THREADS = max(1, workers.cores() // 2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The smoke study cut to 01, 02 and 05 (05 fills its heatmap cache itself) with 16 patients, and its
    preset: two folds of it take about two minutes."""
    base = tmp_path_factory.mktemp("folds")
    nbs = base / "notebooks"
    nbs.mkdir()
    for stage in ("01_data", "02_train", "05_dice"):
        shutil.copy(default_notebook_dir() / f"{stage}.ipynb", nbs)
    smoke = load_preset("smoke")
    notebooks = {s: smoke["notebooks"][s] for s in ("01_data", "02_train", "05_dice")}
    notebooks["01_data"] = {"n_patients": 16}
    notebooks["02_train"] = {"epochs": 1}
    notebooks["05_dice"] = dict(notebooks["05_dice"], methods=["layercam", "random"], thresholds=[0.5])
    common = {k: v for k, v in smoke["common"].items() if k not in ("interactive", "arch")}
    preset = base / "small.yaml"
    preset.write_text(yaml.safe_dump({"description": "smoke cut to 01, 02, 05", "common": common,
                                      "notebooks": notebooks}))
    return base, nbs, preset


def _main(small, run_dir, *extra):
    base, nbs, preset = small
    return pipeline.main(["--preset", str(preset), "--notebooks", str(nbs), "--run-dir", str(run_dir),
                          "--figures-dir", str(base / "fig" / run_dir.name), "--threads", str(THREADS), *extra])


@pytest.fixture(scope="module")
def cv(small):
    run_dir = small[0] / "cv"
    assert _main(small, run_dir, "--folds", "2") == 0
    return run_dir


def _manifest(run_dir, fold):
    return pd.read_csv(run_dir / f"fold-{fold}" / "data" / "manifest.csv", keep_default_na=False)


def test_each_patient_is_tested_once_and_validation_comes_from_the_other_folds(cv):
    tests = []
    for fold in (0, 1):
        m = _manifest(cv, fold)
        test = set(m.loc[m.split == "test", "patient"])
        assert test and test.isdisjoint(m.loc[m.split != "test", "patient"])
        assert (m.split == "val").any()
        tests.append(test)
    everyone = set(_manifest(cv, 0).patient)
    assert tests[0].isdisjoint(tests[1]) and tests[0] | tests[1] == everyone and len(everyone) == 16
    folds = json.loads((cv / "folds.json").read_text())
    assert folds["folds"] == 2 and folds["fold_overrides"]["1"] == {"01_data.folds": 2, "01_data.fold": 1}


def test_pooled_numbers_equal_a_hand_computation_from_the_fold_files(cv):
    cvj = json.loads((cv / "crossval.json").read_text())
    preds = pd.concat([pd.read_csv(cv / f"fold-{f}" / "models" / "small_cnn" / "predictions.csv") for f in (0, 1)])
    test = preds[preds.split == "test"]
    clf = cvj["classifiers"][0]
    assert clf["auc"] == pytest.approx(roc_auc_score(test.tumour.astype(bool), test.prob))
    assert clf["patients"] == 16 and clf["n"] == len(test)
    assert clf["auc_ci"][0] <= clf["auc"] <= clf["auc_ci"][1]
    dice = [json.loads((cv / f"fold-{f}" / "metrics" / "05_dice.json").read_text()) for f in (0, 1)]
    seg = {s["setting"]: s for s in cvj["segmentation"]}
    for role, entry in (("CAM setting chosen on validation", "best_cam"), ("U-Net", "unet")):
        # mean-Dice: each fold's mean over its tumour slices, weighted by their number
        slices = [d["best_cam"]["tumour_slices"] for d in dice]
        want = sum(d[entry]["mean_dice"] * n for d, n in zip(dice, slices)) / sum(slices)
        assert seg[role]["mean_dice"] == pytest.approx(want), role
        assert seg[role]["patients"] == 16 and seg[role]["folds"] == 2
    # patient Dice: each fold's mean over its patients, weighted by their number (every test patient has
    # tumour or a prediction here, so each has a 3-D Dice)
    counts = [pd.read_csv(cv / f"fold-{f}" / "metrics" / "05_test_counts.csv") for f in (0, 1)]
    n_pat = [c[c.setting == "U-Net"].patient.nunique() for c in counts]
    want = sum(d["unet"]["patient_dice"] * n for d, n in zip(dice, n_pat)) / sum(n_pat)
    assert seg["U-Net"]["patient_dice"] == pytest.approx(want)
    # a pooled paired difference of the same slices is the difference of the pooled means
    row = next(r for r in cvj["paired"] if r["comparison"] == "U-Net vs CAM" and r["metric"] == "mean_dice")
    assert row["difference"] == pytest.approx(seg["U-Net"]["mean_dice"]
                                              - seg["CAM setting chosen on validation"]["mean_dice"])
    assert row["ci"][0] <= row["difference"] <= row["ci"][1] and row["folds"] == 2
    # over folds: the plain mean of the two folds' numbers
    auc = next(n for n in cvj["over_folds"]["numbers"] if n["number"] == "test ROC AUC")
    fold_auc = [json.loads((cv / f"fold-{f}" / "metrics" / "02_train.json").read_text())["tables"]
                ["Classifiers (test split)"][0]["test_auc"] for f in (0, 1)]
    assert auc["mean"] == pytest.approx(statistics.mean(fold_auc)) and auc["sd"] == pytest.approx(statistics.stdev(fold_auc))
    md = (cv / "crossval.md").read_text()
    assert "Paired comparisons (05, 07), pooled" in md and "| fold |" in md and "mean ± sd" in md


def test_07_is_pooled_over_folds_beside_05(smoke_run, tmp_path):
    """Two folds that are one smoke run under two sets of patient names: pooled, 07's networks and paired
    differences are the run's own numbers, over twice the patients."""
    run_dir, _ = smoke_run
    for fold, prefix in ((0, ""), (1, "copy-")):
        metrics = tmp_path / "cv" / f"fold-{fold}" / "metrics"
        metrics.mkdir(parents=True)
        for name in ("05_dice.json", "07_pseudo_labels.json"):
            shutil.copy(run_dir / "metrics" / name, metrics / name)
        for name in ("05_test_counts.csv", "07_test_counts.csv"):
            counts = pd.read_csv(run_dir / "metrics" / name)
            counts.assign(patient=prefix + counts.patient.astype(str)).to_csv(metrics / name, index=False)
    cvj = crossval.crossval(crossval.fold_folders(tmp_path / "cv"), n_boot=50)
    seg = {s["setting"]: s for s in cvj["segmentation"]}
    record = json.loads((run_dir / "metrics" / "07_pseudo_labels.json").read_text())
    n = pd.read_csv(run_dir / "metrics" / "07_test_counts.csv").patient.nunique()
    for role, entry in (("U-Net on CAM pseudo-masks (07)", "pseudo"), ("U-Net on random-heatmap pseudo-masks (07)", "control")):
        for key in ("mean_dice", "patient_dice"):
            assert seg[role][key] == pytest.approx(record[entry][key]), (role, key)
        assert seg[role]["folds"] == 2 and seg[role]["patients"] == 2 * n
    pooled = {(r["comparison"], r["metric"]): r for r in cvj["paired"]}
    own = record["tables"][pseudo_study.PAIRED_TABLE]
    assert own
    for r in own:
        assert pooled[(r["comparison"], r["metric"])]["difference"] == pytest.approx(r["difference"]), r["comparison"]
    assert [r["pseudo-label U-Net mean-Dice"] for r in cvj["per_fold"]] == [record["pseudo"]["mean_dice"]] * 2
    assert "U-Net on CAM pseudo-masks (07)" in crossval.markdown(cvj, "two copies")


def test_a_second_run_resumes_and_folds_side_by_side_split_as_one_by_one(cv, small, tmp_path, capsys):
    assert _main(small, cv, "--folds", "2") == 0
    out = capsys.readouterr().out
    assert out.count("up to date, skipped") == 6 and "running with" not in out
    side = tmp_path / "side"
    assert _main(small, side, "--folds", "2", "--to", "01_data", "--jobs", "2") == 0
    for fold in (0, 1):
        assert _manifest(side, fold).equals(_manifest(cv, fold))


def test_pooling_refuses_folds_that_share_a_patient(cv, tmp_path):
    run = tmp_path / "cv"
    shutil.copytree(cv / "fold-0", run / "fold-0")
    shutil.copytree(cv / "fold-0", run / "fold-1")
    with pytest.raises(crossval.CrossvalError, match="test patient of fold 0 and of fold 1"):
        crossval.write_crossval(run)
    assert crossval.main([str(tmp_path / "empty")]) == 1


def test_bad_fold_options(small, tmp_path, capsys):
    run = tmp_path / "run"
    for extra, message in ((["--folds", "1"], "--folds 1: expected an integer of at least 2"),
                           (["--folds", "2", "-p", "01_data.fold=1"], "-p 01_data.fold: --folds sets"),
                           (["--folds", "2", "--seeds", "0"], "--seeds and --folds together"),
                           (["--jobs", "2"], "give --seeds or --folds too")):
        assert _main(small, run, *extra) == 1
        assert message in capsys.readouterr().err, extra
    (run / "stages").mkdir(parents=True)
    assert _main(small, run, "--folds", "2") == 1
    assert "holds a single run" in capsys.readouterr().err


def test_roles_name_the_settings_of_a_fold():
    dice = {"best_cam": {"arch": "a", "method": "gradcam", "layer": "early", "refinement": "guided"},
            "best_cam_by_refinement": {"none": {"arch": "a", "method": "layercam", "layer": "last", "refinement": "none"}},
            "random_baseline": {"method": "random"}}
    assert crossval.roles(dice) == {
        "CAM setting chosen on validation": "a gradcam @ early + guided",
        "best CAM setting without refinement": "a layercam @ last",
        "random heatmap": "a random + guided",
        "U-Net": "U-Net"}
    assert paired.setting_name("a", "random", "-", "guided", baseline=True) == "a random + guided"


def test_evaluate_applies_one_fold_and_reproduces_its_test_numbers(cv, tmp_path, capsys):
    ds = data.load_dataset(cv / "fold-1" / "data")
    data.write_kaggle_layout(ds.split("test"), tmp_path / "test")
    assert evaluate.main(["--run", str(cv), "--data", str(tmp_path / "test"), "--out", str(tmp_path / "x")]) == 1
    assert "cross-validated run (folds 0, 1): give --fold F" in capsys.readouterr().err
    assert evaluate.main(["--run", str(cv), "--fold", "2", "--data", str(tmp_path / "test")]) == 1
    assert "no fold-2 folder; its folds are 0, 1" in capsys.readouterr().err
    out = tmp_path / "out"
    assert evaluate.main(["--run", str(cv), "--fold", "1", "--data", str(tmp_path / "test"), "--out", str(out),
                          "--device", "cpu"]) == 0
    r = json.loads((out / "metrics.json").read_text())
    best = json.loads((cv / "fold-1" / "metrics" / "05_dice.json").read_text())["best_cam"]
    assert r["cam"]["mean_dice"] == pytest.approx(best["mean_dice"], rel=1e-12)


def test_readme_folds_table_pools_the_folds_beside_their_mean_and_sd(cv, tmp_path):
    md = readme_multi.folds_table(cv)
    preds = pd.concat([pd.read_csv(cv / f"fold-{f}" / "models" / "small_cnn" / "predictions.csv") for f in (0, 1)])
    test = preds[preds.split == "test"]
    fold_auc = [json.loads((cv / f"fold-{f}" / "metrics" / "02_train.json").read_text())["tables"]
                ["Classifiers (test split)"][0]["test_auc"] for f in (0, 1)]
    pooled = roc_auc_score(test.tumour.astype(bool), test.prob)
    lo, hi = json.loads((cv / "crossval.json").read_text())["classifiers"][0]["auc_ci"]
    assert (f"| small_cnn: test ROC AUC | 16 (2 of 2) | {pooled:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{statistics.mean(fold_auc):.3f} ± {statistics.stdev(fold_auc):.3f} |") in md
    dice = [json.loads((cv / f"fold-{f}" / "metrics" / "05_dice.json").read_text()) for f in (0, 1)]
    unet = [d["unet"]["mean_dice"] for d in dice]
    row = next(line for line in md.splitlines() if line.startswith("| U-Net, supervised (reference): mean-Dice |"))
    assert row.endswith(f"| {statistics.mean(unet):.3f} ± {statistics.stdev(unet):.3f} |")
    assert "| U-Net vs CAM | patient_dice | 16 |" in md and "CAM setting chosen on each fold's validation split: fold 0:" in md
    assert "test split" not in md.split("Each patient tested once")[1]  # no one fold's test split as the data line
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:cv:folds -->\nSTALE\n<!-- /table -->\n<!-- table:cv2:folds -->\n<!-- /table -->\n")
    assert readme_tables.update_readme(readme, {"cv": cv, "cv2": tmp_path}) == ["cv:folds", "cv2:folds"]
    text = readme.read_text()
    assert md in text and "STALE" not in text and f"*Not generated: `{tmp_path}` holds no fold-<N> folders.*" in text


def test_the_pooled_auc_interval_resamples_patients_not_slices():
    from camseg_utils.classification import roc_auc_ci

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 6)
    y = rng.random(len(patients)) < 0.4
    p = np.clip(y * 0.3 + rng.random(len(patients)) * 0.7, 0, 1)
    lo, hi = roc_auc_ci(y, p, patients, n_boot=300)
    assert lo < roc_auc_score(y, p) < hi
    # every slice twice, same patients: the same patient draws score the same AUCs, so the same interval
    assert roc_auc_ci(np.tile(y, 2), np.tile(p, 2), np.tile(patients, 2), n_boot=300) == pytest.approx([lo, hi])
    assert roc_auc_ci(y, y.astype(float), patients, n_boot=50) == [1.0, 1.0]  # separated on every draw
    with pytest.raises(ValueError, match="level=95"):
        roc_auc_ci(y, p, patients, level=95)
