"""What the README's tables and example figure read from a finished run folder: its metrics files,
the stage metrics a table needs, the data the run was on and the commit that made it.

:mod:`.readme_tables` renders the tables and draws the figure from these.
"""

from __future__ import annotations

from pathlib import Path

from .io import read_json


class ReadmeError(ValueError):
    """A run folder without the metrics a table needs, or a README block that cannot be filled."""


def load_metrics(run_dir: str | Path) -> dict[str, dict]:
    """``{stage: metrics}`` from ``run_dir/metrics/*.json`` (at least one must exist)."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / "metrics").glob("*.json"))
    if not files:
        raise ReadmeError(f"{run_dir / 'metrics'} holds no metrics JSON: is {run_dir} a finished run folder?")
    return {p.stem: read_json(p) for p in files}


def stage_metrics(metrics: dict[str, dict], stage: str, run_dir: Path) -> dict:
    """One stage's metrics out of :func:`load_metrics`; a missing one names the file and the stage to run."""
    if stage not in metrics:
        raise ReadmeError(f"{run_dir / 'metrics' / (stage + '.json')} is missing: run the pipeline through {stage}")
    return metrics[stage]


def _find(d, names: tuple[str, ...]):
    """The first value under any key in ``names``, searched depth-first through nested dicts."""
    if isinstance(d, dict):
        for k in names:
            if isinstance(d.get(k), (str, bool)):
                return d[k]
        for v in d.values():
            found = _find(v, names)
            if found is not None:
                return found
    return None


def provenance(metrics: dict) -> str:
    """'commit abc1234' (with ', uncommitted changes' when the tree was dirty) from a metrics file's
    provenance record, or a note that the run did not record one."""
    prov = metrics.get("provenance")
    commit = _find(prov, ("git_commit", "commit")) if prov else None
    if not commit:
        return "commit not recorded"
    dirty = _find(prov, ("git_dirty", "dirty"))
    return f"commit {str(commit)[:12]}" + (", uncommitted changes" if dirty else "")


def data_line(metrics: dict[str, dict], test_split: bool = True) -> str:
    """What the run was on, from notebook 01's metrics: dataset, patients, slices, size and (``test_split``) the
    test split; a cross-validated run leaves the last out, each fold testing other patients."""
    d = metrics.get("01_data")
    if not d:
        return ""
    test = next((r for rows in (d.get("tables") or {}).values() for r in rows if r.get("split") == "test"), None)
    text = f"{d.get('dataset')}: {d.get('patients')} patients, {d.get('slices')} slices at {d.get('image_size')} px"
    if test and test_split:
        text += f"; test split {test['patients']} patients, {test['slices']} slices ({test['tumour']} with tumour)"
    return text + ". "
