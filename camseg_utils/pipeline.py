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
stage that reads a data folder, that folder's fingerprint (names, sizes, content hashes).
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
the seeds side by side): see :mod:`camseg_utils.seeds`. ``--folds 5`` cross-validates by patient: the
study once per fold, each patient tested once, the numbers pooled over all patients with paired
comparisons (``crossval.md``): see :mod:`camseg_utils.folds` and :mod:`camseg_utils.crossval`.
"""

from __future__ import annotations

import argparse
import sys

from .folds import run_folds
from .params import (
    STAGES,
    PipelineError,
    default_notebook_dir,
    load_preset,
    notebook_parameters,
    parse_overrides,
    stage_parameters,
    validate,
)
from .records import locked
from .runner import check_range, run, stage_key
from .seeds import run_seeds

__all__ = ["STAGES", "PipelineError", "load_preset", "parse_overrides", "notebook_parameters", "stage_parameters",
           "validate", "default_notebook_dir", "run", "stage_key", "check_range", "locked", "main"]


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
    ap.add_argument("--folds", type=int, metavar="K",
                    help="cross-validate by patient: run the study once per fold, in RUN_DIR/fold-F (default run "
                         "folder ./runs/<preset>-folds), each patient tested once, and pool the numbers over all "
                         "patients (crossval.md)")
    ap.add_argument("--jobs", type=int, metavar="N",
                    help="with --seeds or --folds: run N seeds (folds) at once, sharing the cores out")
    ap.add_argument("--threads", type=int, metavar="T",
                    help="with --seeds or --folds: torch threads of each run's notebooks (default: as they are one by "
                         "one, cores // N with --jobs N); CPU numbers depend on it")
    ap.add_argument("--dask", metavar="ADDRESS",
                    help="with --seeds or --folds: run them on a Dask scheduler at ADDRESS, or 'local' for a "
                         "LocalCluster of --jobs workers (needs the extra camseg[cluster])")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.seeds is not None and args.folds is not None:
            raise PipelineError("--seeds and --folds together: give one (a cross-validation per seed is one "
                                "--folds run per -p seed=S, each in its own --run-dir)")
        if args.folds is not None:
            run_folds(args.preset, args.folds, parse_overrides(args.param), args.force, args.start, args.stop,
                      args.run_dir, args.figures_dir, notebook_dir=args.notebooks, dry_run=args.dry_run,
                      jobs=args.jobs, dask=args.dask, threads=args.threads)
            return 0
        if args.seeds is not None:
            run_seeds(args.preset, args.seeds, parse_overrides(args.param), args.force, args.start, args.stop,
                      args.run_dir, args.figures_dir, notebook_dir=args.notebooks, dry_run=args.dry_run,
                      jobs=args.jobs, dask=args.dask, threads=args.threads)
            return 0
        alone = [f for f, v in (("--jobs", args.jobs), ("--dask", args.dask), ("--threads", args.threads)) if v is not None]
        if alone:
            raise PipelineError(f"{alone[0]} acts on the folders of a multi-seed or cross-validated run: give "
                                f"--seeds or --folds too (e.g. --seeds 0 1 2)")
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
