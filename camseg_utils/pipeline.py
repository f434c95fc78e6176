"""Run the numbered notebooks end to end with papermill.

    python -m camseg_utils.pipeline --preset synthetic [-p key=value ...] [--force] [--from 03_gradcam]
    camseg run --preset synthetic ...                      (the same, as a console script)

A preset (camseg_utils/presets/NAME.yaml, or a path to a YAML file) gives parameters shared
by every notebook (``common``) and per notebook (``notebooks``). Each notebook receives only
the parameters its ``parameters`` cell declares, plus ``run_dir`` and ``figures_dir``.
Every key, in the preset or in ``-p``, must be declared by a notebook and have the type of
that notebook's default; anything else is refused before a notebook runs. ``-p
NN_stage.key=value`` beats ``-p key=value`` whatever their order.

What decides a re-run: a stage is skipped when a record of its successful run exists whose
key is unchanged and whose output files are still those it wrote. The key is a hash of the
notebook, its parameters, the key of the stage before it, the source of every
``camseg_utils`` module the notebook imports (directly or through other modules) and, for a
stage that reads a data folder, that folder's fingerprint (names, sizes, modification times).
So a change anywhere upstream re-runs what depends on it and nothing else. A stage that was
interrupted resumes its own work (a classifier from ``last.pt``) only when re-run with the
same key; a stage re-run for any other reason, and every stage under ``--force`` or
``--from``, recomputes from scratch. The key leaves out where the run and figures folders
are, so a copy of a run folder resumes as the original would.

A run folder is locked while a pipeline works in it (the lock and the stage records:
:mod:`camseg_utils.records`). Every metrics file is stamped with the run's provenance (commit,
source hash, data fingerprint, preset and overrides, seeds, library versions, machine);
``provenance.json`` holds the same.

``--seeds 0 1 2`` runs the study once per training seed, one run folder each, sharing the data
stage, and writes the numbers' mean ± sd over seeds (``--jobs N`` / ``--dask ADDRESS|local`` run
the seeds side by side): see :mod:`camseg_utils.seeds`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from . import provenance as prov
from .io import write_json
from .params import (
    DATA_KEYS,
    LOCATIONS,
    STAGES,
    PipelineError,
    _suggest,
    check_data,
    default_notebook_dir,
    load_preset,
    notebook_parameters,
    parse_overrides,
    stage_parameters,
    validate,
)
from .records import changed_outputs, locked, outputs_since, read_record, stamp_provenance
from .report import write_report

__all__ = ["STAGES", "PipelineError", "load_preset", "parse_overrides", "notebook_parameters", "stage_parameters",
           "validate", "default_notebook_dir", "run", "main"]



# ---------------------------------------------------------------- stage keys


def stage_key(notebook: Path, params: dict, previous: str, data_fingerprints: dict[str, str]) -> str:
    nb_bytes = notebook.read_bytes()
    sources = prov.module_closure(prov.notebook_modules(json.loads(nb_bytes)))
    h = hashlib.sha256(nb_bytes)
    h.update(json.dumps({k: v for k, v in params.items() if k not in LOCATIONS}, sort_keys=True, default=str).encode())
    h.update(previous.encode())
    h.update(prov.files_sha256(sources).encode())
    h.update(json.dumps(data_fingerprints, sort_keys=True).encode())
    return h.hexdigest()[:20]


def _why_run(rec: dict | None, key: str, forced: str, out_nb: Path, run_dir: Path) -> str | None:
    """Why a stage must run, or None when its finished record still holds; ``forced`` says why it must."""
    if forced:
        return forced
    if rec is None:
        return "never finished here (no readable record)"
    if rec.get("key") != key:
        return "notebook, parameters, package source, data or an upstream stage changed"
    if rec.get("status", "done") != "done":
        return "interrupted: resuming"
    if not out_nb.exists():
        return f"its executed notebook {out_nb} is missing"
    changed = changed_outputs(run_dir, rec.get("outputs", {}))
    if changed:
        return f"outputs changed since it ran: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}"
    return None


# ----------------------------------------------------------------------- run


def run(
    preset_name: str = "synthetic",
    overrides: dict | None = None,
    force: bool = False,
    start: str | None = None,
    stop: str | None = None,
    run_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    progress: bool = True,
    notebook_dir: str | Path | None = None,
    dry_run: bool = False,
    shared_stages: tuple[str, ...] = (),
):
    """Run (or resume) a preset; returns the run folder. Raises PipelineError on bad input or a failing notebook.

    ``dry_run``: run nothing, print and return the plan, a list of (stage, 'run' or 'skip', why).
    ``shared_stages``: stages whose outputs were linked in from another run folder (a multi-seed
    run's data stage): never run here; one that is not up to date is an error.
    """
    import papermill

    preset = load_preset(preset_name)
    overrides = overrides or {}
    nb_dir = Path(notebook_dir) if notebook_dir else default_notebook_dir()
    stages = [s for s in STAGES if (nb_dir / f"{s}.ipynb").exists()]
    if not stages:
        raise PipelineError(f"no notebooks found in {nb_dir} (expected {STAGES[0]}.ipynb ...)")
    check_range(stages, start, stop)
    run_dir = Path(run_dir or Path.cwd() / "runs" / preset["name"]).resolve()
    figures_dir = Path(figures_dir or Path.cwd() / "figures" / preset["name"]).resolve()
    if (run_dir / "seeds.json").is_file():
        raise PipelineError(f"--run-dir {run_dir} holds a multi-seed run: add its --seeds, or give one seed's "
                            f"folder ({run_dir}/seed-<S>) with the seed folder's overrides (seeds.json)")
    declared = {s: notebook_parameters(nb_dir / f"{s}.ipynb") for s in stages}
    validate(preset, overrides, declared)
    if run_dir.exists() and not run_dir.is_dir():
        raise PipelineError(f"--run-dir {run_dir} is a file; expected a folder")
    if stop:
        stages = stages[: stages.index(stop) + 1]
    params_of = {s: stage_parameters(preset, s, overrides, declared[s], run_dir, figures_dir) for s in stages}
    for s in stages:
        check_data(s, params_of[s])
    if dry_run:
        return _run_stages(preset, overrides, stages, declared, params_of, nb_dir, run_dir, figures_dir, force, start,
                           progress, papermill, dry_run, shared_stages)
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (run_dir / "stages").mkdir(exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        return _run_stages(preset, overrides, stages, declared, params_of, nb_dir, run_dir, figures_dir, force, start,
                           progress, papermill, dry_run, shared_stages)


def check_range(stages: list[str], start: str | None, stop: str | None) -> None:
    """--from and --to name stages, in that order."""
    for name, what in ((start, "--from"), (stop, "--to")):
        if name is not None and name not in stages:
            raise PipelineError(f"{what} {name!r}: expected one of {stages}{_suggest(name, stages)}")
    if start and stop and stages.index(start) > stages.index(stop):
        raise PipelineError(f"--from {start} comes after --to {stop}: nothing to run")


def _run_stages(preset, overrides, stages, declared, params_of, nb_dir, run_dir, figures_dir, force, start, progress,
                papermill, dry_run=False, shared_stages=()):
    previous = ""
    forced = "--force" if force else ""
    plan: list[tuple[str, str, str]] = []
    fingerprints: dict[str, str] = {}
    seeds = {s: {k: v for k, v in p.items() if k in ("seed", "seeds")} for s, p in params_of.items()}
    t_all = time.perf_counter()
    for stage in stages:
        if start == stage:
            forced = f"--from {start}"
        params = params_of[stage]
        data_fp = {k: prov.data_fingerprint(params[k]) for k in DATA_KEYS if params.get(k)}
        fingerprints.update({f"{stage}.{k}": v for k, v in data_fp.items()})
        nb = nb_dir / f"{stage}.ipynb"
        key = stage_key(nb, params, previous, data_fp)
        record_path = run_dir / "stages" / f"{stage}.json"
        out_nb = run_dir / "notebooks" / f"{stage}.ipynb"
        rec = read_record(record_path)
        why = _why_run(rec, key, forced, out_nb, run_dir)
        if why is None:
            print(f"[{stage}] up to date, skipped ({rec.get('seconds', 0):.0f} s when it ran)", flush=True)
            plan.append((stage, "skip", "up to date"))
            previous = key
            continue
        plan.append((stage, "run", why))
        if stage in shared_stages and not dry_run:
            raise PipelineError(f"[{stage}] is shared from another run folder but is not up to date in {run_dir} "
                                f"({why}); it is never run here")
        if dry_run:
            print(f"[{stage}] would run: {why}", flush=True)
            previous, forced = key, forced or "an upstream stage runs"
            continue
        print(f"[{stage}] {why}", flush=True)
        same_key = rec is not None and rec.get("key") == key
        # an interrupted stage picks its own work up again only under the same key
        resume = not forced and same_key and rec.get("status") == "running"
        forced = forced or "an upstream stage ran"  # every later stage depends on this one
        call = dict(params)
        if "resume" in declared[stage]:
            call["resume"] = resume
        write_json(record_path, {"stage": stage, "key": key, "status": "running",
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"[{stage}] running with {json.dumps(params, default=str)}", flush=True)
        t = time.perf_counter()
        since = time.time_ns() - 1_000_000  # filesystems round times: a margin of 1 ms
        try:
            papermill.execute_notebook(
                str(nb), str(out_nb), parameters=call, cwd=str(nb.parent if os.access(nb.parent, os.W_OK) else run_dir),
                kernel_name="python3", progress_bar=progress, log_output=False,
            )
        except papermill.PapermillExecutionError as e:
            raise PipelineError(
                f"[{stage}] failed in cell {e.exec_count} ({e.ename}: {e.evalue}); the executed notebook with "
                f"the traceback is kept at {out_nb}"
            ) from None
        dt = time.perf_counter() - t
        record = prov.provenance(preset["name"], overrides, seeds, fingerprints)
        record["preset_file"] = preset["path"]
        write_json(run_dir / "provenance.json", record)
        stamp_provenance(run_dir / "metrics" / f"{stage}.json", record)
        outputs = outputs_since(run_dir, since)
        write_json(record_path, {"stage": stage, "key": key, "status": "done", "params": params, "seconds": dt,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": outputs})
        print(f"[{stage}] done in {dt:.1f} s", flush=True)
        previous = key
        write_report(run_dir, preset["name"])  # after every stage, so an interrupted run has its report so far
    if dry_run:
        return plan
    write_report(run_dir, preset["name"])
    print(f"pipeline {preset['name']}: {len(stages)} stages in {time.perf_counter() - t_all:.1f} s; "
          f"run folder {run_dir}, figures {figures_dir}, report {run_dir / 'report.md'}", flush=True)
    return run_dir


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default="synthetic", help="preset name (camseg_utils/presets) or YAML path")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter for every notebook (or NN_stage.key=value for one)")
    ap.add_argument("--force", action="store_true", help="re-run every stage from scratch even if up to date")
    ap.add_argument("--from", dest="start", help="re-run from this stage on, from scratch (e.g. 03_gradcam)")
    ap.add_argument("--to", dest="stop", help="stop after this stage")
    ap.add_argument("--run-dir", help="run folder (default ./runs/<preset>)")
    ap.add_argument("--figures-dir", help="figures folder (default ./figures/<preset>)")
    ap.add_argument("--notebooks", help="folder of the numbered notebooks (default: the ones shipped with camseg)")
    ap.add_argument("--dry-run", action="store_true", help="say which stages would run and why; run nothing")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="S",
                    help="run the study once per training seed, in RUN_DIR/seed-S (default run folder "
                         "./runs/<preset>-seeds), and write the numbers' mean ± sd over seeds (aggregate.md)")
    ap.add_argument("--jobs", type=int, metavar="N", help="with --seeds: run N seeds at once, sharing the cores out")
    ap.add_argument("--threads", type=int, metavar="T",
                    help="with --seeds: torch threads of each seed's notebooks (default: as they are one by one, "
                         "cores // N with --jobs N); CPU numbers depend on it")
    ap.add_argument("--dask", metavar="ADDRESS",
                    help="with --seeds: run the seeds on a Dask scheduler at ADDRESS, or 'local' for a LocalCluster "
                         "of --jobs workers (needs the extra camseg[cluster])")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.seeds is not None:
            from .seeds import run_seeds

            run_seeds(args.preset, args.seeds, parse_overrides(args.param), args.force, args.start, args.stop,
                      args.run_dir, args.figures_dir, notebook_dir=args.notebooks, dry_run=args.dry_run,
                      jobs=args.jobs, dask=args.dask, threads=args.threads)
            return 0
        alone = [f for f, v in (("--jobs", args.jobs), ("--dask", args.dask), ("--threads", args.threads)) if v is not None]
        if alone:
            raise PipelineError(f"{alone[0]} acts on the seed folders of a multi-seed run: give --seeds too "
                                f"(e.g. --seeds 0 1 2)")
        run(args.preset, parse_overrides(args.param), args.force, args.start, args.stop, args.run_dir,
            args.figures_dir, notebook_dir=args.notebooks, dry_run=args.dry_run)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
