# peerprog — the two commands a new user needs: `make demo` and `make test`.
# Both create the virtual environment themselves.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
# CPU build of torch first: otherwise pip resolves a CUDA build of several GB.
TORCH  := torch==2.13.0

.PHONY: all venv test lint typecheck unit integration browser screenshots demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# setup.py compiles groupplane's optional C extensions (its kernels, its rANS coder): a
# changed source re-runs the install.
$(STAMP): pyproject.toml demo/pyproject.toml setup.py $(wildcard peerprog/codec/groupplane/c/*) \
		$(wildcard peerprog/codec/groupplane/c_rans/*) | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test,torch,bittorrent]' -e './demo[plot]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check peerprog demo tests bench
	$(VENV)/bin/ruff format --check peerprog demo tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

# The web UI in headless Chromium (Debian: apt-get install chromium chromium-driver);
# skipped, saying why, where there is none.
browser: $(STAMP)
	$(VENV)/bin/pytest -q tests/browser

# docs/img/*.png from a real run, and the UI's page weights and inference time.
screenshots: $(STAMP)
	$(PY) scripts/screenshots.py

demo: $(STAMP)
	$(VENV)/bin/peerprog demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m bench.codec --write
	$(PY) -m bench.swarm --write
	$(PY) -m bench.api --write

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
