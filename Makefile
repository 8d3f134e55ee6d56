# Two commands matter: `make demo` and `make test`. Both set up .venv first, and skip the
# install when pyproject.toml has not changed since the last one.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
WORKDIR ?= work/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint validate ui bench clean readme

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: on these machines pip takes the local CPU wheel; a bare `torch`
	# requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/clinfuse demo --workdir $(WORKDIR)

# ruff, the import layers (tests/test_layers.py) and static resolution (tests/test_static.py).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_layers.py tests/test_static.py

validate: setup
	DAGSTER_HOME= $(VENV)/bin/dagster definitions validate -m clinfuse.orchestration.definitions

test: setup lint validate
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The demo, then its printed results written into README.md's demo block.
readme: setup
	rm -rf work/readme
	$(VENV)/bin/clinfuse demo --workdir work/readme --readme README.md

ui: setup
	$(VENV)/bin/clinfuse ui --workdir $(WORKDIR)/run

# One seed of the task family at 1,500 admissions (~30 min); the whole table of the issue is
# `benchmarks/quality.py --tasks all --admissions 1500 5000 --seeds 0 1 2` (hours).
bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/quality.py --tasks all --admissions 1500 --seeds 0

clean:
	rm -rf work build *.egg-info

# The demo's champion behind `mlflow models serve` (README, "Models in MLflow"). The venv's bin
# goes first on PATH because mlflow starts `uvicorn` by name; request paths are read only inside
# CLINFUSE_SERVE_ROOT, here the demo's landing zone.
SERVE_PORT ?= 5001
.PHONY: serve
serve: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" \
	MLFLOW_TRACKING_URI="sqlite:///$(abspath $(WORKDIR))/run/mlflow.db" \
	CLINFUSE_SERVE_ROOT="$(abspath $(WORKDIR))/landing" \
	$(VENV)/bin/mlflow models serve -m "models:/clinfuse-pneumonia@champion" \
		--env-manager local -h 127.0.0.1 -p $(SERVE_PORT)
