# Two commands on a fresh machine (see README):  make book   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a CPU machine, install torch explicitly first so that gdlab's `torch>=2.11` is already met
# and pip never pulls a multi-GB CUDA build. TORCH_INDEX picks a wheel index where needed
# (GitHub Actions: --index-url https://download.pytorch.org/whl/cpu).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

# The torch floor: the lowest torch that pyproject.toml allows (Colab's preinstalled torch).
# `make floor` executes every chapter (the GPU job's rehearsal) and runs the unit tests with
# exactly that torch in $(FLOOR_VENV), a venv that takes every other package from $(VENV) (a .pth
# line), so only torch is installed twice. Without a CPU index (TORCH_INDEX) pip takes PyPI's
# build, with its CUDA libraries (~3 GB, unused on a CPU).
FLOOR_VERSION := $(shell sed -n 's/^ *"torch>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
FLOOR_VENV    ?= .venv-floor
FLOOR_TORCH   := $(FLOOR_VENV)/.torch-$(FLOOR_VERSION)
FLOOR_STAMP   := $(FLOOR_VENV)/.installed-$(FLOOR_VERSION)

.PHONY: venv book test unit floor floor-rehearsal floor-unit unit-slow unit-slow-pool unit-slow-rest book-from-runs chapters paper html claims clean browser chromium rehearsal gpu

venv: $(STAMP)

# --no-compile: Python byte-compiles what is imported, when it is first imported, instead of pip
# compiling every file of every package (torch alone has thousands) at install time.
$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile $(TORCH) $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --no-compile -r requirements.txt
	$(BIN)/python -m pip install -q --no-compile --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

## book: execute every chapter at the quick (CPU) profile and build the HTML in _build/html
book: venv
	$(BIN)/gdlab book --profile quick

## test: what CI runs (`.ci/run`); exits non-zero on any failure or failed claim. Each torch is
## tested once. The floor (the lowest torch pyproject.toml allows: Colab's and the GPU machine's)
## runs the unit tests and the GPU job's rehearsal: every chapter at smoke under --strict-device,
## re-run under nbval, which must give identical outputs, and tiny benchmarks. The venv's torch
## executes every chapter at quick and judges its claims. These are one pool of two one-thread
## jobs, longest first (floor-unit, floor-rehearsal, quick-NN), so that neither core waits for
## a phase to end; -k runs every job after a failure, so that one run reports every failure. Then,
## on one core, the HTML from those runs with warnings as errors (`gdlab book --executed` refuses a
## missing, stale or failed run), the claims of every chapter and the browser check of the book,
## and on the other the slow unit tests at the venv's torch (the Colab install cell in a fresh venv,
## the toy book in the browser); the third slow test (`pip install .` alone in a fresh venv) ends
## the pool, so that both cores stay busy to the end (measured in CI: book-from-runs ~170 s, the
## three slow tests ~250 s).
## CHAPTERS_BY_TIME: the chapters, longest quick run first (measured in CI).
CHAPTERS_BY_TIME := 05-prompt-gradient-descent 01-icl-as-gd 03-double-descent 04-sgd-stability 02-implicit-regularization
SLOW_IN_POOL     := tests/test_fresh_venv.py
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target venv $(FLOOR_TORCH)
	$(MAKE) --no-print-directory $(FLOOR_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(MAKE) -k -j2 --output-sync=target floor-unit floor-rehearsal \
	  $(addprefix quick-,$(CHAPTERS_BY_TIME)) unit-slow-pool
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(MAKE) -k -j2 --output-sync=target unit-slow-rest book-from-runs

## book-from-runs: the HTML from the chapters' latest quick runs (strict), every claim, and the
## browser check: one after the other, on one core (make test runs unit-slow-rest on the other)
book-from-runs: venv
	$(BIN)/gdlab book --profile quick --executed
	$(BIN)/gdlab claims
	$(MAKE) browser

## quick-NN-name: one chapter at the quick profile; `gdlab book --executed` then builds the HTML
## from such runs without executing anything
quick-%: venv
	$(BIN)/gdlab run $* --profile quick --no-progress

unit: venv
	$(BIN)/python -m pytest -q tests

## floor: at the torch floor, e.g. torch==2.11 (Colab's torch, and the GPU machine's), on one thread:
## the rehearsal (below: every chapter under --strict-device and nbval, and a stage that checks that
## each chapter's kernel really ran that torch), and the unit tests (`make unit` runs them at the
## venv's torch)
# Two steps, so that `make test` installs the floor's torch (a download of several GB from PyPI)
# while it installs the venv: the floor venv's torch alone, then the line that adds the venv's packages.
$(FLOOR_TORCH): pyproject.toml
	test -n "$(FLOOR_VERSION)" || { echo "no torch>=X floor in pyproject.toml"; exit 1; }
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	rm -f $(FLOOR_VENV)/lib/python*/site-packages/_gdlab_main_venv.pth  # pip here must not see .venv, which may be installing
	$(FLOOR_VENV)/bin/python -m pip install -q --no-compile "torch==$(FLOOR_VERSION)" $(TORCH_INDEX)
	touch $@

$(FLOOR_STAMP): $(FLOOR_TORCH) $(STAMP)
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(FLOOR_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gdlab_main_venv.pth"
	$(FLOOR_VENV)/bin/python -c "import sys, torch, numpy; v = torch.__version__.split('+')[0]; \
	  assert v.startswith('$(FLOOR_VERSION)'), f'torch {v} is not the floor $(FLOOR_VERSION)'; \
	  assert sys.version_info[:2] == $$($(BIN)/python -c 'import sys; print(tuple(sys.version_info[:2]))'), \
	  'the floor venv and $(VENV) have different Pythons: make clean'; print('torch floor', v)"
	touch $@

floor: floor-rehearsal floor-unit

floor-rehearsal: $(FLOOR_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(FLOOR_VENV)/bin/python tools/gpu_run.py --rehearsal --out _build/gpu-rehearsal

# (not the two `slow` tests that build fresh venvs: they install the running torch there, and
# PyPI's 2.11 build conflicts with pip's constraints here; `unit-slow` runs them at the venv's torch)
floor-unit: $(FLOOR_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $(FLOOR_VENV)/bin/python -m pytest -q tests -m "not slow"

unit-slow: venv
	$(BIN)/python -m pytest -q tests -m slow

# unit-slow in two parts, for `make test`'s two phases
unit-slow-pool: venv
	$(BIN)/python -m pytest -q $(SLOW_IN_POOL) -m slow

unit-slow-rest: venv
	$(BIN)/python -m pytest -q tests -m slow $(addprefix --ignore=,$(SLOW_IN_POOL))

## rehearsal: the GPU job (tools/gpu_run.py) on this CPU, at the venv's torch: every chapter at smoke
## under --strict-device and nbval, the benchmarks at tiny sizes; results in _build/gpu-rehearsal
rehearsal: venv
	$(BIN)/python tools/gpu_run.py --rehearsal --out _build/gpu-rehearsal

## gpu: the whole GPU job, on the GPU machine (see the header of tools/gpu_run.py)
gpu:
	python3 tools/gpu_run.py --out "$${OUT:-_build/gpu}" --budget $${BUDGET:-480}

## paper: on a GPU, execute every chapter at the paper profile and keep the notebooks
paper: venv
	for c in book/[0-9][0-9]-*.md; do $(BIN)/gdlab run $$c --profile paper --save || exit 1; done

## html: build the online book from the kept paper notebooks (what the Pages workflow deploys)
html: venv
	$(BIN)/gdlab book --committed

claims: venv
	$(BIN)/gdlab claims

## browser: open every page of _build/html (built by `make book` or `make test`) in headless
## Chromium: fails on a missing image, a broken link or anchor, a JavaScript error, a request to the
## network, visible raw LaTeX, a code cell wider than the page, a chapter without its Colab link.
## Screenshots in _build/screenshots. Skips, saying why, where Chromium cannot be installed.
browser: venv chromium
	$(BIN)/python -m gdlab.book.browser _build/html

## chromium: Debian's chromium, installed with apt where this is Debian/Ubuntu as root (no browser download)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium: apt-get install failed; the browser check will be skipped"; \
	  else echo "chromium: not installed and cannot be installed here (needs apt-get as root); the browser check will be skipped"; fi; }

clean:
	rm -rf _build $(FLOOR_VENV)
