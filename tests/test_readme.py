"""The README: its Python example runs, and its results tables and figure are generated from run folders."""

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest

from camseg_utils import metrics, readme_multi, readme_tables
from camseg_utils.readme_tables import ReadmeError

from .conftest import REPO

README = REPO / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = _python_blocks(README.read_text())
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    monkeypatch.chdir(tmp_path)  # the example must not depend on (or write into) the repository
    namespace: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md (python example)", "exec"), namespace)
    assert out.getvalue().startswith("mean-Dice ")
    pred, truth, scores = namespace["pred"], namespace["truth"], namespace["scores"]
    assert pred.dtype == bool and pred.shape == truth.shape and pred.any()
    # the printed score is the Dice of the masks it made, against the ground truth it was given
    assert scores["mean_dice"] == pytest.approx(metrics.mean_dice(pred, truth))
    assert not list(tmp_path.iterdir())


def test_readme_blocks_name_known_kinds_and_runs():
    text = README.read_text()
    blocks = [(m["name"], m["kind"]) for m in readme_tables.MARKER.finditer(text)]
    assert {k for _, k in blocks} == set(readme_tables.KINDS) | {"seeds", "folds"}
    assert {n for n, _ in blocks} == {"synthetic", "synthetic_seeds", "lgg_cpu", "lgg_cpu_folds"}
    assert {k for n, k in blocks if n == "synthetic_seeds"} == {"seeds"}  # a multi-seed run folder's one table
    assert {k for n, k in blocks if n == "lgg_cpu_folds"} == {"folds"}  # and a cross-validated one's
    update = next(line for line in text.splitlines() if "readme_tables update README.md" in line)
    assert all(f" {n}=" in update for n, _ in blocks)  # the regeneration command names every block's run
    assert text.count("<!-- table:") == len(blocks)  # every opening marker has its closing one


