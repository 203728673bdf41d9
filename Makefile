# The two commands: `make demo` (main job on a bundled sample) and `make test`.
# Both create .venv and install everything they need on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.matseg-installed
DEMO   ?= demo-out

.PHONY: install xvfb demo test lint weights weights-segmenters weights-selector weights-statistics bench-models bench-robustness bench-fit clean

WORK   ?= work-out

PLUGIN := plugins/matseg-napari
# Xvfb and the Qt (xcb) and Mesa OpenGL libraries napari needs to draw without a screen.
XVFB_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 \
	libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1
XVFB_RUN := LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s "-screen 0 1280x1024x24"

$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk (see README)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q -e "$(PLUGIN)[testing]"
	touch $@

install: $(STAMP) xvfb

# A single-node SLURM for the workflow tests (tests/test_slurm.py starts and stops it).
SLURM_PACKAGES := slurm-wlm munge

# Only when xvfb-run or sbatch is missing, and only as root (apt-get); otherwise say what is missing.
xvfb:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				$(XVFB_PACKAGES) $(SLURM_PACKAGES); \
		else \
			echo "xvfb-run or sbatch is missing (not root): GUI and SLURM tests will be skipped"; \
		fi; \
	fi

demo: install
	$(BIN)/matseg sample $(DEMO)/cathode.zarr --shape 32 512 512 --seed 4242 --profile test --overwrite
	$(BIN)/matseg segment $(DEMO)/cathode.zarr -o $(DEMO)/phases.zarr --dry-run --overwrite --quiet
	$(BIN)/matseg segment $(DEMO)/cathode.zarr -o $(DEMO)/phases.zarr --truth $(DEMO)/cathode.zarr --quiet
	$(BIN)/matseg segment $(DEMO)/cathode.zarr -o $(DEMO)/phases-expensive.zarr --model expensive \
		--truth $(DEMO)/cathode.zarr --overwrite --quiet

# pytest exits 5 when it collects no test: that is not a failure of the suite.
# The napari plugin's tests need a display: they run under Xvfb (skipped without one).
# PoreSpy and OpenPNM (the measure-validation extra: ~30 s, CPU wheels, torch untouched) let
# tests/test_measure_porespy.py compare matseg measure with PoreSpy instead of skipping.
test: install
	@$(BIN)/python -c "import porespy, openpnm" 2>/dev/null || $(BIN)/pip install -q -e ".[measure-validation]"
	@if command -v xvfb-run >/dev/null 2>&1; then \
		$(XVFB_RUN) $(BIN)/python -m pytest -q tests $(PLUGIN); \
	else \
		$(BIN)/python -m pytest -q tests $(PLUGIN); \
	fi; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# Reproduces the bundled weights (see docs/models.md): ~70 min on 2 CPU cores.
TRAIN_SEEDS    := 101 102 103
SELECTOR_SEEDS := 401 402 403 404 405 406 407 408
WEIGHTS        := matseg/models/weights
weights: weights-segmenters weights-selector

weights-segmenters: install
	for s in $(TRAIN_SEEDS); do $(BIN)/matseg sample $(WORK)/train-$$s.zarr --shape 24 256 256 --seed $$s \
		--config data/segmenter-training.yaml --overwrite; done
	$(BIN)/matseg sample $(WORK)/val-201.zarr --shape 16 256 256 --seed 201 --config data/segmenter-training.yaml --overwrite
	$(BIN)/matseg train $(foreach s,$(TRAIN_SEEDS),$(WORK)/train-$(s).zarr) --val $(WORK)/val-201.zarr \
		--model cheap --model medium --model expensive --steps 3000 --steps-expensive 2250 --batch 8 \
		--patch 128 --lr 3e-3 --seed 0 --augment data/augment-finetune.yaml -o $(WEIGHTS)

# The training statistics of the bundled segmenters (docs/models.md, "Does a volume fit the
# weights?"), measured on their regenerated training volumes; only manifest.json changes.
weights-statistics: install
	for s in $(TRAIN_SEEDS); do $(BIN)/matseg sample $(WORK)/train-$$s.zarr --shape 24 256 256 --seed $$s \
		--config data/segmenter-training.yaml --overwrite; done
	$(BIN)/matseg train $(foreach s,$(TRAIN_SEEDS),$(WORK)/train-$(s).zarr) -o $(WEIGHTS) --statistics-only

# The selector learns on volumes the segmenters never saw (default sample settings).
weights-selector: install
	for s in $(SELECTOR_SEEDS); do $(BIN)/matseg sample $(WORK)/sel-$$s.zarr --shape 32 512 512 --seed $$s --overwrite; done
	$(BIN)/matseg train-selector $(foreach s,$(SELECTOR_SEEDS),$(WORK)/sel-$(s).zarr) --weights $(WEIGHTS) \
		--tile 8,256,256 --steps 4000 --seed 0

bench-models: install
	$(BIN)/python benchmarks/segmenters.py --out docs/segmenters.json

bench-robustness: install
	$(BIN)/python benchmarks/robustness.py --out docs/robustness.json

bench-fit: install
	$(BIN)/python benchmarks/fit.py --out docs/fit.json
	$(BIN)/python benchmarks/fit.py --offset 8 --out docs/fit-heldout.json
	$(BIN)/python benchmarks/fit.py --offset 16 --out docs/fit-fresh.json

lint: install
	$(BIN)/ruff check matseg tests $(PLUGIN)

clean:
	rm -rf $(VENV) $(DEMO) $(WORK) .pytest_cache
