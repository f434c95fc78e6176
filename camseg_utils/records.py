"""What a stage leaves behind in a run folder, and the lock held while a pipeline writes there.

A finished stage leaves its record ``stages/NN_stage.json`` (key, parameters, seconds, and the files
it wrote with their size, modification time and sha256) beside those files and its executed
notebook; its metrics file carries the run's provenance. :mod:`.pipeline` reads the record to decide
whether the stage is up to date; :func:`share_stage` hands a finished stage to another run folder
(the data stage that every seed folder of a multi-seed run shares, :mod:`.seeds`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from .io import UnreadableFileError, file_sha256, read_json, write_json
from .params import PipelineError

# written by the pipeline itself, for the run as a whole: no stage's output
RUN_FILES = {"provenance.json", "report.md", "report.json"}


def outputs_since(run_dir: Path, since_ns: int) -> dict[str, list]:
    """Files under run_dir written since ``since_ns``: relative path -> [size, mtime_ns, sha256]."""
    out = {}
    for dirpath, _, files in os.walk(run_dir):
        d = Path(dirpath)
        if d == run_dir / "stages" or run_dir / "stages" in d.parents:
            continue
        for f in files:
            p = d / f
            st = p.stat()
            if st.st_mtime_ns >= since_ns and not f.startswith(".") and not (d == run_dir and f in RUN_FILES):
                out[str(p.relative_to(run_dir))] = [st.st_size, st.st_mtime_ns, file_sha256(p)]
    return out


def changed_outputs(run_dir: Path, outputs: dict[str, list]) -> list[str]:
    """Recorded outputs that are gone or differ (a copy with new times but the same bytes is unchanged)."""
    bad = []
    for rel, (size, mtime, sha) in outputs.items():
        p = run_dir / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            bad.append(rel)
            continue
        if st.st_size != size or (st.st_mtime_ns != mtime and file_sha256(p) != sha):
            bad.append(rel)
    return bad


def read_record(path: Path) -> dict | None:
    """A stage record, or None when missing or unreadable (the stage then re-runs)."""
    try:
        rec = read_json(path)
    except (FileNotFoundError, UnreadableFileError):
        return None
    return rec if isinstance(rec, dict) else None


def stamp_provenance(metrics_file: Path, record: dict) -> None:
    """Add the run's provenance to a metrics file a stage wrote (the file is rewritten atomically)."""
    if metrics_file.is_file():
        m = read_json(metrics_file)
        if isinstance(m, dict):
            m["provenance"] = record
            write_json(metrics_file, m)


# ---------------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold run_dir/.lock for the whole run; a second pipeline on the folder is refused."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = run_dir / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise PipelineError(f"run folder {run_dir} is in use by a running pipeline ({holder}); wait for it to "
                            f"finish, or give this run another --run-dir") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


# ---------------------------------------------------------------------- sharing a finished stage


def _link(src: Path, dst: Path) -> None:
    """dst becomes a hard link to src (a copy across file systems), replaced atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.link")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def share_stage(src: str | Path, dst: str | Path, stage: str) -> bool:
    """Give run folder ``dst`` the finished ``stage`` of ``src``: its outputs, executed notebook and record.

    The record is the same, so ``dst``'s pipeline finds the stage up to date (same key, same output
    bytes) and keys the next stage on it. Returns False when ``dst`` already held exactly this.
    Files are written before the record, so an interrupted share leaves no record and is redone.
    """
    src, dst = Path(src), Path(dst)
    rec = read_record(src / "stages" / f"{stage}.json")
    if rec is None or rec.get("status") != "done":
        raise PipelineError(f"{src} has no finished {stage} to share (stages/{stage}.json)")
    record_path, nb = Path("stages") / f"{stage}.json", Path("notebooks") / f"{stage}.ipynb"
    old = read_record(dst / record_path)
    outputs = rec.get("outputs", {})
    if old == rec and (dst / nb).is_file() and not changed_outputs(dst, outputs):
        return False
    (dst / record_path).unlink(missing_ok=True)
    for rel in (old or {}).get("outputs", {}):  # a previous data stage's files that this one did not write
        if rel not in outputs:
            (dst / rel).unlink(missing_ok=True)
    for rel in list(outputs) + [str(nb)]:
        _link(src / rel, dst / rel)
    write_json(dst / record_path, rec)
    return True


def share_figures(src: Path, dst: Path) -> None:
    """Give figures folder ``dst`` the figures of ``src`` (none when ``src`` does not exist)."""
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("."):
                _link(f, dst / f.name)
