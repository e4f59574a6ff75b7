# fastproto: `make demo` and `make test` set up everything on a fresh Debian machine.
# Each step leaves a stamp, so a second run skips what is already done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
APT_PACKAGES := build-essential pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install test lint typecheck pytest demo test-gpu bench-smoke study clean \
	compile-check-other-triton

$(STAMPS)/venv:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/apt: | $(STAMPS)/venv
	if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES); \
	fi
	touch $@

$(STAMPS)/python: pyproject.toml $(STAMPS)/apt
	$(PY) -m pip install --quiet -e '.[data,dev]'
	touch $@

install: $(STAMPS)/python

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy fastproto kernels data_prep

# pytest exits 5 when it collected nothing: say so loudly rather than pass.
pytest: install
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest ran zero tests" >&2; fi; exit $$rc

# Every benchmark once on tiny shapes (CPU, about a minute), so CI sees that they still run;
# their CSV output goes to a scratch folder, never into bench/results/.
bench-smoke: install
	scratch=$$(mktemp -d); \
	$(PY) bench/prototype_loss.py --smoke --out $$scratch/prototype_loss.csv && \
	$(PY) bench/loader_throughput.py --smoke && \
	$(PY) bench/resize_quality.py --smoke && \
	$(PY) bench/train_memory.py --smoke --out $$scratch/train_memory.csv && \
	$(PY) bench/vmf_error.py --smoke && \
	$(PY) bench/prototype_em_cost.py --smoke; \
	rc=$$?; rm -rf $$scratch; exit $$rc

test: lint typecheck pytest bench-smoke

# The gpu tier on a lent GPU machine, which is offline: no venv, no pinned installs, no apt.
# It uses that machine's own python3 (preinstalled torch, triton, timm), installs this project
# editable without resolving dependencies, and runs the gpu tests compiled (not interpreted).
# Where that install cannot build offline, the package goes on PYTHONPATH as a tree of links
# (tools/source_site.py; PYTHONSAFEPATH keeps the checkout's fastproto/ from shadowing it).
GPU_PYTHON ?= python3

test-gpu:
	$(GPU_PYTHON) tools/gpu_preflight.py
	site=""; if ! $(GPU_PYTHON) -m pip install --quiet --no-index --disable-pip-version-check \
	  --no-build-isolation --no-deps -e .; then \
	  site=$$(mktemp -d)/site && $(GPU_PYTHON) tools/source_site.py $$site || exit 1; \
	  echo "the editable install failed: running from the link tree $$site" >&2; fi; \
	rc=0; env -u TRITON_INTERPRET FASTPROTO_TEST_TIER=gpu \
	  $${site:+PYTHONPATH=$$site PYTHONSAFEPATH=1} \
	  $(GPU_PYTHON) -m pytest -m gpu -p no:cacheprovider $(PYTEST_ARGS) tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest ran zero tests" >&2; fi; exit $$rc

# The kernel compile check under another Triton release, by default the one the lent GPU
# machines have (3.6.0 beside their torch 2.11), installed beside the venv (build/), not in it;
# table and figures in bench/results/kernel_compile_table_triton-<version>.*
OTHER_TRITON ?= 3.6.0

compile-check-other-triton: install
	$(VENV)/bin/pip install --quiet --no-deps --target build/triton-$(OTHER_TRITON) \
	  triton==$(OTHER_TRITON)
	env -u TRITON_INTERPRET PYTHONPATH=build/triton-$(OTHER_TRITON) $(PY) \
	  tools/kernel_compile.py --write \
	  --cache bench/results/kernel_compile_table_triton-$(OTHER_TRITON).json

# Partial prototype collapse: the demo recipe with and without KoLeo-proto, side by side
# (one core each, about 11 minutes); rerun to resume an interrupted demo.
demo: install
	$(VENV)/bin/fastproto demo

# The prototype-collapse study in the collapse regime (docs/results/grid_collapse.toml: about
# 10 minutes a run, two shards on the 2 cores; rerun to resume), its report and the run
# records, into docs/results/study_collapse/.
study: install
	OMP_NUM_THREADS=1 $(VENV)/bin/fastproto sweep --grid docs/results/grid_collapse.toml \
	  --out runs/study_collapse --shard 0/2 --no-progress & \
	OMP_NUM_THREADS=1 $(VENV)/bin/fastproto sweep --grid docs/results/grid_collapse.toml \
	  --out runs/study_collapse --shard 1/2 --no-progress; rc=$$?; wait $$! || rc=1; exit $$rc
	$(VENV)/bin/fastproto report runs/study_collapse --out docs/results/study_collapse/report.md
	mkdir -p docs/results/study_collapse/results
	cp runs/study_collapse/results/*.json docs/results/study_collapse/results/

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
