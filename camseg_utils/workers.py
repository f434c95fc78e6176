"""Running the folders of a multi-seed or cross-validated run (:mod:`.seeds`, :mod:`.folds`): one by one,
in worker processes, or on Dask.

:func:`run_seed` is what every mode runs once per seed or fold: it hands a seed folder the shared data
stage (:func:`.records.share_stage`; a fold has its own) and runs the pipeline there, with the notebook kernels' torch
and BLAS threads pinned (:func:`pinned_threads`). :func:`run_tasks` runs it for every seed one by
one, in ``--jobs`` spawned worker processes or on a Dask cluster (``--dask``), and collects the
seeds that failed, so the others still finish. Worker processes and Dask workers import
:func:`run_seed` from this module by name.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path
from typing import Iterator

from . import runner
from .params import PipelineError
from .records import locked, share_figures, share_stage

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CLUSTER_HELP = "pip install 'camseg[cluster]' (or pip install 'dask[distributed]')"


class _Prefixed:
    """A text stream that starts every line with a label (seed runs printing side by side)."""

    def __init__(self, stream, label: str):
        self.stream, self.label, self.fresh = stream, label, True

    def write(self, text: str) -> int:
        out = []
        for part in text.splitlines(keepends=True):
            out.append((self.label if self.fresh else "") + part)
            self.fresh = part.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, encoding, fileno ...: the stream's own
        return getattr(self.stream, name)


def _threads_on_dask_worker() -> int:
    from distributed import get_worker

    return max(1, cores() // max(1, get_worker().state.nthreads))


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Kernels started inside get ``threads`` torch/BLAS threads (0: as they are); restored afterwards."""
    if not threads:
        yield
        return
    import torch

    saved, before = {v: os.environ.get(v) for v in THREAD_VARS}, torch.get_num_threads()
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    torch.set_num_threads(threads)  # this process's count is the one the provenance record reads
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
        torch.set_num_threads(before)


def run_seed(task: dict, threads: int | None = 0, label: str | None = None) -> str | None:
    """Give one seed folder the shared data stage, then run its pipeline.

    ``task``: ``run`` (keyword arguments of :func:`.runner.run`), ``shared`` and ``shared_figures``
    (the data stage's run and figures folders; None: nothing shared, as for a fold), ``stage`` (the
    data stage), ``after`` (False: share only). ``threads``: torch/BLAS threads of its notebook kernels, set in the environment the kernels
    inherit; 0 leaves them as they are; None: this Dask worker's machine's cores // its threads.
    Returns None on success, else the pipeline's error message (other errors propagate).
    """
    if threads is None:
        threads = _threads_on_dask_worker()
    out = _Prefixed(sys.stdout, label) if label else sys.stdout
    run = task["run"]
    folder = Path(run["run_dir"])
    try:
        with pinned_threads(threads if task["after"] else 0), contextlib.redirect_stdout(out):
            for sub in ("notebooks", "stages"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            if task.get("shared"):
                with locked(folder):
                    share_stage(task["shared"], folder, task["stage"])
                share_figures(Path(task["shared_figures"]), Path(run["figures_dir"]))
            if task["after"]:
                runner.run(**run)
    except PipelineError as e:
        return str(e)
    return None


def run_tasks(tasks: dict[int, dict], jobs: int | None, dask: str | None, threads: int | None,
              kind: str = "seed") -> dict[int, str]:
    """Run every seed's (or fold's: ``kind``) task; ``{seed: error}`` of those that failed."""
    failures: dict[int, str] = {}
    if dask:
        return _dask_results(tasks, jobs, dask, threads, kind)
    if not jobs or jobs == 1:
        for seed, task in tasks.items():
            err = run_seed(task, threads or 0)
            if err:
                print(f"[{kind} {seed}] failed: {err}", flush=True)
                failures[seed] = err
        return failures
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    n = min(jobs, len(tasks))
    threads = threads or max(1, cores() // n)
    print(f"{len(tasks)} {kind} runs in {n} worker processes, {threads} threads each", flush=True)
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        futures = {seed: pool.submit(run_seed, _quiet(task), threads, f"[{kind} {seed}] ")
                   for seed, task in tasks.items()}
        for seed, f in futures.items():
            _collect(seed, f.result, failures, kind)
    return failures


def _quiet(task: dict) -> dict:
    """No progress bars from runs side by side."""
    return dict(task, run=dict(task["run"], progress=False))


def _collect(seed: int, result, failures: dict[int, str], kind: str = "seed") -> None:
    try:
        err = result()
    except Exception as e:  # a worker that died, or a bug: the other seeds still finish
        err = f"{type(e).__name__}: {e}"
    if err:
        print(f"[{kind} {seed}] failed: {err}", flush=True)
        failures[seed] = err


def check_parallel(jobs: int | None, threads: int | None, dask: str | None, kind: str = "seed") -> None:
    """Refuse bad --jobs / --threads / --dask values for runs of several seeds or folds (``kind``)."""
    for name, v in (("--jobs", jobs), ("--threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PipelineError(f"{name} {v!r}: expected a positive integer")
    if dask and jobs and dask != "local":
        raise PipelineError(f"--jobs with --dask {dask}: the scheduler's workers decide how many {kind}s run at once; "
                            f"--jobs counts the workers of --dask local only")
    if dask:
        require_dask()


def require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise PipelineError(f"--dask needs Dask's distributed scheduler, the optional extra 'cluster': {CLUSTER_HELP}") \
            from None


def _dask_results(tasks: dict[int, dict], jobs: int | None, address: str, threads: int | None,
                  kind: str = "seed") -> dict[int, str]:
    require_dask()
    from distributed import Client, LocalCluster

    failures: dict[int, str] = {}
    with contextlib.ExitStack() as stack:
        if address == "local":
            n = min(jobs, len(tasks)) if jobs else min(len(tasks), cores())
            threads = threads or max(1, cores() // n)
            cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            print(f"{len(tasks)} {kind} runs on a Dask LocalCluster of {n} workers, {threads} threads each", flush=True)
        else:
            try:
                client = stack.enter_context(Client(address, timeout=30))
            except (OSError, TimeoutError) as e:
                raise PipelineError(f"--dask {address}: no Dask scheduler answered there ({e}); give its address "
                                    f"(e.g. tcp://host:8786) or 'local'") from None
            print(f"{len(tasks)} {kind} runs on the Dask scheduler at {address}", flush=True)
        run_id = uuid.uuid4().hex[:8]
        futures = {seed: client.submit(run_seed, _quiet(task), threads,
                                       f"[{kind} {seed}] " if address == "local" else None,
                                       key=f"camseg-{kind}-{seed}-{run_id}", pure=False)
                   for seed, task in tasks.items()}
        for seed, f in futures.items():
            _collect(seed, f.result, failures, kind)
    return failures
