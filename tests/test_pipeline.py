"""End to end: the smoke preset through every notebook under papermill."""

import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from camseg_utils import paired, pipeline, pseudo_study, report
from camseg_utils.io import file_sha256


def _in_range(x, lo=0.0, hi=1.0):
    return isinstance(x, (int, float)) and not math.isnan(x) and lo <= x <= hi


def test_smoke_run_writes_every_output(smoke_run):
    run_dir, fig = smoke_run
    for stage in pipeline.STAGES:
        assert (run_dir / "notebooks" / f"{stage}.ipynb").exists()
        assert (run_dir / "stages" / f"{stage}.json").exists()
    for name in ("01_data", "02_train", "03_gradcam", "05_dice", "06_filtered_retrain", "07_pseudo_labels"):
        assert (run_dir / "metrics" / f"{name}.json").exists(), name
    clf = json.loads((run_dir / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"][0]
    assert all(_in_range(clf[k]) for k in ("test_accuracy", "test_auc", "test_sensitivity", "test_specificity"))
    dice = json.loads((run_dir / "metrics" / "05_dice.json").read_text())
    rows = dice["tables"]["Segmentation (test split)"]
    assert {r["method"] for r in rows} >= {"gradcam", "layercam", "random", "sobel"}
    assert any(r["arch"].startswith("U-Net") for r in rows)
    # each (model, method, layer) scored with the heatmap alone and with the guided refinement
    cam = [r for r in rows if not r["arch"].startswith("U-Net")]
    assert {r["refinement"] for r in cam} == {"none", "guided"}
    assert all((r["guided_radius"] == 0) == (r["refinement"] == "none") for r in cam)
    # chosen on validation: each row's validation score is the best of its sweep (every knob, one refinement)
    sweep = pd.read_csv(run_dir / "metrics" / "05_val_sweep.csv")
    first_layer = pipeline.load_preset("smoke")["common"]["layers"][0]  # where the layer-free baselines are swept
    for r in cam:
        mine = sweep[(sweep.arch == r["arch"]) & (sweep.method == r["method"]) & (sweep.refinement == r["refinement"])
                     & (sweep.layer == (first_layer if r["layer"] == "-" else r["layer"]))]
        assert len(mine) and r["val_mean_dice"] == pytest.approx(mine.mean_dice.max(), rel=1e-12), r
    unet_row = next(r for r in rows if r["arch"].startswith("U-Net"))
    assert unet_row["val_mean_dice"] == max(v["mean_dice"] for v in dice["unet_val_volume_cleanups"])
    for r in rows:
        lo, hi = r["mean_dice_ci"]
        assert lo <= r["mean_dice"] + 1e-9 and r["mean_dice"] <= hi + 1e-9
    # paired comparisons: from the per-slice counts 05 wrote, the chosen CAM against the random heatmap and U-Net
    pairs = pd.DataFrame(dice["tables"]["Paired comparisons (test split, a - b per patient)"])
    counts = pd.read_csv(run_dir / "metrics" / "05_test_counts.csv")
    best = dice["best_cam"]
    name = paired.setting_name(best["arch"], best["method"], best["layer"], best["refinement"])
    assert {"CAM vs random heatmap", "U-Net vs CAM", "guided vs none"} <= set(pairs.comparison)
    for r in pairs.itertuples():
        assert r.difference == pytest.approx(paired.paired(counts, r.a, r.b, r.metric, n_boot=10)["difference"])
    assert paired.scores(counts, name)["mean_dice"] == pytest.approx(best["mean_dice"])
    assert paired.scores(counts, "U-Net")["patient_dice"] == pytest.approx(dice["unet"]["patient_dice"])
    retrain = json.loads((run_dir / "metrics" / "06_filtered_retrain.json").read_text())
    res = pd.DataFrame(retrain["results"])
    assert set(res["heatmap"]) == {"none", "layercam", "layercam + guided r=2", "random"}  # 05 chose r = 2
    assert set(res["filter"]) == {"none", "keep_hot", "keep_dark", "keep", "remove"}
    assert set(res.loc[res["filter"].isin(["keep", "remove"]), "imputation"]) == {"mean", "nli"}
    assert (res["seeds"] == 2).all() and res["auc"].between(0, 1).all()
    cams_ = res[res.heatmap.str.startswith("layercam")]
    assert cams_["shape_auc"].between(0, 1).all()  # every filter of a CAM has its shape-only control
    assert cams_.loc[cams_.imputation != "nli", "original_auc"].between(0, 1).all()
    assert len(retrain["verdicts"]) == 4  # two claims x (the CAM, its refinement)
    assert {v["verdict"] for v in retrain["verdicts"]} <= {"supported", "not supported", "inconclusive",
                                                          "confounded by the heatmap's shape"}
    _check_pseudo_labels(run_dir, dice)
    for f in ("01_samples.png", "02_roc.png", "03_methods_small_cnn_middle.png", "04_threshold_layercam.png",
              "05_dice_vs_threshold.png", "05_unet_vs_cam.png", "05_paired.png", "06_accuracy_vs_k.png", "07_pseudo_vs_unet.png"):
        assert (fig / f).stat().st_size > 1000, f
    md = (run_dir / "report.md").read_text()
    assert "Segmentation (test split)" in md and "Classifiers (test split)" in md
    assert "Verdicts per claim and test" in md and "shape only" in md
    assert "Weakly supervised segmentation (test split)" in md
    # heatmap caches were written completely
    assert not list((run_dir / "heatmaps").rglob(".*"))


def _check_pseudo_labels(run_dir, dice):
    """Notebook 07: its table beside 05's rows, the choice on validation, the control's knobs, its networks."""
    weak = json.loads((run_dir / "metrics" / "07_pseudo_labels.json").read_text())
    rows = {r["masks"]: r for r in weak["tables"]["Weakly supervised segmentation (test split)"]}
    assert rows["U-Net on CAM pseudo-masks (weakly supervised)"]["mean_dice"] == weak["pseudo"]["mean_dice"]
    assert rows["CAM masks it learned from (05)"]["mean_dice"] == dice["best_cam"]["mean_dice"]
    assert rows["U-Net, supervised (05)"]["patient_dice"] == dice["unet"]["patient_dice"]
    assert rows["U-Net on random-heatmap masks (control)"]["mean_dice"] == weak["control"]["mean_dice"]
    # the per-slice counts 07 wrote (pooled by a cross-validation) give its numbers back
    counts = pd.read_csv(run_dir / "metrics" / "07_test_counts.csv")
    assert paired.scores(counts, pseudo_study.PSEUDO)["patient_dice"] == pytest.approx(weak["pseudo"]["patient_dice"])
    assert paired.scores(counts, pseudo_study.CONTROL)["mean_dice"] == pytest.approx(weak["control"]["mean_dice"])
    grid = pd.DataFrame(weak["val_grid"])
    cam, ctrl = grid[grid.source == "cam"], grid[grid.source == "random"]
    knobs = pipeline.load_preset("smoke")["notebooks"]["07_pseudo_labels"]
    # one row per network trained, then the mean of the ensemble's networks on the best targets so far
    assert knobs["ensemble"] == 2 and list(cam.networks) == [1] * (len(knobs["bands"]) + knobs["rounds"]) + [2]
    assert set(cam.band) >= set(knobs["bands"])
    single = cam[cam.networks == 1]
    first = single[single["round"] == 0]  # self-training goes on with the band best at round 0
    assert set(single.loc[single["round"] > 0, "band"]) == {first.band.iloc[first.val_mean_dice.to_numpy().argmax()]}
    best = single.iloc[single.val_mean_dice.to_numpy().argmax()]
    assert (cam.band.iloc[-1], cam["round"].iloc[-1]) == (best.band, best["round"])
    assert cam.members.iloc[-1].split(";")[0] == best.network
    assert weak["pseudo"]["val_mean_dice"] == cam.val_mean_dice.max()
    # the control: the chosen band's rounds, then the mean of as many networks as the choice took
    n = weak["pseudo"]["networks"]
    assert set(ctrl.band) == {weak["pseudo"]["band"]} and list(ctrl.networks) == [1] * (weak["pseudo"]["round"] + 1) + (
        [n] if n > 1 else [])
    assert list(ctrl.loc[ctrl.networks == 1, "round"]) == list(range(weak["pseudo"]["round"] + 1))
    assert (weak["control"]["round"], weak["control"]["networks"]) == (weak["pseudo"]["round"], n)
    for r in (weak["pseudo"], weak["control"]):
        lo, hi = r["mean_dice_ci"]
        assert lo <= r["mean_dice"] + 1e-9 and r["mean_dice"] <= hi + 1e-9
        assert len(r["members"]) == r["networks"] and r["members"][0]["network"] == r["network"]
        assert all(file_sha256(run_dir / m["network"]) == m["network_sha256"] for m in r["members"])
    # the paired comparisons compare the very masks the table scores: each side's value is that row's number
    pairs = {(r["comparison"], r["metric"]): r for r in weak["tables"]["Paired comparisons (test split, a - b per patient)"]}
    assert {c for c, _ in pairs} == {"pseudo-label U-Net vs its CAM masks", "supervised vs pseudo-label U-Net",
                                     "pseudo-label U-Net vs its control"}
    for metric in ("mean_dice", "patient_dice"):
        vs_cam, vs_unet = pairs["pseudo-label U-Net vs its CAM masks", metric], pairs["supervised vs pseudo-label U-Net", metric]
        assert vs_cam["a_value"] == pytest.approx(weak["pseudo"][metric]) and vs_unet["b_value"] == pytest.approx(weak["pseudo"][metric])
        assert vs_cam["b_value"] == pytest.approx(dice["best_cam"][metric])
        assert vs_unet["a_value"] == pytest.approx(dice["unet"][metric])
        assert pairs["pseudo-label U-Net vs its control", metric]["b_value"] == pytest.approx(weak["control"][metric])
    assert weak["provenance"]["preset"] == "smoke"


def test_a_finished_run_resumes_skipping_every_stage_even_when_copied(smoke_run, tmp_path, capsys):
    # on a copy: the shared smoke folder is read by other tests meanwhile (make test runs modules side by side),
    # and the key leaves out where the folder is, so the copy resumes as the original would
    run_dir, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    last = copy / "stages" / f"{pipeline.STAGES[-1]}.json"
    before = last.read_text()
    pipeline.run("smoke", run_dir=copy, figures_dir=tmp_path / "fig", progress=False)
    assert capsys.readouterr().out.count("up to date, skipped") == len(pipeline.STAGES)
    assert last.read_text() == before
    # a changed parameter still re-runs the stage it touches (stopping there keeps the test short)
    pipeline.run("smoke", {"01_data.seed": 1}, run_dir=copy, figures_dir=tmp_path / "fig", progress=False,
                 stop="01_data")
    assert "[01_data] done" in capsys.readouterr().out


def test_same_seed_same_metrics(smoke_run, tmp_path):
    """Two runs of the same preset and seed on the CPU give identical metrics (timings aside)."""
    run_dir, _ = smoke_run
    again = pipeline.run("smoke", run_dir=tmp_path / "run", figures_dir=tmp_path / "fig", progress=False, stop="05_dice")
    for f in ("02_per_patient.csv", "05_dice_table.csv", "05_val_sweep.csv"):
        assert (run_dir / "metrics" / f).read_text() == (again / "metrics" / f).read_text(), f
    a = json.loads((run_dir / "metrics" / "02_train.json").read_text())
    b = json.loads((again / "metrics" / "02_train.json").read_text())
    drop = lambda t: [{k: v for k, v in r.items() if k != "train_seconds"} for r in t["tables"]["Classifiers (test split)"]]  # noqa: E731
    assert drop(a) == drop(b)


def test_failing_notebook_stops_with_a_message_and_keeps_the_notebook(tmp_path, capsys):
    code = pipeline.main(["--preset", "smoke", "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f"),
                          "--to", "02_train", "-p", "02_train.architectures=[alexnet]"])
    err = capsys.readouterr().err
    assert code == 1
    assert "[02_train] failed in cell" in err and "unknown architecture 'alexnet'" in err
    kept = nbformat.read(tmp_path / "run" / "notebooks" / "02_train.ipynb", as_version=4)
    assert any(o.get("ename") == "ModelError" for c in kept.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert json.loads((tmp_path / "run" / "stages" / "02_train.json").read_text())["status"] == "running"
    # fixing the parameter resumes: 01 is not run again
    code = pipeline.main(["--preset", "smoke", "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f"),
                          "--to", "02_train"])
    out = capsys.readouterr().out
    assert code == 0 and "[01_data] up to date, skipped" in out and "[02_train] done" in out


def test_unknown_preset_and_bad_override():
    with pytest.raises(pipeline.PipelineError, match="known presets: .*smoke"):
        pipeline.load_preset("nope")
    with pytest.raises(pipeline.PipelineError, match="expected key=value"):
        pipeline.parse_overrides(["epochs"])


def test_report_tables_render():
    md = report.markdown_table([{"a": 1, "b": 0.12345, "c": [0.1, 0.2]}, {"a": 2, "b": float("nan")}])
    assert "| a | b | c |" in md and "0.123" in md and "[0.100, 0.200]" in md and "n/a" in md


# ------------------------------------------------------------------ evaluate: external cohorts

from camseg_utils import data, evaluate  # noqa: E402


def test_evaluate_on_new_synthetic_patients_gives_a_complete_report(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    other = data.generate_synthetic(n_patients=4, size=64, seed=99)  # other patients, another size
    data.write_kaggle_layout(other, tmp_path / "cohort")
    r = evaluate.evaluate(run_dir, tmp_path / "cohort", tmp_path / "out", device="cpu", n_boot=100, progress=False)
    assert r["slices"] == len(other) and r["slices_with_mask"] == len(other)
    assert r["resized_from"] == [64] and r["image_size"] == 48
    assert 0 <= r["classification"]["accuracy"] <= 1
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    # the reported mean-Dice is that of the masks written out, over the slices whose mask shows tumour
    from PIL import Image

    tumour = np.array([np.asarray(Image.open(Path(p) if Path(p).is_absolute() else tmp_path / "cohort" / p)).any()
                       for p in pred["mask_path"]])
    assert 0 < tumour.sum() < len(pred)
    for key in ("cam", "unet", "pseudo"):
        assert r[key]["mean_dice"] == pytest.approx(pred.loc[tumour, f"{key}_dice"].mean(), rel=1e-12), key
    assert r["random_baseline"]["tumour_slices"] == tumour.sum()
    assert len(pred) == len(other) and pred["tumour_probability"].between(0, 1).all()
    assert all((tmp_path / "out" / p).exists() for p in pred["cam_mask"]) and pred["cam_dice"].notna().any()
    assert all((tmp_path / "out" / p).exists() for p in pred["pseudo_mask"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "resized from [64] to 48 x 48" in md and "U-Net (supervised)" in md and str(run_dir) in md
    assert "U-Net on pseudo-masks (weakly supervised)" in md and "models/pseudo/" in md
    assert "guided refinement radius" in md
    # nothing was written into the data folder
    assert not list((tmp_path / "cohort").rglob("*_cam.png"))


def test_evaluate_on_the_runs_own_test_patients_reproduces_notebook_05(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    ds = data.load_dataset(run_dir / "data")
    data.write_kaggle_layout(ds.split("test"), tmp_path / "test")
    r = evaluate.evaluate(run_dir, tmp_path / "test", tmp_path / "out", device="cpu", progress=False)
    chosen = json.loads((run_dir / "metrics" / "05_dice.json").read_text())
    weak = json.loads((run_dir / "metrics" / "07_pseudo_labels.json").read_text())["pseudo"]
    for key in ("mean_dice", "mean_dice_ci", "patient_dice", "two_class_dice", "fp_area"):
        # the same masks; bootstrap sums may add in another order (last-digit rounding only)
        assert r["cam"][key] == pytest.approx(chosen["best_cam"][key], rel=1e-12, abs=1e-15), key
        assert r["unet"][key] == pytest.approx(chosen["unet"][key], rel=1e-12, abs=1e-15), key
        assert r["pseudo"][key] == pytest.approx(weak[key], rel=1e-12, abs=1e-15), key
    assert r["resized_from"] == []
    clf = json.loads((run_dir / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"][0]
    assert r["classification"]["accuracy"] == clf["test_accuracy"] and r["classification"]["auc"] == clf["test_auc"]


def test_evaluate_without_masks_predicts_only(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    data.write_kaggle_layout(data.generate_synthetic(n_patients=3, size=48, seed=5), tmp_path / "new")
    for m in (tmp_path / "new").rglob("*_mask.png"):
        m.unlink()
    r = evaluate.evaluate(run_dir, tmp_path / "new", tmp_path / "out", device="cpu", progress=False)
    assert r["slices_with_mask"] == 0 and "cam" not in r
    assert "predictions only" in (tmp_path / "out" / "report.md").read_text()


def test_evaluate_bad_input(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    (tmp_path / "partial" / "metrics").mkdir(parents=True)
    with pytest.raises(evaluate.RunError, match="incomplete; missing: .*05_dice.json"):
        evaluate.evaluate(tmp_path / "partial", tmp_path)
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["--run", str(run_dir), "--data", str(tmp_path / "empty")]) == 1
    assert "no LGG cases found" in capsys.readouterr().err


def test_evaluate_refuses_a_network_07_did_not_score(tmp_path):
    assert evaluate.pseudo_network(tmp_path) is None  # a run without notebook 07
    net = tmp_path / "models" / "pseudo" / "cam" / "band0_round0" / "best.pt"
    net.parent.mkdir(parents=True)
    net.write_bytes(b"another network")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "07_pseudo_labels.json").write_text(json.dumps(
        {"pseudo": {"network": str(net.relative_to(tmp_path)), "network_sha256": "0" * 64, "volume_cleanup": 0.0}}))
    with pytest.raises(evaluate.RunError, match=r"not the network 07 scored .*--from 07_pseudo_labels"):
        evaluate.pseudo_network(tmp_path)
    # a mean of networks: every one of them must be the one 07 scored, not only the first
    good = {"network": str(net.relative_to(tmp_path)), "network_sha256": file_sha256(net)}
    other = net.parent.parent / "band0_round0_seed1" / "best.pt"
    other.parent.mkdir()
    other.write_bytes(b"a network trained since")
    (tmp_path / "metrics" / "07_pseudo_labels.json").write_text(json.dumps({"pseudo": {
        **good, "volume_cleanup": 0.0, "members": [good, {"network": str(other.relative_to(tmp_path)),
                                                          "network_sha256": "0" * 64}]}}))
    with pytest.raises(evaluate.RunError, match=r"band0_round0_seed1/best.pt is missing or not the network 07 scored"):
        evaluate.pseudo_network(tmp_path)
