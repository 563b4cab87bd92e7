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

.PHONY: venv book test unit chapters paper html claims clean browser chromium

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -r requirements.txt
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
	$(MAKE) browser

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
	rm -rf _build
