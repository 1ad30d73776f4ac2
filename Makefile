# Two commands do all set-up on a fresh machine:
#   make demo   the whole pipeline on the bundled sample
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONHASHSEED := 0

.PHONY: venv test demo recipe aptos plan kernel lint bench gpu-check clean

venv: $(STAMP)

# Rebuilt whenever the pinned requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# one worker per core, a test file per worker (module fixtures stay whole): 7.5-8.5 min instead of 14 on 2 cores
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

# preprocess -> train EfficientNet-Lite0 (real ImageNet weights) on 4 folds -> infer with TTA -> blend -> report
demo: $(STAMP)
	$(PY) -m kaggle_utils.run configs/demo.yaml

# the default CPU recipe: 5-fold CV on ../shared/data/idrid_train (about an hour on 2 cores)
recipe: $(STAMP)
	$(PY) -m kaggle_utils.run configs/idrid_cpu.yaml

# APTOS 2019 (the Ben-filtered copy in ../shared/data): Lite0, 5 folds x 12 epochs 160->224 px, held-out QWK
# 0.88-0.89 (94-115 min on 2 cores with the venv install, machine-dependent);
# `make plan CONFIG=configs/kaggle_gpu.yaml` prints any config's steps and times
aptos: $(STAMP)
	$(PY) -m kaggle_utils.run configs/aptos_cpu.yaml

CONFIG ?= configs/aptos_cpu.yaml
plan: $(STAMP)
	$(PY) -m kaggle_utils.run $(CONFIG) --plan

# the offline Kaggle bundle from the demo's runs, verified without network, with its run-time plan
kernel: $(STAMP)
	$(PY) build_kernel.py outputs/demo/runs/lite0 --out outputs/kernel_bundle --verify --plan

# on a CUDA machine: AMP fp16 + GradScaler training, channels_last, TTA inference and DDP (world size 1, nccl)
# of every architecture in GPU_CONFIG, measured vs planned step times, then its --plan --measure; without CUDA
# it says so and exits 0
GPU_CONFIG ?= configs/kaggle_gpu.yaml
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --config $(GPU_CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench build_kernel.py notebooks/*.py

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/train.py
	$(PY) bench/train_speed.py
	$(PY) bench/infer.py
	$(PY) bench/allocator.py
	$(PY) bench/slots.py

clean:
	rm -rf outputs .pytest_cache
