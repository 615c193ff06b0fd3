# Every target sets up (or refreshes) .venv itself: a fresh clone needs only `make demo` and `make test`.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: setup demo test serve bench clean cluster

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m benchmarks.perf_analyzer install
	$(PY) -m deploy.cluster --install-nginx || echo "no nginx: 'make cluster' and tests/test_cluster.py need it (apt-get install -y nginx)"
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

## Several replicas of the CPU repository behind nginx on 127.0.0.1 (REPLICAS, CLUSTER_PORT; default 2, 8001).
REPLICAS ?= 2
CLUSTER_PORT ?= 8001
cluster: $(STAMP)
	@test -d $(ARTIFACTS)/repository/cpu || $(PY) demo.py --artifacts $(ARTIFACTS) --only-build
	$(PY) -m deploy.cluster --model-repository $(ARTIFACTS)/repository/cpu --replicas $(REPLICAS) --port $(CLUSTER_PORT)

bench: $(STAMP)
	$(PY) benchmarks/perf.py

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
