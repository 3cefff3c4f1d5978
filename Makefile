# avremix: `make demo` runs the whole pipeline on the embedded dataset; `make test` runs the tests.
# Both create .venv and install the project (pinned torch stack) on first use.
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: demo test install bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

demo: install
	dvc repro
	python -m train.report

test: install
	python -m pytest -q

bench: install
	python benchmarks/extract.py

clean:
	rm -rf data/raw data/manifest.csv data/classes.txt features
