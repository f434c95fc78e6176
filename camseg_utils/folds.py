"""One study cross-validated by patient: the pipeline's ``--folds``.

    python -m camseg_utils.pipeline --preset lgg_cpu --folds 5 [--jobs 2 | --dask local | --dask HOST:8786]

A single run tests on one split's few patients (12 of LGG's 80 at 70/15/15). With ``--folds K`` the
study runs once per fold of a cross-validation by patient (:func:`camseg_utils.data.fold_patients`:
stratified by institution, or site on the synthetic data): fold F's patients are its test split, its
validation patients come from the other folds' patients, and every knob (epochs kept, CAM setting,
U-Net clean-up, 07's band and round) is chosen on that fold's own validation split. Over the K folds
every patient is tested exactly once. A cross-validated run folder (default ``runs/<preset>-folds``)
holds:

    fold-<F>/       a complete run folder per fold, 01 included (its split is its own); it resumes
                    as a single run does
    folds.json      K and each fold folder's overrides
    crossval.json   the numbers pooled over all patients (each tested once) with patient-bootstrap
    crossval.md     CIs, paired comparisons pooled the same way, and a table per fold
                    (:mod:`camseg_utils.crossval`; rewritten after every run, also when a fold failed)

Fold F sets ``folds`` and ``fold`` of the data stage; every other parameter, the seed included, is the
preset's, so the folds differ only in their patients. ``--jobs``, ``--dask`` and ``--threads`` run the
folds side by side as they do seeds (:mod:`camseg_utils.workers`); ``--force``, ``--from``, ``--to``
and ``-p`` act on every fold as on one run.
"""

from __future__ import annotations

from pathlib import Path

from . import runner
from .crossval import fold_folder, write_crossval
from .io import write_json
from .params import STAGES, PipelineError, default_notebook_dir, load_preset, notebook_parameters, validate
from .records import locked
from .workers import check_parallel, run_tasks

DATA_STAGE = STAGES[0]
FOLD_KEYS = ("folds", "fold")


def check_folds(folds) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise PipelineError(f"--folds {folds!r}: expected an integer of at least 2, e.g. --folds 5")
    return folds


def fold_overrides(folds: int, fold: int) -> dict:
    return {f"{DATA_STAGE}.folds": folds, f"{DATA_STAGE}.fold": fold}


def run_folds(
    preset_name: str,
    folds: int = 5,
    overrides: dict | None = None,
    force: bool = False,
    start: str | None = None,
    stop: str | None = None,
    run_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    progress: bool = True,
    notebook_dir: str | Path | None = None,
    dry_run: bool = False,
    jobs: int | None = None,
    dask: str | None = None,
    threads: int | None = None,
):
    """Run (or resume) a preset once per fold; returns the run folder (with ``dry_run``: the plans per fold).

    Raises PipelineError on bad input, and after every fold has had its turn when one failed (the pooled
    report then holds the folds that got through).
    """
    folds = check_folds(folds)
    check_parallel(jobs, threads, dask, "fold")
    preset = load_preset(preset_name)
    overrides = dict(overrides or {})
    nb_dir = Path(notebook_dir) if notebook_dir else default_notebook_dir()
    stages = [s for s in STAGES if (nb_dir / f"{s}.ipynb").exists()]
    runner.check_range(stages, start, stop)
    if not stages or stages[0] != DATA_STAGE:
        raise PipelineError(f"--folds: the notebooks in {nb_dir} have no {DATA_STAGE} stage to split the patients")
    declared = {s: notebook_parameters(nb_dir / f"{s}.ipynb") for s in stages}
    missing = [k for k in FOLD_KEYS if k not in declared[DATA_STAGE]]
    if missing:
        raise PipelineError(f"--folds: {nb_dir / (DATA_STAGE + '.ipynb')} declares no {' or '.join(missing)} "
                            f"parameter; use the notebooks shipped with camseg or add them")
    for key in list(overrides):
        if key.split(".")[-1] in FOLD_KEYS:
            raise PipelineError(f"-p {key}: --folds sets the data stage's folds and fold; drop -p {key}")
    validate(preset, overrides, declared)
    default = f"{preset['name']}-folds"
    run_dir = Path(run_dir or Path.cwd() / "runs" / default).resolve()
    figures_dir = Path(figures_dir or Path.cwd() / "figures" / default).resolve()
    if (run_dir / "stages").is_dir():
        raise PipelineError(f"--run-dir {run_dir} holds a single run (stages/); give the cross-validated run another "
                            f"--run-dir (default runs/{default})")
    per_fold = {f: {**overrides, **fold_overrides(folds, f)} for f in range(folds)}
    runs = {f: dict(preset_name=preset_name, overrides=per_fold[f], force=force, start=start, stop=stop,
                    run_dir=fold_folder(run_dir, f), figures_dir=figures_dir / f"fold-{f}", progress=progress,
                    notebook_dir=notebook_dir) for f in range(folds)}
    if dry_run:
        plans = {}
        for f, task in runs.items():
            print(f"[fold {f}]", flush=True)
            plans[f] = runner.run(**task, dry_run=True)
        return plans
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        write_json(run_dir / "folds.json", {"preset": preset["name"], "folds": folds, "overrides": overrides,
                                            "fold_overrides": {str(f): per_fold[f] for f in range(folds)}})
        tasks = {f: {"run": runs[f], "shared": None, "stage": DATA_STAGE, "after": True} for f in range(folds)}
        failures = run_tasks(tasks, jobs, dask, threads, kind="fold")
        md = write_crossval(run_dir, range(folds), preset["name"])
    if failures:
        raise PipelineError("; ".join(f"fold {f}: {e}" for f, e in failures.items())
                            + f". The other folds finished; the pooled report so far is {md}. Run the same command "
                              f"again to resume.")
    print(f"pipeline {preset['name']} over {folds} folds: run folder {run_dir}, pooled report {md}", flush=True)
    return run_dir
