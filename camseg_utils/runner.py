"""One run of the numbered notebooks in one run folder: stage keys, what to skip, resume or re-run.

:mod:`camseg_utils.pipeline` is its command line (and, through :mod:`camseg_utils.seeds`, the
multi-seed form); the rules it follows are described there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
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
    stage_parameters,
    validate,
)
from .records import changed_outputs, locked, outputs_since, read_record, stamp_provenance
from .report import write_report

__all__ = ["stage_key", "run", "check_range"]


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


# ------------------------------------------------------------------- kernels

# glibc's malloc gives a freed block of more than a few hundred kB back to the OS and maps fresh
# pages for the next one, and every first touch of such a page is a page fault: tensors are
# allocated and freed by the thousand per second. Stage kernels (and the worker processes they
# start) keep freed memory for reuse instead; blocks above 256 MiB still come from and go back
# to the OS. Arithmetic is unchanged; docs/experiments.md has the time it saves. A value the user
# set in the environment wins; other C libraries ignore these names.
KEPT_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@contextmanager
def _environment(changes: dict[str, str]):
    """os.environ with ``changes`` applied for the block (kernels started inside inherit them); restored after."""
    before = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kept_memory():
    """Kernels started inside get :data:`KEPT_MEMORY` in their environment (where not already set); restored after."""
    return _environment({k: v for k, v in KEPT_MEMORY.items() if k not in os.environ})


# A kernel imports camseg_utils from its own sys.path. Where camseg is also installed from another
# checkout (an editable install elsewhere, an older release), the notebooks would run that code while
# the run records this one's commit and source digest. Stage kernels, and the workers they start, get
# the folder this package lies in first on PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def same_package():
    """Kernels started inside import this camseg_utils, whatever else is installed; PYTHONPATH restored after."""
    old = os.environ.get("PYTHONPATH")
    return _environment({"PYTHONPATH": PACKAGE_ROOT + (os.pathsep + old if old else "")})


@contextmanager
def kernel_manager():
    """The kernel manager class for one stage's kernel (None: jupyter_client's default).

    Over TCP, jupyter_client picks a free port, releases it and lets the kernel bind it: kernels started
    at the same moment by parallel seed or fold runs can be handed the same port, and one dies before it
    answers. Where Unix sockets exist the kernel talks over them instead, in a folder of its own, so two
    kernels never share an address.
    """
    if os.name != "posix":
        yield None
        return
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    with tempfile.TemporaryDirectory(prefix="camseg-kernel-") as folder:

        class SocketFileKernelManager(AsyncKernelManager):
            @default("transport")
            def _transport_default(self):
                return "ipc"

            @default("ip")
            def _ip_default(self):
                return os.path.join(folder, "kernel")

        yield SocketFileKernelManager


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
            with kept_memory(), same_package(), kernel_manager() as manager_class:
                papermill.execute_notebook(
                    str(nb), str(out_nb), parameters=call, kernel_name="python3", progress_bar=progress,
                    cwd=str(nb.parent if os.access(nb.parent, os.W_OK) else run_dir), log_output=False,
                    **({"kernel_manager_class": manager_class} if manager_class else {}),
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
