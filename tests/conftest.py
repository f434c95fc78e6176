import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camseg_utils.workers import THREAD_VARS  # imports no torch

# One torch/BLAS thread for every test and every notebook kernel a test starts, set before torch is imported
# (the seed and fold tests pass --threads of their own): results move with the thread count, so the pinned
# numbers (test_regression.py) hold on any number of cores, and `make test`'s side-by-side workers
# (pytest-xdist) each get a core instead of sharing every core.
os.environ.update({v: "1" for v in THREAD_VARS})
# Training in float32 on every CPU for the same reason: bfloat16 training (where a CPU has it natively) gives
# other numbers than float32, as another seed would, and the pinned ones must hold on CPUs with and without it.
# test_models_train.py trains in both precisions.
os.environ["CAMSEG_TRAIN_FP32"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# modules by their cost, the largest first: `make test` hands whole modules to its workers in this order
# (--dist loadfile --no-loadscope-reorder), so no worker is left with a long module at the end; the smoke
# run's first user leads
SLOW_MODULES = ("test_trust.py", "test_presets_lgg.py", "test_folds.py", "test_seeds.py", "test_pipeline.py",
                "test_cams.py", "test_retrain.py", "test_models_train.py", "test_data.py", "test_pseudo_labels.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order inside a module stays


REPO = Path(__file__).resolve().parents[1]
# the real LGG data: $CAMSEG_LGG_ROOT, else the copy beside the repository; tests that need it skip without it
LGG_ROOT = Path(os.environ.get("CAMSEG_LGG_ROOT") or REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m")


def write_case(root: Path, case: str, n_slices: int, ext: str, size: int = 32, seed: int = 0,
               tumour_slices=(2, 3)) -> Path:
    """A tiny kaggle_3m patient folder: RGB images with a bright square where the mask is."""
    rng = np.random.default_rng(seed)
    d = root / case
    d.mkdir(parents=True, exist_ok=True)
    for s in range(1, n_slices + 1):
        img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if s in tumour_slices:
            mask[8:14, 10:18] = 255
            img[8:14, 10:18] = 250
        Image.fromarray(img).save(d / f"{case}_{s}.{ext}")
        Image.fromarray(mask).save(d / f"{case}_{s}_mask.{ext}")
    return d


@pytest.fixture
def lgg_tree(tmp_path):
    """Six patients from three institutions, two as .tif (as from Kaggle) and four as .png."""
    root = tmp_path / "kaggle_3m"
    cases = ["TCGA_CS_0001_19990101", "TCGA_CS_0002_19990101", "TCGA_DU_0003_20000101",
             "TCGA_DU_0004_20000101", "TCGA_HT_0005_20010101", "TCGA_HT_0006_20010101"]
    for i, case in enumerate(cases):
        write_case(root, case, 12, "tif" if i < 2 else "png", seed=i)
    return root


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke preset, run once per pytest run and shared by every test module: (run folder, figures folder).

    Tests that change the run folder must work on a copy (shutil.copytree)."""
    from camseg_utils import pipeline

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist workers (make test): the first to ask runs it in their shared temporary folder, the others wait
        from filelock import FileLock

        base = tmp_path_factory.getbasetemp().parent / "smoke"
        guard = FileLock(f"{base}.lock")
    else:
        base, guard = tmp_path_factory.mktemp("smoke"), contextlib.nullcontext()
    with guard:
        if not (base / "done").exists():
            pipeline.run("smoke", run_dir=base / "run", figures_dir=base / "fig", progress=False)
            (base / "done").touch()
    return base / "run", base / "fig"
