# Agent Box. `make demo` sets everything up and runs the demo; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup venv engine engine-gvisor image postgres demo test lint unit bench serve doctor gc clean

setup: venv engine image  ## venv, Docker engine, kernel image: each skipped when already there

venv: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[all,dev]'
	touch $(STAMP)

engine:
	scripts/ensure-docker

engine-gvisor:  ## the engine with gVisor (runsc) registered: the tests run the attacks under both
	AGENTBOX_WITH_RUNSC=1 scripts/ensure-docker

postgres:  ## PostgreSQL server binaries for the store tests (they start their own cluster)
	scripts/ensure-postgres

image: venv engine
	$(BIN)/agentbox image build

demo: setup  ## a pandas + matplotlib analysis in a fresh hardened sandbox -> out/demo.ipynb
	$(BIN)/agentbox demo --out out/demo.ipynb

lint: venv
	$(BIN)/ruff check sandbox api tests bench kernel_image
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup engine-gvisor postgres lint  ## everything, against the real engine (runc and gVisor)
	$(BIN)/python -m pytest -q

unit: venv  ## pure-logic tests only (no engine)
	$(BIN)/python -m pytest -q tests/unit

bench: setup  ## writes docs/benchmarks.md, -api.md, -scale.md and -tuning.md (about 15 minutes)
	AGENTBOX_WITH_RUNSC=1 scripts/ensure-docker
	$(BIN)/python -m bench all
	$(BIN)/python -m bench core --render-only bench/results/core.json

serve: setup
	$(BIN)/agentbox serve

doctor: venv
	$(BIN)/agentbox doctor

gc: venv
	$(BIN)/agentbox gc

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
