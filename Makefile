# medmtl: `make demo` runs the main job on the shared data, `make test` runs the tests.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MEDMTL_DATA ?= $(abspath ../shared/datasets)

.PHONY: demo test bench install sysdeps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the build that lies on this workplace's disk (no CUDA download)
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# R's pROC (the reference the DeLong tests compare with) and headless Chromium (renders the
# HTML report in a test), from Debian's packages, when missing and apt-get can be used.
sysdeps:
	@if ! Rscript -e 'library(pROC)' >/dev/null 2>&1 || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends r-cran-proc chromium; \
	  else echo "note: r-cran-proc and chromium are missing and cannot be installed here; their tests will skip"; fi; \
	fi

# study 0 (multi-task vs transfer learning) in its quick CPU version; the report lands in runs/s0-mtl-vs-tl-quick/report/
demo: $(STAMP)
	$(BIN)/medmtl run experiments/s0-mtl-vs-tl.yaml --quick

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs .pytest_cache
