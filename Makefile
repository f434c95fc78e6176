# The README's two commands: `make reproduce` (main job, embedded synthetic data) and `make test`.
# Both create the local virtual environment .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= synthetic
TEST_WORKERS ?= 2
# torch is pinned to the release this project is tested with; on CPU-only machines any torch>=2.2 works
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup reproduce test lint bench clean-runs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

reproduce: setup
	$(PY) -m camseg_utils.pipeline --preset $(PRESET)

# whole test modules side by side in TEST_WORKERS processes of one thread each (tests/conftest.py)
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(VENV)/bin/ruff check camseg_utils tests benchmarks notebooks

# CPU benchmarks (each prints its figures; the LGG ones need ../shared/data/lgg/kaggle_3m or --root)
bench: setup
	$(PY) benchmarks/bench_load_lgg.py
	$(PY) benchmarks/bench_train.py --archs small_cnn resnet18
	$(PY) benchmarks/bench_cams.py
	$(PY) benchmarks/bench_heatmaps_lgg.py
	$(PY) benchmarks/bench_evaluate.py

clean-runs:
	rm -rf runs
