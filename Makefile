# Set-up and everyday commands. Everything installs into .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test validate bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Install, then fit mAch ~ ses + (ses | school) on the bundled HSB data and print the summary.
demo: $(STAMP)
	$(BIN)/multilevel demo

## Install, compile the numba kernels once (two processes side by side; seconds when cached), then run the
## default test suite (about 12 minutes on 2 cores: one test process per core, the long tests first, each
## process taking queued tests from the other when it runs out).
test: $(STAMP)
	$(BIN)/python -m multilevel.warmup
	$(BIN)/python -m pytest -q -n auto --dist worksteal

## Long validation: full simulation-based calibration runs, rendered to docs/validation.md.
## `make validate K=poisson` runs those whose name matches (pytest -k) and keeps the other rows.
validate: $(STAMP)
	rm -rf .sbc-results
	MULTILEVEL_SBC_OUT=.sbc-results $(BIN)/python -m pytest -q -m validate -p no:cacheprovider $(if $(K),-k '$(K)'); \
	status=$$?; $(BIN)/python validation/render.py $(if $(K),,--fresh) .sbc-results docs/validation.md || status=1; \
	exit $$status

## Benchmarks; results go to docs/benchmarks.md. The peers suite needs the `bench` extra (PyMC,
## NumPyro) and, for PyTensor's BLAS, Debian's libopenblas-dev (installed here when missing).
bench: $(STAMP)
	@if ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so '; then \
		if command -v apt-get >/dev/null 2>&1; then \
			apt-get update && apt-get install -y libopenblas-dev; \
		else echo "warning: libopenblas-dev not found; PyMC will run without BLAS" >&2; fi; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py --out docs/benchmarks.md --json docs/benchmarks.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
