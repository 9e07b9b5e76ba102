# Two commands a newcomer needs:  make demo  (everything end to end)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m src.demo
	$(PY) -m src.folds --config configs/demo.yaml
	$(PY) -m src.train --config configs/demo.yaml --fold all
	$(PY) -m src.ensemble --config configs/demo.yaml --tta --out submissions/demo_tta.csv
	$(PY) -m src.score submissions/demo_tta.csv --config configs/demo.yaml
	$(PY) -m src.report --config configs/demo.yaml

test: setup
	$(PY) -m pytest -q -n auto --maxprocesses=4

lint: setup
	$(PY) -m ruff check src tests

clean:
	rm -rf outputs/* submissions/* inputs/digits