def test_tables_from_a_smoke_run(smoke_run):
    run_dir, _ = smoke_run
    t = readme_tables.tables(run_dir)
    assert set(t) == set(readme_tables.KINDS)
    dice = json.loads((run_dir / "metrics" / "05_dice.json").read_text())
    best, unet = dice["best_cam"], dice["unet"]
    rows = {line.split("|")[1].strip(): line for line in t["dice"].splitlines() if line.startswith("| ")}
    assert f"{best['mean_dice']:.3f} [{best['mean_dice_ci'][0]:.3f}, {best['mean_dice_ci'][1]:.3f}]" in \
        rows["best CAM setting (chosen on validation)"]
    assert f"{best['method']} @ {best['layer']}" in rows["best CAM setting (chosen on validation)"]
    assert f"{unet['patient_dice']:.3f}" in rows["U-Net, supervised (reference)"]
    assert "random heatmap (baseline)" in rows
    clf = json.loads((run_dir / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"][0]
    assert f"| {clf['arch']} |" in t["classifier"] and f"{clf['test_auc']:.3f}" in t["classifier"]
    assert "±" in t["retrain"] and "random (control)" in t["retrain"]
    pairs = dice["tables"]["Paired comparisons (test split, a - b per patient)"]
    rows = {line.split("|")[1].strip(): line for line in t["paired"].splitlines() if line.startswith("| ")}
    for r in pairs:
        assert f"{r['difference']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" in rows[r["comparison"]]
    weak = json.loads((run_dir / "metrics" / "07_pseudo_labels.json").read_text())
    rows = {line.split("|")[1].strip(): line for line in t["pseudo"].splitlines() if line.startswith("| ")}
    p = weak["pseudo"]
    assert f"{p['mean_dice']:.3f} [{p['mean_dice_ci'][0]:.3f}, {p['mean_dice_ci'][1]:.3f}]" in \
        rows["U-Net on CAM pseudo-masks (weakly supervised)"]
    assert f"band {p['band']:g}, round {p['round']}" in rows["U-Net on CAM pseudo-masks (weakly supervised)"]
    assert f"{best['mean_dice']:.3f}" in rows["CAM masks it learned from (05)"]
    assert f"{unet['mean_dice']:.3f}" in rows["U-Net, supervised (05, reference)"]
    assert "U-Net on random-heatmap masks (control)" in rows
    for r in weak["tables"]["Paired comparisons (test split, a - b per patient)"]:
        assert f"{r['difference']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" in rows[r["comparison"]]
    for md in t.values():
        assert str(run_dir) in md and "12 patients" in md


def test_update_fills_only_the_named_blocks_and_is_repeatable(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    filled = readme_tables.update_readme(readme, {"synthetic": run_dir})
    assert sorted(filled) == ["synthetic:pseudo", "synthetic:retrain"]
    once = readme.read_text()
    assert readme_tables.tables(run_dir)["pseudo"] in once and readme_tables.tables(run_dir)["retrain"] in once
    others = lambda text: [m.group(0) for m in readme_tables.MARKER.finditer(text) if m["name"] != "synthetic"]  # noqa: E731
    assert others(once) == others(README.read_text())  # the other runs' blocks are left as they were
    readme_tables.update_readme(readme, {"synthetic": run_dir})
    assert readme.read_text() == once
    with pytest.raises(ReadmeError, match="no '<!-- table:NAME:KIND -->' block for nosuch"):
        readme_tables.update_readme(readme, {"nosuch": run_dir})


def test_figure_from_a_smoke_run(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    out = tmp_path / "fig" / "example.png"
    assert readme_tables.main(["figure", str(run_dir), str(out)]) == 0
    from PIL import Image

    img = np.asarray(Image.open(out))
    assert img.shape[1] > 2 * img.shape[0] and img.std() > 0  # five panels side by side, not blank
    with pytest.raises(ReadmeError, match="index=9999"):
        readme_tables.example_figure(run_dir, None, index=9999)


def test_missing_metrics_are_named(tmp_path, capsys):
    with pytest.raises(ReadmeError, match="holds no metrics JSON"):
        readme_tables.tables(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "02_train.json").write_text(json.dumps({"tables": {}}))
    with pytest.raises(ReadmeError, match="05_dice.json is missing"):
        readme_tables.tables(tmp_path, ["dice"])
    assert readme_tables.main(["tables", str(tmp_path)]) == 1
    assert "02_train.json has no 'Classifiers" in capsys.readouterr().err
    assert readme_tables.main(["update", str(tmp_path / "README.md"), "no-equals-sign"]) == 1
    assert "expected NAME=RUN_DIR" in capsys.readouterr().err


def test_provenance_line():
    assert readme_tables.provenance({}) == "commit not recorded"
    rec = {"provenance": {"git": {"commit": "0123456789abcdef0123", "dirty": True}, "python": "3.11"}}
    assert readme_tables.provenance(rec) == "commit 0123456789ab, uncommitted changes"
    assert readme_tables.provenance({"provenance": {"git_commit": "abc1234", "git_dirty": False}}) == "commit abc1234"


def test_retrain_table_puts_each_reading_beside_its_shape_control(tmp_path):
    def row(heatmap, filt, k, imp, auc, shape=float("nan")):
        return {"heatmap": heatmap, "filter": filt, "k": k, "imputation": imp, "auc": auc, "auc_sd": 0.01,
                "shape_auc": shape, "shape_auc_sd": 0.02, "image_minus_shape": auc - shape,
                "image_minus_shape_sd": 0.03, "original_auc": 0.7, "seeds": 3}
    results = [row("random", "keep", 10, "mean", 0.61, 0.52), row("layercam", "keep", 50, "mean", 0.95, 0.90),
               row("layercam", "keep", 10, "nli", 0.88, 0.80), row("layercam", "keep_dark", 0, "-", 0.85, 0.93),
               row("none", "none", 0, "-", 0.97)]
    verdicts = [{"heatmap": "layercam", "claim": "hot areas", "verdict": "confounded", "test": "overall"},
                {"heatmap": "layercam", "claim": "hot areas", "verdict": "supported", "test": "keep 10 mean"}]
    md = readme_tables.retrain_table({"results": results, "verdicts": verdicts}, tmp_path)
    body = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[1].strip() for line in body] == ["none", "layercam", "layercam", "random (control)"]
    assert "| hottest 10 % kept, imputed | 0.880 ± 0.010 | 0.800 ± 0.020 | 0.080 ± 0.030 | 0.700 |" in md
    assert "50 %" not in md and "k = 10 %" in md  # only the smallest k in the README
    assert "| soft keep-dark | 0.850 ± 0.010 | 0.930 ± 0.020 | -0.080 ± 0.030 |" in md
    assert "**confounded**" in md and "**supported**" not in md  # overall verdicts only


def test_update_says_which_stage_a_stopped_run_lacks(tmp_path):
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    clf = {"arch": "small_cnn", "best_epoch": 3, "val_auc": 0.9, "test_accuracy": 0.8, "test_sensitivity": 0.7,
           "test_specificity": 0.9, "test_auc": 0.91, "train_seconds": 5.0}
    (run / "metrics" / "02_train.json").write_text(json.dumps({"tables": {"Classifiers (test split)": [clf]}}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:x:classifier -->\nold\n<!-- /table -->\n<!-- table:x:retrain -->\nold\n<!-- /table -->\n")
    assert sorted(readme_tables.update_readme(readme, {"x": run})) == ["x:classifier", "x:retrain"]
    text = readme.read_text()
    assert "old" not in text and "| small_cnn |" in text and "0.910" in text
    assert f"*Not generated: `{run / 'metrics' / '06_filtered_retrain.json'}` is missing.*" in text


def test_paired_table_of_a_run_older_than_the_comparisons_says_so(tmp_path):
    m = {"tables": {"Segmentation (test split)": []}}
    text = readme_tables.paired_table(m, tmp_path)
    assert text.startswith("*Not generated:") and "re-run 05" in text


def test_p_values_below_a_thousandth_are_not_printed_as_zero():
    assert readme_tables.p_value(0.0005) == "< 0.001" and readme_tables.p_value(0.0213) == "0.021"
    assert readme_tables.p_value(float("nan")) == "n/a"


def test_multi_run_tables_name_the_commit_of_each_stage():
    def made_by(commit):
        return {"provenance": {"git": {"commit": commit * 40, "dirty": False}}}

    same = {0: {"02_train": made_by("a")}, 1: {"02_train": made_by("a"), "05_dice": made_by("a")}}
    assert readme_multi._commits(same, "seed") == "commit aaaaaaaaaaaa"
    # 07 re-run at a later commit on seed 0 only: the stages each commit made, and the runs when not all
    mixed = {0: {"02_train": made_by("a"), "07_pseudo_labels": made_by("b")}, 1: {"02_train": made_by("a")}}
    assert readme_multi._commits(mixed, "seed") == "commit aaaaaaaaaaaa (02_train); commit bbbbbbbbbbbb (07_pseudo_labels; seeds 0)"
