"""The pipeline's parameters: presets, ``-p`` overrides, and their checks against what the notebooks declare.

Every key, in a preset or in ``-p``, must be declared by a notebook's ``parameters`` cell and have
the type of that notebook's default; anything else is refused, with the closest valid name, before a
notebook runs. ``-p NN_stage.key=value`` beats ``-p key=value`` whatever their order.
"""

from __future__ import annotations

import ast
import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .data import LGG_ENV, LGG_HELP

PACKAGE_DIR = Path(__file__).resolve().parent
PRESET_DIR = PACKAGE_DIR / "presets"
STAGES = ["01_data", "02_train", "03_gradcam", "04_segmentation", "05_dice", "06_filtered_retrain", "07_pseudo_labels"]
PRESET_KEYS = {"name", "description", "common", "notebooks"}
LOCATIONS = ("run_dir", "figures_dir")  # where a run lives, not what it computes: not in the key
SET_BY_PIPELINE = LOCATIONS + ("resume",)
DATA_KEYS = ("data_root",)  # parameters naming input data: their folder's fingerprint joins the key
# parameters whose notebook default has a narrower type than the values they take
WIDER_TYPES: dict[str, tuple[type, ...]] = {"pretrained": (bool, str), "cleanup_refine": (int, type(None))}


class PipelineError(RuntimeError):
    pass


# ------------------------------------------------------------------ locations


def default_notebook_dir() -> Path:
    """The source tree's notebooks/ when running from a checkout, else the copy installed with the package."""
    source = PACKAGE_DIR.parent / "notebooks"
    if (source / f"{STAGES[0]}.ipynb").is_file():
        return source
    return Path(str(resources.files(__package__) / "notebooks"))


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -------------------------------------------------------------------- presets


def load_preset(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise PipelineError(f"preset {name!r} not found (looked for {path}); known presets: {', '.join(known)}")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"preset {path} is not valid YAML: {e}") from None
    if not isinstance(preset, dict):
        raise PipelineError(f"preset {path}: expected a mapping with keys {sorted(PRESET_KEYS)}")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise PipelineError(f"preset {path}: unknown key {key!r}{_suggest(key, PRESET_KEYS)}; "
                            f"a preset has {sorted(PRESET_KEYS)}")
    preset.setdefault("name", path.stem)
    preset["common"] = preset.get("common") or {}
    preset["notebooks"] = preset.get("notebooks") or {}
    unknown = set(preset["notebooks"]) - set(STAGES)
    if unknown:
        st = sorted(unknown)[0]
        raise PipelineError(f"preset {path} names unknown notebook {st!r}{_suggest(st, STAGES)}; stages are {STAGES}")
    preset["path"] = str(path)
    return preset


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` (value parsed as YAML) or ``NN_stage.key=value`` for one notebook only."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"-p {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise PipelineError(f"-p {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The notebook's declared parameters with their default values (parsed from the parameters cell)."""
    import papermill

    out = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = None  # an expression: no type to check against
    return out


def _type_ok(value: Any, default: Any, key: str) -> bool:
    if default is None:
        return True
    wider = WIDER_TYPES.get(key)
    if wider:
        return isinstance(value, wider) and not (bool not in wider and isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        kinds = {type(d) for d in default}
        if len(kinds) == 1 and default:  # a homogeneous default: check the elements too
            return all(_type_ok(v, default[0], "") for v in value)
        return True
    return isinstance(value, type(default))


def _type_name(default: Any, key: str) -> str:
    if key in WIDER_TYPES:
        return " or ".join("null" if t is type(None) else t.__name__ for t in WIDER_TYPES[key])
    if isinstance(default, list) and default:
        return f"a list of {type(default[0]).__name__}"
    return type(default).__name__


def validate(preset: dict, overrides: dict, declared: dict[str, dict]) -> None:
    """Refuse every key no notebook declares and every value of the wrong type, naming it."""
    everywhere = {k for params in declared.values() for k in params}
    checks: list[tuple[str, str, Any, list[str]]] = []  # (where, key, value, stages it goes to)
    for key, value in preset["common"].items():
        checks.append((f"preset {preset['name']} common", key, value, list(declared)))
    for stage, params in preset["notebooks"].items():
        for key, value in (params or {}).items():
            checks.append((f"preset {preset['name']} {stage}", key, value, [stage]))
    for key, value in overrides.items():
        if "." in key:
            stage, k = key.split(".", 1)
            if stage not in STAGES:
                raise PipelineError(f"-p {key}: unknown stage {stage!r}{_suggest(stage, STAGES)}; stages are {STAGES}")
            checks.append((f"-p {key}", k, value, [stage]))
        else:
            checks.append((f"-p {key}", key, value, list(declared)))
    for where, key, value, stages in checks:
        if key in SET_BY_PIPELINE:
            raise PipelineError(f"{where}: {key!r} is set by the pipeline (use --run-dir / --figures-dir / --force)")
        names = {k for s in stages if s in declared for k in declared[s]}
        if len(stages) == 1 and stages[0] in declared and key not in names:
            raise PipelineError(f"{where}: notebook {stages[0]} declares no parameter {key!r}"
                                f"{_suggest(key, names)}; it declares {sorted(names - set(LOCATIONS))}")
        if key not in everywhere:
            raise PipelineError(f"{where}: no notebook declares a parameter {key!r}{_suggest(key, everywhere)}")
        for s in stages:
            default = declared.get(s, {}).get(key, None)
            if key in declared.get(s, {}) and not _type_ok(value, default, key):
                raise PipelineError(f"{where}: {key}={value!r} ({type(value).__name__}) but notebook {s} expects "
                                    f"{_type_name(default, key)} (its default is {default!r})")


def stage_parameters(preset: dict, stage: str, overrides: dict, declared: dict, run_dir: Path,
                     figures_dir: Path) -> dict:
    """Preset common < preset notebook < -p key < -p stage.key (the more specific wins, whatever the order)."""
    params = {**preset["common"], **(preset["notebooks"].get(stage) or {})}
    params.update({k: v for k, v in overrides.items() if "." not in k})
    params.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.split(".", 1)[0] == stage and "." in k})
    if "data_root" in declared and params.get("dataset", declared.get("dataset")) == "lgg":
        given = "data_root" in overrides or f"{stage}.data_root" in overrides
        if not given and os.environ.get(LGG_ENV):
            params["data_root"] = os.environ[LGG_ENV]  # a user's own copy beats the preset's default
    if params.get("data_root"):  # relative: from where the command runs
        params["data_root"] = str(Path(params["data_root"]).expanduser().resolve())
    params.update(run_dir=str(run_dir), figures_dir=str(figures_dir))
    return {k: v for k, v in params.items() if k in declared}


def check_data(stage: str, params: dict) -> None:
    if params.get("dataset") == "lgg" and not Path(params.get("data_root") or "").is_dir():
        raise PipelineError(f"[{stage}] the LGG data folder {params.get('data_root')!r} does not exist. {LGG_HELP} "
                            f"Then pass -p data_root=/path/to/kaggle_3m or set {LGG_ENV}.")
