"""One study over several training seeds: the pipeline's ``--seeds``, ``--jobs`` and ``--dask``.

    python -m camseg_utils.pipeline --preset smoke --seeds 0 1 2 [--jobs 3 | --dask local | --dask HOST:8786]

A single run's numbers come from one training seed; the same study over several seeds says how far
a seed moves them. A multi-seed run folder (default ``runs/<preset>-seeds``) holds:

    shared/         the data stage (01), run once with the preset's seed, so that every seed sees the
                    same data and the same patient split
    seed-<S>/       a complete run folder per seed: 01's outputs, executed notebook and stage record
                    hard-linked from shared/ (copied where a link is impossible), so its pipeline finds
                    01 done and up to date under the usual stage keys; every later stage runs here
    seeds.json      the seeds and each seed folder's overrides
    aggregate.json  the headline numbers as mean ± sd over seeds beside each seed's value
    aggregate.md    (camseg_utils.aggregate; rewritten after every run, also when a seed failed)

Seed S sets ``seed`` of every stage after 01 that declares one (classifier initialisation, epoch order
and augmentation, the random heatmaps, the U-Net, the bootstrap) and moves a stage's re-training seeds
``seeds`` (06) to a block of their own, ``[b + S * (max - min + 1) for b in seeds]``, so no two study
seeds share a re-training; with a preset whose seed is 0 (all shipped ones), folder seed-0 repeats the
single run at the same thread count. ``-p NN_stage.seed`` for a stage after 01 is refused (the seed
folder sets it); ``-p seed=N`` or ``-p 01_data.seed=N`` set the data's.

Each seed folder resumes as a single run does; ``--force`` re-runs 01 in shared/ and every later stage
in every seed folder; ``--from``, ``--to`` and ``-p`` act as for one run. Seed runs are independent:
``--jobs N`` runs them in N worker processes on this machine, each notebook kernel with cores // N
threads (OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS, set before the kernel starts).
``--dask local`` runs them on a Dask LocalCluster of N worker processes (``--jobs``, default one per
seed up to the core count), ``--dask ADDRESS`` on the workers of a running Dask scheduler, which must
see the run folder at the same path and have camseg installed; there a kernel gets its machine's cores
// the worker's threads. Dask is the optional extra ``camseg[cluster]``. How the seed folders are run
is :mod:`camseg_utils.workers`; how one is given the data stage, :func:`camseg_utils.records.share_stage`.

On a CPU, torch splits sums across threads, so the same training with 1 and with 2 threads ends in
different weights (the smoke preset's classifier: test probabilities differ from the fourth decimal).
Runs side by side therefore match runs one by one made with the same thread count: ``--threads T`` sets it for every mode (default: unchanged one by
one, cores // N side by side); each metrics file's provenance records it (machine.torch_threads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from . import runner
from .aggregate import seed_folder, write_aggregate
from .io import write_json
from .params import (
    STAGES,
    PipelineError,
    default_notebook_dir,
    load_preset,
    notebook_parameters,
    stage_parameters,
    validate,
)
from .records import locked
from .workers import check_parallel, run_tasks

SHARED = "shared"


# ----------------------------------------------------------------------------- seeds and parameters


def check_seeds(seeds: Iterable) -> list[int]:
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise PipelineError(f"--seeds {s!r}: expected non-negative integers, e.g. --seeds 0 1 2")
        if s in out:
            raise PipelineError(f"--seeds: {s} is given twice")
        out.append(s)
    if not out:
        raise PipelineError("--seeds: give at least one seed, e.g. --seeds 0 1 2")
    return out


def shifted(base: list[int], seed: int, where: str = "seeds") -> list[int]:
    """Re-training seeds of study seed ``seed``: ``base`` moved by seed x its span (disjoint blocks per seed)."""
    if not isinstance(base, list) or not base or not all(isinstance(b, int) and not isinstance(b, bool) for b in base):
        raise PipelineError(f"{where}={base!r}: expected a non-empty list of integers")
    return [b + seed * (max(base) - min(base) + 1) for b in base]


def seed_overrides(seed: int, stages: list[str], declared: dict[str, dict], preset: dict, overrides: dict) -> dict:
    """The ``-p NN_stage.key`` overrides that make a run study seed ``seed`` (every stage after the data stage)."""
    out: dict[str, Any] = {}
    for stage in stages[1:]:
        if "seed" in declared[stage]:
            out[f"{stage}.seed"] = seed
        if "seeds" in declared[stage]:
            params = stage_parameters(preset, stage, overrides, declared[stage], Path("."), Path("."))
            out[f"{stage}.seeds"] = shifted(params.get("seeds", declared[stage]["seeds"]), seed, f"{stage}.seeds")
    return out


# ----------------------------------------------------------------------------- the multi-seed run


def run_seeds(
    preset_name: str,
    seeds: Iterable[int],
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
    """Run (or resume) a preset once per seed; returns the run folder (with ``dry_run``: the plans).

    Raises PipelineError on bad input, and after every seed has had its turn when one failed (the
    aggregate then holds the seeds that got through).
    """
    seeds = check_seeds(seeds)
    check_parallel(jobs, threads, dask, "seed")
    preset = load_preset(preset_name)
    overrides = dict(overrides or {})
    nb_dir = Path(notebook_dir) if notebook_dir else default_notebook_dir()
    stages = [s for s in STAGES if (nb_dir / f"{s}.ipynb").exists()]
    runner.check_range(stages, start, stop)
    data_stage = stages[0]
    for stage in stages[1:]:
        if f"{stage}.seed" in overrides:
            raise PipelineError(f"-p {stage}.seed: --seeds sets the seed of every stage after {data_stage}; "
                                f"drop -p {stage}.seed")
    default = f"{preset['name']}-seeds"
    run_dir = Path(run_dir or Path.cwd() / "runs" / default).resolve()
    figures_dir = Path(figures_dir or Path.cwd() / "figures" / default).resolve()
    if (run_dir / "stages").is_dir():
        raise PipelineError(f"--run-dir {run_dir} holds a single run (stages/); give the multi-seed run another "
                            f"--run-dir (default runs/{default})")
    declared = {s: notebook_parameters(nb_dir / f"{s}.ipynb") for s in stages}
    validate(preset, overrides, declared)
    per_seed = {s: {**overrides, **seed_overrides(s, stages, declared, preset, overrides)} for s in seeds}
    redo_data = force or start == data_stage
    after_data = stop != data_stage and len(stages) > 1
    seed_start = stages[1] if redo_data and after_data else start
    shared = run_dir / SHARED
    runs = {s: dict(preset_name=preset_name, overrides=per_seed[s], start=seed_start, stop=stop,
                    run_dir=seed_folder(run_dir, s), figures_dir=figures_dir / f"seed-{s}", progress=progress,
                    notebook_dir=notebook_dir, shared_stages=(data_stage,)) for s in seeds}
    if dry_run:
        plans = {SHARED: runner.run(preset_name, overrides, redo_data, None, data_stage, shared,
                                      figures_dir / SHARED, progress, notebook_dir, dry_run=True)}
        data_runs = plans[SHARED][0][1] == "run"
        for s, task in runs.items():
            if not after_data:
                break
            print(f"[seed {s}]", flush=True)
            plan = runner.run(**dict(task, shared_stages=(), dry_run=True,
                                       start=stages[1] if data_runs else seed_start))
            plans[s] = [(data_stage, "shared", f"from {SHARED}/")] + plan[1:]
        return plans
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        write_json(run_dir / "seeds.json", {"preset": preset["name"], "seeds": seeds, "overrides": overrides,
                                            "seed_overrides": {str(s): per_seed[s] for s in seeds},
                                            "shared_stage": data_stage})
        print(f"[{SHARED}] {data_stage} for every seed, in {shared}", flush=True)
        runner.run(preset_name, overrides, redo_data, None, data_stage, shared, figures_dir / SHARED, progress,
                     notebook_dir)
        tasks = {s: {"run": runs[s], "shared": str(shared), "shared_figures": str(figures_dir / SHARED),
                     "stage": data_stage, "after": after_data} for s in seeds}
        if after_data:
            failures = run_tasks(tasks, jobs, dask, threads)
        else:  # sharing only: nothing to run side by side
            failures = run_tasks(tasks, 1, None, None)
        md = write_aggregate(run_dir, seeds, preset["name"])
    if failures:
        raise PipelineError("; ".join(f"seed {s}: {e}" for s, e in failures.items())
                            + f". The other seeds finished; the aggregate so far is {md}. Run the same command "
                              f"again to resume.")
    print(f"pipeline {preset['name']} over seeds {', '.join(map(str, seeds))}: run folder {run_dir}, "
          f"aggregate {md}", flush=True)
    return run_dir
