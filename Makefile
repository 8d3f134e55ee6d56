# Two commands matter: `make demo` and `make test`. Both set up .venv first, and skip the
# install when pyproject.toml and setup.py have not changed since the last one.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | sha1sum | cut -c1-12)
WORKDIR ?= work/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint validate ui bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
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

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

validate: setup
	DAGSTER_HOME= $(VENV)/bin/dagster definitions validate -m clinfuse.orchestration.definitions

test: setup lint validate
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

ui: setup
	$(VENV)/bin/clinfuse ui --workdir $(WORKDIR)/run

# One seed of the task family at 1,500 admissions (~30 min); the whole table of the issue is
# `benchmarks/quality.py --tasks all --admissions 1500 5000 --seeds 0 1 2` (hours).
bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/quality.py --tasks all --admissions 1500 --seeds 0

clean:
	rm -rf work build *.egg-info
