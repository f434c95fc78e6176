"""Runs that can be trusted: nothing stale, nothing silently ignored, every number traceable."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from camseg_utils import data, evaluate, pipeline, train
from camseg_utils import provenance as prov
from camseg_utils.io import UnreadableFileError, read_json

from .conftest import write_case

# ----------------------------------------------------------- nothing ignored


@pytest.mark.parametrize("override, message", [
    ({"05_dice.selct_by": "patient_dice"}, r"05_dice declares no parameter 'selct_by' \(did you mean 'select_by'\?\)"),
    ({"05_dise.select_by": "patient_dice"}, r"unknown stage '05_dise' \(did you mean '05_dice'\?\)"),
    ({"epochz": 5}, r"no notebook declares a parameter 'epochz' \(did you mean 'epochs'\?\)"),
    ({"epochs": "abc"}, r"epochs='abc' \(str\) but notebook 02_train expects int"),
    ({"05_dice.thresholds": [0.5, "high"]}, r"expects a list of float"),
    ({"interactive": 1}, r"interactive=1 \(int\) but notebook 03_gradcam expects bool"),
    ({"run_dir": "/tmp/x"}, r"'run_dir' is set by the pipeline"),
])
def test_bad_overrides_are_refused_before_anything_runs(tmp_path, override, message):
    with pytest.raises(pipeline.PipelineError, match=message):
        pipeline.run("smoke", override, run_dir=tmp_path / "run", figures_dir=tmp_path / "fig", progress=False)
    assert not (tmp_path / "run").exists()


def test_main_exits_non_zero_naming_the_key(tmp_path, capsys):
    code = pipeline.main(["--preset", "smoke", "--run-dir", str(tmp_path / "run"), "-p", "05_dice.selct_by=x"])
    assert code == 1 and "selct_by" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_malformed_yaml_and_stage_order_are_refused(tmp_path):
    with pytest.raises(pipeline.PipelineError, match=r"-p 'layers=\[a': the value is not valid YAML"):
        pipeline.parse_overrides(["layers=[a"])
    with pytest.raises(pipeline.PipelineError, match="--from 05_dice comes after --to 02_train"):
        pipeline.run("smoke", start="05_dice", stop="02_train", run_dir=tmp_path / "run")
    with pytest.raises(pipeline.PipelineError, match=r"--to '02_trian'.*did you mean '02_train'"):
        pipeline.run("smoke", stop="02_trian", run_dir=tmp_path / "run")


def test_bad_presets_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("comon:\n  seed: 1\n")
    with pytest.raises(pipeline.PipelineError, match=r"unknown key 'comon' \(did you mean 'common'\?\)"):
        pipeline.load_preset(str(bad))
    bad.write_text("common:\n  sed: 1\n")
    with pytest.raises(pipeline.PipelineError, match=r"preset bad common: no notebook declares a parameter 'sed'"):
        pipeline.run(str(bad), run_dir=tmp_path / "run")
    bad.write_text("common: [1\n")
    with pytest.raises(pipeline.PipelineError, match="is not valid YAML"):
        pipeline.load_preset(str(bad))


@pytest.mark.parametrize("order", [0, 1])
def test_a_stage_specific_value_beats_a_global_one_whatever_the_order(tmp_path, order):
    items = [("02_train.epochs", 2), ("epochs", 5)]
    overrides = dict(items if order == 0 else items[::-1])
    preset = pipeline.load_preset("smoke")
    declared = pipeline.notebook_parameters(pipeline.default_notebook_dir() / "02_train.ipynb")
    params = pipeline.stage_parameters(preset, "02_train", overrides, declared, tmp_path, tmp_path)
    assert params["epochs"] == 2


def test_lgg_data_folder_from_the_environment_and_a_clear_error_when_missing(tmp_path, lgg_tree, monkeypatch):
    monkeypatch.setenv("CAMSEG_LGG_ROOT", str(lgg_tree))
    preset = pipeline.load_preset("lgg_cpu")
    declared = pipeline.notebook_parameters(pipeline.default_notebook_dir() / "01_data.ipynb")
    assert pipeline.stage_parameters(preset, "01_data", {}, declared, tmp_path, tmp_path)["data_root"] == str(lgg_tree)
    given = pipeline.stage_parameters(preset, "01_data", {"data_root": str(tmp_path)}, declared, tmp_path, tmp_path)
    assert given["data_root"] == str(tmp_path)  # -p beats the environment
    monkeypatch.setenv("CAMSEG_LGG_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(pipeline.PipelineError, match=r"LGG data folder .*nowhere.* does not exist.*kaggle.*CAMSEG_LGG_ROOT"):
        pipeline.run("lgg_cpu", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- nothing stale


def test_each_stage_is_keyed_by_the_package_modules_it_imports():
    nb_dir = pipeline.default_notebook_dir()

    def files(stage):
        nb = json.loads((nb_dir / f"{stage}.ipynb").read_text())
        return {p.name for p in prov.module_closure(prov.notebook_modules(nb))}

    assert "selection.py" not in files("02_train") and "metrics.py" not in files("02_train")
    assert {"metrics.py", "io.py", "data.py", "__init__.py"} <= files("05_dice")
    assert "train.py" in files("02_train")
    # 07's own modules key 07 alone: changing them leaves 01-06 (hours of a long run) up to date
    weak = {"pseudo_labels.py", "pseudo_study.py"}
    assert weak <= files("07_pseudo_labels")
    assert not any(weak & files(s) for s in pipeline.STAGES if s != "07_pseudo_labels")


def test_a_comment_in_metrics_reruns_what_reads_it_and_not_training(smoke_run, tmp_path, monkeypatch, capsys):
    run_dir, fig = smoke_run
    copy = tmp_path / "camseg_utils"
    shutil.copytree(prov.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(prov, "PACKAGE_DIR", copy)
    plan = dict((s, what) for s, what, _ in pipeline.run("smoke", run_dir=run_dir, figures_dir=fig, dry_run=True))
    assert set(plan.values()) == {"skip"}  # an unchanged copy of the source: nothing to do
    (copy / "metrics.py").write_text((copy / "metrics.py").read_text() + "\n# a comment\n")
    plan = dict((s, what) for s, what, _ in pipeline.run("smoke", run_dir=run_dir, figures_dir=fig, dry_run=True))
    assert plan["01_data"] == plan["02_train"] == "skip"
    assert plan["05_dice"] == plan["06_filtered_retrain"] == "run"
    assert "would run: notebook, parameters, package source" in capsys.readouterr().out


def test_a_changed_data_file_changes_the_fingerprint_and_the_key(lgg_tree, tmp_path):
    nb = pipeline.default_notebook_dir() / "01_data.ipynb"
    before = prov.data_fingerprint(lgg_tree)
    mask = next(lgg_tree.rglob("*_2_mask.png"))
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(mask)
    after = prov.data_fingerprint(lgg_tree)
    assert before != after
    params = {"dataset": "lgg", "data_root": str(lgg_tree)}
    assert pipeline.stage_key(nb, params, "", {"data_root": before}) != pipeline.stage_key(nb, params, "",
                                                                                          {"data_root": after})


def test_a_copy_of_the_data_with_new_times_keeps_the_fingerprint(lgg_tree, tmp_path):
    """Copying a data set (as a fresh download or a restore does) must not re-run a study; renaming a file must."""
    copy = tmp_path / "copy"
    shutil.copytree(lgg_tree, copy, copy_function=shutil.copy)  # new modification times
    for p in copy.rglob("*.png"):
        os.utime(p, ns=(1, 1))
    assert prov.data_fingerprint(copy) == prov.data_fingerprint(lgg_tree)
    first = sorted(copy.rglob("*_1.png"))[0]
    first.rename(first.with_name(first.name.replace("_1.png", "_99.png")))
    assert prov.data_fingerprint(copy) != prov.data_fingerprint(lgg_tree)


def test_changed_or_unreadable_records_and_outputs_rerun(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "stages" / "04_segmentation.json").write_text('{"key": ')  # truncated
    ckpt = copy / "models" / "small_cnn" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    plan = {s: (what, why) for s, what, why in pipeline.run("smoke", run_dir=copy, figures_dir=tmp_path, dry_run=True)}
    assert plan["01_data"][0] == "skip"
    assert plan["02_train"][0] == "run" and "models/small_cnn/best.pt" in plan["02_train"][1]


def test_a_corrupt_checkpoint_names_the_file_and_force_retrains_it(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt = copy / "models" / "small_cnn" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(UnreadableFileError, match=r"classifier checkpoint .*best.pt is unreadable.*--from 02_train"):
        train.load_classifier(ckpt)
    code = pipeline.main(["--preset", "smoke", "--run-dir", str(copy), "--figures-dir", str(tmp_path / "f"),
                          "--force", "--from", "02_train", "--to", "02_train"])
    assert code == 0, capsys.readouterr().err
    model, _, meta = train.load_classifier(ckpt)
    assert meta["arch"] == "small_cnn" and len(meta["history"]) == 2


def test_a_run_folder_is_locked_while_a_pipeline_works_in_it(tmp_path):
    (tmp_path / "run").mkdir()
    with pipeline.locked(tmp_path / "run"):
        with pytest.raises(pipeline.PipelineError, match=r"in use by a running pipeline \(pid \d+"):
            pipeline.run("smoke", run_dir=tmp_path / "run", figures_dir=tmp_path / "fig", progress=False)


def test_every_metrics_file_and_the_report_carry_provenance(smoke_run):
    run_dir, _ = smoke_run
    for stage in ("01_data", "02_train", "03_gradcam", "05_dice", "06_filtered_retrain", "07_pseudo_labels"):
        p = read_json(run_dir / "metrics" / f"{stage}.json")["provenance"]
        assert len(p["package_source_sha256"]) == 64 and p["preset"] == "smoke"
        assert p["versions"]["torch"] == torch.__version__ and p["machine"]["cpu"]
        assert p["seeds"]["02_train"] == {"seed": 0}
        assert p["git"] is None or len(p["git"]["commit"]) == 40
    md = (run_dir / "report.md").read_text()
    assert "## Provenance" in md and "package source sha256" in md


def test_training_does_not_resume_from_other_pixels(tmp_path):
    ds = data.generate_synthetic(n_patients=6, size=32, seed=1)
    ds.manifest = data.split_patients(ds.manifest, seed=0)
    tr, va = ds.split("train"), ds.split("val")
    cfg = train.TrainConfig(epochs=2, batch_size=16, device="cpu")
    train.train_classifier(tr, va, cfg, tmp_path / "a", split_hash="h", progress=False)
    other = data.Dataset(255 - tr.images, tr.masks, tr.manifest)  # same names, other pixels
    resumed = train.train_classifier(other, va, cfg, tmp_path / "a", split_hash="h", progress=False)
    fresh = train.train_classifier(other, va, cfg, tmp_path / "b", split_hash="h", progress=False)
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(resumed["history"]) == drop(fresh["history"])


# ------------------------------------------------------ evaluate: no shortcut


def test_two_cohorts_with_the_same_names_get_their_own_numbers(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    out = tmp_path / "out"
    results = {}
    for seed in (11, 12):
        cohort = tmp_path / f"c{seed}" / "kaggle_3m"  # the same folder, case and slice names
        data.write_kaggle_layout(data.generate_synthetic(n_patients=3, size=48, seed=seed), cohort)  # SYN_A_000 ...
        results[seed] = evaluate.evaluate(run_dir, cohort, out, device="cpu", n_boot=50, progress=False)
        alone = evaluate.evaluate(run_dir, cohort, tmp_path / f"alone{seed}", device="cpu", n_boot=50, progress=False)
        assert results[seed]["cam"] == alone["cam"] and results[seed]["unet"] == alone["unet"]
    assert results[11]["cam"]["mean_dice"] != results[12]["cam"]["mean_dice"]


def _palette_mask(path, mask):
    """A palette PNG whose index 0 is white and index 1 black: read as indices, the mask comes out inverted."""
    im = Image.fromarray(mask.astype(np.uint8) ^ 1, mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    im.save(path)


def test_loader_takes_any_case_name_and_lists_what_it_skipped(tmp_path):
    root = tmp_path / "cohort"
    write_case(root, "patient-A", 4, "png")
    write_case(root, "TCGA_CS_0001_19990101", 4, "tif", seed=1)
    (root / "patient-A" / "notes.txt").write_text("x")
    (root / "empty_case").mkdir()
    (root / "README.md").write_text("x")
    manifest, skipped = data.scan_folder(root)
    assert set(manifest["patient"]) == {"patient-A", "TCGA_CS_0001"}
    assert set(manifest.loc[manifest.patient == "patient-A", "institution"]) == {"unknown"}
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in skipped}
    assert set(reasons) == {"notes.txt", "empty_case", "README.md"}
    assert "not named patient-A_<n>" in reasons["notes.txt"] and "no empty_case_<n>" in reasons["empty_case"]


def test_loader_decodes_palettes_notes_grey_images_and_binarises_soft_masks(tmp_path):
    root = tmp_path / "cohort"
    d = write_case(root, "case1", 3, "png")
    mask = np.zeros((32, 32), bool)
    mask[4:10, 4:10] = True
    _palette_mask(d / "case1_1_mask.png", mask)
    grey = np.asarray(Image.open(d / "case1_2.png"))[..., 0]
    Image.fromarray(grey).save(d / "case1_2.png")
    soft = np.zeros((32, 32), np.uint8)
    soft[10:20, 10:20] = 255
    soft[9, 10:20] = 100  # a blurred edge: under half the range
    soft[20, 10:20] = 200  # over it
    Image.fromarray(soft).save(d / "case1_3_mask.png")
    ds = data.load_lgg(root, size=None, progress=False)
    np.testing.assert_array_equal(ds.masks[0], mask)
    assert ds.manifest["notes"].tolist() == ["", "1-channel image", "soft mask"]
    assert ds.masks[2].sum() == 110 and not ds.masks[2][9].any() and ds.masks[2][20, 10:20].all()


@pytest.mark.parametrize("names", [("case1_1.png", "case1_01.png"), ("case1_3.png", "case1_3.tif")])
def test_loader_refuses_two_files_for_one_slice(tmp_path, names):
    d = write_case(tmp_path / "cohort", "case1", 3, "png")
    src = d / names[0]
    shutil.copy(src, d / names[1])
    with pytest.raises(data.DataError, match=f"two files for slice .* of case1: .*{names[0].split('.')[0]}.*"):
        data.scan_folder(tmp_path / "cohort")


def test_evaluate_refuses_dangerous_or_broken_input(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    cohort = tmp_path / "cohort"
    data.write_kaggle_layout(data.generate_synthetic(n_patients=3, size=48, seed=5), cohort)
    with pytest.raises(evaluate.RunError, match="inside the data folder"):
        evaluate.evaluate(run_dir, cohort, cohort / "out", device="cpu", progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(evaluate.RunError, match="already holds files that no evaluation wrote"):
        evaluate.evaluate(run_dir, cohort, tmp_path / "mine", device="cpu", progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(evaluate.RunError, match="is a file"):
        evaluate.evaluate(run_dir, cohort, tmp_path / "afile", device="cpu", progress=False)
    assert evaluate.main(["--run", str(run_dir), "--data", str(cohort), "--out", str(tmp_path / "o"),
                          "--batch-size", "0"]) == 1
    assert "batch size 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert evaluate.main(["--run", str(run_dir), "--data", str(cohort), "--out", str(tmp_path / "o"),
                              "--device", "cuda"]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not list(cohort.rglob("*_cam.png"))


def test_evaluate_refuses_a_classifier_05_did_not_choose_on_and_broken_run_files(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    cohort = tmp_path / "cohort"
    data.write_kaggle_layout(data.generate_synthetic(n_patients=3, size=48, seed=5), cohort)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt = copy / "models" / "small_cnn" / "best.pt"
    state = torch.load(ckpt, weights_only=False)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)  # a re-trained classifier, after 05 chose its settings
    assert evaluate.main(["--run", str(copy), "--data", str(cohort), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "is not the classifier 05 chose on" in err and "--from 05_dice" in err
    (copy / "metrics" / "05_dice.json").write_text('{"best_cam": ')
    assert evaluate.main(["--run", str(copy), "--data", str(cohort), "--out", str(tmp_path / "o")]) == 1
    assert "05_dice.json is not valid JSON" in capsys.readouterr().err
