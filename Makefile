# Two entry points do all the set-up: `make demo` (the main job on the embedded default data)
# and `make test` (the test suite). Both create .venv and install dtlabel on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dtlabel-installed

export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-all install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=python3.x)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: the whole chain on the embedded default data (fit-teacher -> train-head ->
# synthesize -> train-student, and the scratch baseline -> eval), ending with a results table.
demo: $(STAMP)
	$(VENV)/bin/dtlabel demo --out runs/demo --resume

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) runs
