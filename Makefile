# Every target sets up (or refreshes) .venv itself: a fresh clone needs only `make demo` and `make test`.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: setup demo test serve bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m benchmarks.perf_analyzer install
	@touch $(STAMP)

setup: $(STAMP)

## The main job: build data, train, export, serve, classify through gRPC, measure; reuses what it built.
demo: $(STAMP)
	$(PY) demo.py --artifacts $(ARTIFACTS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## Serve the demo's CPU repository (HTTP_PORT, GRPC_PORT, METRICS_PORT; default 8000/8001/8002, 127.0.0.1).
serve: $(STAMP)
	@test -d $(ARTIFACTS)/repository/cpu || $(PY) demo.py --artifacts $(ARTIFACTS) --only-build
	$(PY) -m triton_repo.server --model-repository $(ARTIFACTS)/repository/cpu

bench: $(STAMP)
	$(PY) benchmarks/perf.py

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
