"""Multi-seed runs: seed folders sharing the data stage, the aggregate over seeds, runs side by side."""

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from camseg_utils import cli, pipeline, readme_multi, readme_tables, records, seeds, workers
from camseg_utils.io import file_sha256, write_json

THREADS = max(1, workers.cores() // 2)  # what --jobs 2 gives each seed: the one-by-one run uses the same
FAST = ["--preset", "smoke", "--to", "02_train", "-p", "02_train.epochs=1"]


def _main(run_dir, fig, *extra):
    code = pipeline.main(FAST + ["--run-dir", str(run_dir), "--figures-dir", str(fig), *extra])
    assert code == 0
    return run_dir


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """Seeds 0 and 1 one by one, through 02."""
    base = tmp_path_factory.mktemp("seeds")
    return _main(base / "run", base / "fig", "--seeds", "0", "1", "--threads", str(THREADS))


def _side_by_side(seq, base, *how):
    """The same seeds run side by side; the data stage copied from ``seq`` (it is not what is compared)."""
    shutil.copytree(seq / seeds.SHARED, base / "run" / seeds.SHARED)
    return _main(base / "run", base / "fig", "--seeds", "0", "1", *how)


def _numbers(run_dir, seed):
    """A seed's 02 metrics without timings and provenance."""
    m = json.loads((run_dir / f"seed-{seed}" / "metrics" / "02_train.json").read_text())
    m.pop("provenance")
    for row in m["tables"]["Classifiers (test split)"]:
        row.pop("train_seconds")
    return m, (run_dir / f"seed-{seed}" / "metrics" / "02_per_patient.csv").read_text()


# ----------------------------------------------------------------------------- seed folders


def test_seed_folders_share_one_data_stage_and_train_their_own_classifiers(seq):
    shared = seq / seeds.SHARED
    rec = json.loads((shared / "stages" / "01_data.json").read_text())
    assert rec["status"] == "done"
    for s in (0, 1):
        folder = seq / f"seed-{s}"
        # 01 ran once: every seed folder holds shared/'s record and links to its files, not a run of its own
        assert json.loads((folder / "stages" / "01_data.json").read_text()) == rec
        for rel in list(rec["outputs"]) + ["notebooks/01_data.ipynb"]:
            assert os.path.samefile(folder / rel, shared / rel), rel
        assert (folder / "stages" / "02_train.json").exists() and not (folder / "stages" / "03_gradcam.json").exists()
        m = json.loads((folder / "metrics" / "02_train.json").read_text())
        assert m["provenance"]["seeds"]["02_train"]["seed"] == s
        assert m["provenance"]["seeds"]["01_data"]["seed"] == 0  # the preset's: the same data and split
        assert m["provenance"]["machine"]["torch_threads"] == THREADS
    # the two classifiers differ: each seed trained its own
    ckpt = [file_sha256(seq / f"seed-{s}" / "models" / "small_cnn" / "best.pt") for s in (0, 1)]
    assert ckpt[0] != ckpt[1]
    assert _numbers(seq, 0)[1] != _numbers(seq, 1)[1]
    plan = json.loads((seq / "seeds.json").read_text())
    assert plan["seeds"] == [0, 1]
    assert plan["seed_overrides"]["1"]["06_filtered_retrain.seeds"] == [2, 3]  # the smoke preset's [0, 1], moved
    assert "01_data.seed" not in plan["seed_overrides"]["1"] and plan["seed_overrides"]["1"]["05_dice.seed"] == 1
    assert (seq.parent / "fig" / "seed-1" / "01_samples.png").exists()


def test_aggregate_is_the_mean_and_sd_of_the_seed_files(seq):
    agg = json.loads((seq / "aggregate.json").read_text())
    assert agg["seeds"] == [0, 1]
    rows = [json.loads((seq / f"seed-{s}" / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"][0]
            for s in (0, 1)]
    for key, name in (("test_auc", "test ROC AUC"), ("test_accuracy", "test accuracy")):
        values = [r[key] for r in rows]
        n = next(x for x in agg["numbers"] if x["number"] == name and x["what"] == {"arch": "small_cnn"})
        assert n["values"] == {"0": values[0], "1": values[1]} and n["n"] == 2
        assert n["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert n["sd"] == pytest.approx(statistics.stdev(values), rel=1e-12, abs=1e-15)
    assert {n["stage"] for n in agg["numbers"]} == {"02_train"}  # stopped after 02: nothing else yet
    md = (seq / "aggregate.md").read_text()
    auc = next(x for x in agg["numbers"] if x["number"] == "test ROC AUC")
    assert f"| small_cnn | {auc['mean']:.3f} ± {auc['sd']:.3f} | {auc['values']['0']:.3f} / {auc['values']['1']:.3f} |" in md


def test_dry_run_and_resume_after_a_failed_seed(seq, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(seq, run)
    plans = seeds.run_seeds("smoke", [0, 1], {"02_train.epochs": 1}, stop="02_train", run_dir=run,
                            figures_dir=tmp_path / "fig", dry_run=True)
    assert [p[1] for p in plans[seeds.SHARED]] == ["skip"]
    assert all([p[1] for p in plans[s]] == ["shared", "skip"] for s in (0, 1))
    plans = seeds.run_seeds("smoke", [0, 1], {"02_train.epochs": 1}, force=True, stop="02_train", run_dir=run,
                            figures_dir=tmp_path / "fig", dry_run=True)
    assert plans[seeds.SHARED] == [("01_data", "run", "--force")]
    assert all(plans[s][1] == ("02_train", "run", "--from 02_train") for s in (0, 1))
    # seed 1 interrupted inside 02 (its record says running) and, this time, busy: seed 0 still gets its turn
    rec = run / "seed-1" / "stages" / "02_train.json"
    write_json(rec, dict(json.loads(rec.read_text()), status="running"))
    capsys.readouterr()
    with pipeline.locked(run / "seed-1"):
        code = pipeline.main(FAST + ["--run-dir", str(run), "--figures-dir", str(tmp_path / "fig"), "--seeds", "0", "1",
                                     "--threads", str(THREADS)])
    out, err = capsys.readouterr()
    assert code == 1 and "seed 1: run folder" in err and "in use" in err and "Run the same command again" in err
    assert out.count("[01_data] up to date, skipped") == 2  # shared/ and seed 0
    assert (run / "aggregate.md").exists()
    # resumed: nothing but seed 1's 02 runs again, and it gives the numbers it gave before
    code = pipeline.main(FAST + ["--run-dir", str(run), "--figures-dir", str(tmp_path / "fig"), "--seeds", "0", "1",
                                 "--threads", str(THREADS)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("up to date, skipped") == 4 and "[02_train] interrupted: resuming" in out
    assert out.count("[02_train] done") == 1
    assert _numbers(run, 1) == _numbers(seq, 1)


def test_jobs_give_the_numbers_of_one_by_one(seq, tmp_path):
    par = _side_by_side(seq, tmp_path, "--jobs", "2")
    for s in (0, 1):
        assert _numbers(par, s) == _numbers(seq, s), s
        assert json.loads((par / f"seed-{s}" / "metrics" / "02_train.json").read_text())["provenance"]["machine"][
            "torch_threads"] == THREADS


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets only on POSIX; elsewhere the default TCP kernels")
def test_kernels_started_side_by_side_never_share_an_address():
    """Over TCP two kernels started at once can be handed the same free port and one dies at start."""
    from camseg_utils.runner import kernel_manager

    with kernel_manager() as a, kernel_manager() as b:
        ka, kb = a(), b()
        assert ka.transport == kb.transport == "ipc"
        folders = {os.path.dirname(ka.ip), os.path.dirname(kb.ip)}
        assert len(folders) == 2 and all(os.path.isdir(f) for f in folders)
    assert not any(os.path.exists(f) for f in folders)  # nothing left behind


def _printed_in_a_stage_kernel(tmp_path, code: str, environment) -> str:
    """What one code cell prints in a kernel started as the runner starts a stage's, inside ``environment``."""
    import nbformat
    import papermill

    from camseg_utils.runner import kernel_manager

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, str(tmp_path / "cell.ipynb"))
    with environment, kernel_manager() as manager_class:
        papermill.execute_notebook(str(tmp_path / "cell.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   progress_bar=False, **({"kernel_manager_class": manager_class} if manager_class else {}))
    return nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells[0].outputs[0]["text"]


def test_stage_kernels_keep_freed_memory_unless_the_user_set_otherwise(tmp_path, monkeypatch):
    from camseg_utils.runner import KEPT_MEMORY, kept_memory

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the user's own setting
    printed = _printed_in_a_stage_kernel(
        tmp_path, "import os; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))",
        kept_memory()).split()
    assert printed == [KEPT_MEMORY["MALLOC_MMAP_THRESHOLD_"], "12345"]
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"


def test_stage_kernels_import_the_package_that_runs_them(tmp_path, monkeypatch):
    import camseg_utils
    from camseg_utils.runner import same_package

    decoy = tmp_path / "elsewhere" / "camseg_utils"  # another camseg_utils, first on the path
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(decoy.parent))
    printed = _printed_in_a_stage_kernel(tmp_path, "import camseg_utils; print(camseg_utils.__file__)", same_package())
    assert Path(printed.strip()).resolve() == Path(camseg_utils.__file__).resolve()
    assert os.environ["PYTHONPATH"] == str(decoy.parent)  # restored


def test_a_dask_local_cluster_gives_the_numbers_of_one_by_one(seq, tmp_path):
    pytest.importorskip("distributed")
    par = _side_by_side(seq, tmp_path, "--dask", "local", "--jobs", "2")
    for s in (0, 1):
        assert _numbers(par, s) == _numbers(seq, s), s


# ----------------------------------------------------------------------------- bad input


def test_bad_seed_options(tmp_path, capsys, monkeypatch):
    def err(*argv):
        assert pipeline.main(["--preset", "smoke", "--run-dir", str(tmp_path / "r"), *argv]) == 1
        return capsys.readouterr().err

    assert "give --seeds or --folds too" in err("--jobs", "2")
    assert "give --seeds or --folds too" in err("--dask", "local")
    assert "given twice" in err("--seeds", "1", "1")
    assert cli.main(["run", "--preset", "smoke", "--seeds", "1", "1"]) == 1  # the console script takes the same
    assert "given twice" in capsys.readouterr().err
    assert "non-negative" in err("--seeds", "0", "-1")
    assert "--jobs 0: expected a positive integer" in err("--seeds", "0", "--jobs", "0")
    assert "drop -p 02_train.seed" in err("--seeds", "0", "1", "-p", "02_train.seed=3")
    assert "--to '02_trian'" in err("--seeds", "0", "--to", "02_trian")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as without the extra
    assert "camseg[cluster]" in err("--seeds", "0", "--dask", "local")
    assert not (tmp_path / "r").exists()  # refused before anything ran
    (tmp_path / "single" / "stages").mkdir(parents=True)
    assert "holds a single run" in err("--seeds", "0", "--run-dir", str(tmp_path / "single"))
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi" / "seeds.json").write_text("{}")
    assert "holds a multi-seed run" in err("--run-dir", str(tmp_path / "multi"))


def test_seed_parameters_of_the_smoke_preset():
    preset = pipeline.load_preset("smoke")
    nb = pipeline.default_notebook_dir()
    declared = {s: pipeline.notebook_parameters(nb / f"{s}.ipynb") for s in pipeline.STAGES}
    o = seeds.seed_overrides(2, pipeline.STAGES, declared, preset, {})
    assert not any(k.startswith(pipeline.STAGES[0]) for k in o)
    assert {k for k in o if k.endswith(".seed")} == {f"{s}.seed" for s in pipeline.STAGES[1:] if "seed" in declared[s]}
    assert all(o[f"{s}.seed"] == 2 for s in pipeline.STAGES[1:] if "seed" in declared[s])
    assert o["06_filtered_retrain.seeds"] == [4, 5]
    # a -p base list is moved the same way
    o = seeds.seed_overrides(1, pipeline.STAGES, declared, preset, {"06_filtered_retrain.seeds": [0, 1, 2]})
    assert o["06_filtered_retrain.seeds"] == [3, 4, 5]


def test_pinned_threads_reach_a_child_process_and_are_restored():
    """A notebook kernel is a child process started with this environment: it gets the pinned count."""
    import torch

    before, env = torch.get_num_threads(), {v: os.environ.get(v) for v in workers.THREAD_VARS}
    want = 1 if before > 1 else 2
    with workers.pinned_threads(want):
        assert torch.get_num_threads() == want
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, check=True).stdout
    assert int(child) == want
    assert torch.get_num_threads() == before and {v: os.environ.get(v) for v in workers.THREAD_VARS} == env


def test_shifted_seed_blocks_are_disjoint():
    blocks = [set(seeds.shifted([5, 7], s)) for s in range(4)]
    assert blocks[0] == {5, 7} and blocks[1] == {8, 10}
    assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    with pytest.raises(pipeline.PipelineError, match="06_filtered_retrain.seeds=\\[\\]"):
        seeds.shifted([], 1, "06_filtered_retrain.seeds")


def test_share_stage_links_files_and_record_and_repairs_a_changed_copy(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "data").mkdir(parents=True)
    (src / "notebooks").mkdir()
    (src / "data" / "a.npy").write_bytes(b"abc")
    (src / "notebooks" / "01_data.ipynb").write_text("{}")
    write_json(src / "stages" / "01_data.json", {"stage": "01_data", "key": "k", "status": "done",
                                                 "outputs": records.outputs_since(src, 0)})
    assert records.share_stage(src, dst, "01_data")
    assert os.path.samefile(src / "data" / "a.npy", dst / "data" / "a.npy")
    assert (dst / "stages" / "01_data.json").read_text() == (src / "stages" / "01_data.json").read_text()
    assert not records.share_stage(src, dst, "01_data")  # already there
    (dst / "data" / "a.npy").unlink()
    (dst / "data" / "a.npy").write_bytes(b"xyz")  # a changed output is replaced by shared/'s
    assert records.share_stage(src, dst, "01_data") and (dst / "data" / "a.npy").read_bytes() == b"abc"
    write_json(src / "stages" / "01_data.json", {"stage": "01_data", "key": "k", "status": "running"})
    with pytest.raises(pipeline.PipelineError, match="no finished 01_data"):
        records.share_stage(src, dst, "01_data")


def test_readme_seeds_table_gives_each_seed_and_how_far_they_spread(seq, tmp_path):
    md = readme_multi.seeds_table(seq)
    rows = [json.loads((seq / f"seed-{s}" / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"][0]
            for s in (0, 1)]
    auc = [r["test_auc"] for r in rows]
    assert (f"| small_cnn: test ROC AUC | {statistics.mean(auc):.3f} ± {statistics.stdev(auc):.3f} | "
            f"{auc[0]:.3f} / {auc[1]:.3f} | {max(auc) - min(auc):.3f} |") in md
    assert "| number (test split) | mean ± sd over seeds | seed 0 / 1 | max - min |" in md
    assert f"*From `{seq}/seed-*/metrics/`" in md and "commit" in md
    assert readme_tables.tables(seq, ["seeds"]) == {"seeds": md}
    with pytest.raises(readme_tables.ReadmeError, match="no seed-<N> folders"):
        readme_multi.seeds_table(tmp_path)
