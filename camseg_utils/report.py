"""The results report of a run, regenerated from its metrics files (never edited by hand).

Each notebook writes ``run_dir/metrics/NN_stage.json``; a key ``tables`` in it maps a
table title to a list of rows (dicts). The report lists them in stage order as Markdown
(``report.md``) and collects everything in ``report.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .io import atomic_path, read_json, write_json


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(empty)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def provenance_lines(run_dir: Path) -> list[str]:
    """The run's provenance (provenance.json, written by the pipeline) as a short Markdown section."""
    path = run_dir / "provenance.json"
    if not path.is_file():
        return []
    p = read_json(path)
    git = p.get("git") or {}
    commit = f"{git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}" if git else "not a git checkout"
    mach = p.get("machine") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items())
    return ["\n## Provenance\n",
            f"- commit: {commit}; package source sha256 {p.get('package_source_sha256', '')[:12]}",
            f"- preset: {p.get('preset')}; overrides: {json.dumps(p.get('overrides') or {})}; "
            f"seeds: {json.dumps(p.get('seeds') or {})}",
            f"- data fingerprints: {json.dumps({k: v[:12] for k, v in (p.get('data_fingerprints') or {}).items()})}",
            f"- machine: {mach.get('cpu')} ({mach.get('cpu_count')} cores, {mach.get('torch_threads')} torch threads); "
            f"GPU: {mach.get('gpu') or 'none'}",
            f"- versions: {versions}", f"- recorded: {p.get('recorded')}", ""]


def write_report(run_dir: str | Path, name: str = "") -> Path:
    run_dir = Path(run_dir)
    metrics = {p.stem: read_json(p) for p in sorted((run_dir / "metrics").glob("*.json"))}
    parts = [f"# camseg results: {name or run_dir.name}\n",
             f"Regenerated from `{run_dir}/metrics/*.json` by `camseg_utils.report`.\n"]
    for stage, m in metrics.items():
        parts.append(f"\n## {stage}\n")
        if m.get("summary"):
            parts.append(m["summary"].strip() + "\n")
        for title, rows in (m.get("tables") or {}).items():
            parts.append(f"\n### {title}\n\n" + markdown_table(rows))
    parts += provenance_lines(run_dir)
    with atomic_path(run_dir / "report.md") as tmp:
        tmp.write_text("\n".join(parts))
    write_json(run_dir / "report.json", metrics)
    return run_dir / "report.md"
