# Two entry points on a fresh machine: `make test` and `make demo`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv sysdeps clean

venv: $(STAMP)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[qt,test,efficientnet]"
	@touch $(STAMP)

# Xvfb and the Qt system libraries (root on Debian/Ubuntu); otherwise a notice.
sysdeps:
	@bash .ci/install-system-deps.sh

test: $(STAMP) sysdeps
	$(VENV)/bin/ruff check napari_irnet tests benchmarks docs sample_data
	OMP_NUM_THREADS=1 $(PY) -m pytest -ra $(PYTEST_ARGS)

demo: $(STAMP) sysdeps
	OMP_NUM_THREADS=2 bash .ci/run-demo.sh $(PY)

clean:
	rm -rf $(VENV) demo_output .pytest_cache
