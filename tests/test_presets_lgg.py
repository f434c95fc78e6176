"""The LGG presets' code paths on the CPU with tiny overrides, so a GPU-only configuration cannot rot.

Each run takes a few real patients at a small size for one epoch: the numbers mean nothing, the
path through the notebooks (architectures, layers, methods, clean-ups, re-training) is the point.
``lgg_cpu`` runs every notebook; ``lgg`` stops after 05: with these overrides its 06 and 07 differ
from ``lgg_cpu``'s only in the re-trained architecture, whose training its own 02 runs, and they
would double this module's time.
"""

import json

import pytest

from camseg_utils import pipeline

from .conftest import LGG_ROOT

TINY = {
    "01_data.n_patients": 6,
    "image_size": 64,
    "device": "cpu",
    "batch_size": 16,
    "02_train.epochs": 1,
    "05_dice.thresholds": [0.3, 0.6],
    "05_dice.top_ks": [5],
    "05_dice.guided_radii": [0, 4],
    "05_dice.head_gates": [True],
    "05_dice.prob_gates": [0.0],
    "05_dice.unet_epochs": 1,
    "05_dice.unet_width": 4,
    "05_dice.n_boot": 20,
    "06_filtered_retrain.ks": [10],
    "06_filtered_retrain.methods": ["layercam"],
    "06_filtered_retrain.seeds": [0, 1],
    "06_filtered_retrain.refined_ks": [10],
    "06_filtered_retrain.retrain_size": 32,
    "06_filtered_retrain.retrain_epochs": 1,
    "07_pseudo_labels.bands": [0.3],
    "07_pseudo_labels.rounds": 1,
    "07_pseudo_labels.epochs": 1,
    "07_pseudo_labels.n_boot": 20,
}


@pytest.mark.skipif(not LGG_ROOT.is_dir(), reason=f"LGG data not found at {LGG_ROOT} (set CAMSEG_LGG_ROOT)")
@pytest.mark.parametrize("preset", ["lgg_cpu", "lgg"])
def test_lgg_preset_runs_end_to_end_on_a_few_patients(preset, tmp_path):
    full = pipeline.load_preset(preset)
    run_dir = pipeline.run(preset, {"data_root": str(LGG_ROOT), **TINY}, run_dir=tmp_path / "run",
                           figures_dir=tmp_path / "fig", progress=False, stop="05_dice" if preset == "lgg" else None)
    manifest = json.loads((run_dir / "metrics" / "01_data.json").read_text())
    assert manifest["provenance"]["data_fingerprints"]
    clf = json.loads((run_dir / "metrics" / "02_train.json").read_text())["tables"]["Classifiers (test split)"]
    assert {r["arch"] for r in clf} == set(full["common"]["architectures"])
    dice = json.loads((run_dir / "metrics" / "05_dice.json").read_text())
    rows = dice["tables"]["Segmentation (test split)"]
    assert {r["method"] for r in rows} >= set(full["notebooks"]["05_dice"]["methods"])
    assert {r["layer"] for r in rows} - {"-"} == set(full["common"]["layers"])
    assert dice["classifier_sha256"]
    if preset == "lgg":
        assert not (run_dir / "metrics" / "06_filtered_retrain.json").exists()
        return
    assert (run_dir / "metrics" / "06_filtered_retrain.json").is_file()
    assert json.loads((run_dir / "metrics" / "07_pseudo_labels.json").read_text())["pseudo"]["round"] in (0, 1)
