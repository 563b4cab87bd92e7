# Two commands on a fresh machine (see README):  make book   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a CPU machine, install torch explicitly first so that gdlab's `torch>=2.3` is already met
# and pip never pulls a multi-GB CUDA build. TORCH_INDEX picks a wheel index where needed
# (GitHub Actions: --index-url https://download.pytorch.org/whl/cpu).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: venv book test unit chapters paper html claims clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

## book: execute every chapter at the quick (CPU) profile and build the HTML in _build/html
book: venv
	$(BIN)/gdlab book --profile quick

## test: unit tests, then every chapter at quick with nbval re-run validation and the
## HTML build with warnings as errors. Exits non-zero on any failure or failed claim.
test: venv
	$(BIN)/python -m pytest -q tests
	$(BIN)/gdlab book --profile quick --validate

unit: venv
	$(BIN)/python -m pytest -q tests

## paper: on a GPU, execute every chapter at the paper profile and keep the notebooks
paper: venv
	for c in book/[0-9][0-9]-*.md; do $(BIN)/gdlab run $$c --profile paper --save || exit 1; done

## html: build the online book from the kept paper notebooks (what the Pages workflow deploys)
html: venv
	$(BIN)/gdlab book --committed

claims: venv
	$(BIN)/gdlab claims

clean:
	rm -rf _build
