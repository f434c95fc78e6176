"""Run the numbered notebooks end to end with papermill.

    python -m camseg_utils.pipeline --preset synthetic [-p key=value ...] [--force] [--from 03_gradcam]

A preset (camseg_utils/presets/NAME.yaml, or a path to a YAML file) gives parameters shared
by every notebook (``common``) and per notebook (``notebooks``). Each notebook receives only
the parameters its ``parameters`` cell declares, plus ``run_dir`` and ``figures_dir``.

Resume: a stage is skipped when a record of its successful run exists whose key (a hash
of the notebook, its parameters and the key of the stage before it) is unchanged. So an
interrupted run resumes at the first unfinished stage, and a changed parameter re-runs
the stage it touches and everything after it. ``--force`` re-runs everything. The key
leaves out where the run and figures folders are (every output lives inside the run
folder), so a copy of a run folder resumes as the original would: copy one to try a
variant with ``--from``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .io import read_json, write_json
from .report import write_report

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
PRESET_DIR = Path(__file__).resolve().parent / "presets"
STAGES = ["01_data", "02_train", "03_gradcam", "04_segmentation", "05_dice", "06_filtered_retrain"]


class PipelineError(RuntimeError):
    pass


def load_preset(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise PipelineError(f"preset {name!r} not found (looked for {path}); known presets: {', '.join(known)}")
    preset = yaml.safe_load(path.read_text()) or {}
    preset.setdefault("name", path.stem)
    preset.setdefault("common", {})
    preset.setdefault("notebooks", {})
    unknown = set(preset["notebooks"]) - set(STAGES)
    if unknown:
        raise PipelineError(f"preset {path} names unknown notebooks {sorted(unknown)}; stages are {STAGES}")
    return preset


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` (value parsed as YAML) or ``NN_stage.key=value`` for one notebook only."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"-p {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(str(path))


def stage_parameters(preset: dict, stage: str, overrides: dict, run_dir: Path, figures_dir: Path) -> dict:
    declared = notebook_parameters(NOTEBOOK_DIR / f"{stage}.ipynb")
    params = {**preset["common"], **(preset["notebooks"].get(stage) or {})}
    for key, value in overrides.items():
        if "." in key:
            st, k = key.split(".", 1)
            if st == stage:
                params[k] = value
        else:
            params[key] = value
    # a relative data_root means: from the repository (preset) or from where the command ran (-p)
    if params.get("data_root"):
        base = Path.cwd() if "data_root" in overrides else REPO
        params["data_root"] = str((base / Path(params["data_root"]).expanduser()).resolve())
    params.update(run_dir=str(run_dir), figures_dir=str(figures_dir))
    return {k: v for k, v in params.items() if k in declared}


LOCATIONS = ("run_dir", "figures_dir")  # where a run lives, not what it computes: not in the key


def _key(stage: str, params: dict, previous: str) -> str:
    nb = (NOTEBOOK_DIR / f"{stage}.ipynb").read_bytes()
    h = hashlib.sha256(nb)
    h.update(json.dumps({k: v for k, v in params.items() if k not in LOCATIONS}, sort_keys=True, default=str).encode())
    h.update(previous.encode())
    return h.hexdigest()[:20]


def run(
    preset_name: str = "synthetic",
    overrides: dict | None = None,
    force: bool = False,
    start: str | None = None,
    stop: str | None = None,
    run_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) a preset; returns the run folder. Raises PipelineError on a failing notebook."""
    import papermill

    preset = load_preset(preset_name)
    overrides = overrides or {}
    run_dir = Path(run_dir or REPO / "runs" / preset["name"]).resolve()
    figures_dir = Path(figures_dir or REPO / "figures" / preset["name"]).resolve()
    stages = [s for s in STAGES if (NOTEBOOK_DIR / f"{s}.ipynb").exists()]
    for name, what in ((start, "--from"), (stop, "--to")):
        if name is not None and name not in stages:
            raise PipelineError(f"{what} {name!r}: expected one of {stages}")
    if stop:
        stages = stages[: stages.index(stop) + 1]
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (run_dir / "stages").mkdir(exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    previous = ""
    forcing = force
    t_all = time.perf_counter()
    for stage in stages:
        if start == stage:
            forcing = True
        params = stage_parameters(preset, stage, overrides, run_dir, figures_dir)
        key = _key(stage, params, previous)
        record_path = run_dir / "stages" / f"{stage}.json"
        out_nb = run_dir / "notebooks" / f"{stage}.ipynb"
        if not forcing and record_path.exists() and read_json(record_path).get("key") == key and out_nb.exists():
            print(f"[{stage}] up to date, skipped ({read_json(record_path)['seconds']:.0f} s when it ran)", flush=True)
            previous = key
            continue
        forcing = True  # every later stage depends on this one
        record_path.unlink(missing_ok=True)
        print(f"[{stage}] running with {json.dumps(params, default=str)}", flush=True)
        t = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{stage}.ipynb"), str(out_nb), parameters=params, cwd=str(NOTEBOOK_DIR),
                kernel_name="python3", progress_bar=progress, log_output=False,
            )
        except papermill.PapermillExecutionError as e:
            raise PipelineError(
                f"[{stage}] failed in cell {e.exec_count} ({e.ename}: {e.evalue}); the executed notebook with "
                f"the traceback is kept at {out_nb}"
            ) from None
        dt = time.perf_counter() - t
        write_json(record_path, {"stage": stage, "key": key, "params": params, "seconds": dt,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"[{stage}] done in {dt:.1f} s", flush=True)
        previous = key
        write_report(run_dir, preset["name"])  # after every stage, so an interrupted run has its report so far
    write_report(run_dir, preset["name"])
    print(f"pipeline {preset['name']}: {len(stages)} stages in {time.perf_counter() - t_all:.1f} s; "
          f"run folder {run_dir}, figures {figures_dir}, report {run_dir / 'report.md'}", flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camseg_utils.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synthetic", help="preset name (camseg_utils/presets) or YAML path")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter for every notebook (or NN_stage.key=value for one)")
    ap.add_argument("--force", action="store_true", help="re-run every stage even if up to date")
    ap.add_argument("--from", dest="start", help="re-run from this stage on (e.g. 03_gradcam)")
    ap.add_argument("--to", dest="stop", help="stop after this stage")
    ap.add_argument("--run-dir", help="run folder (default runs/<preset>)")
    ap.add_argument("--figures-dir", help="figures folder (default figures/<preset>)")
    args = ap.parse_args(argv)
    try:
        run(args.preset, parse_overrides(args.param), args.force, args.start, args.stop, args.run_dir,
            args.figures_dir)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
