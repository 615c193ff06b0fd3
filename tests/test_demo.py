"""Smoke test of the main job's path (``demo.py``) with the committed default detector: its metrics, the ONNX export
with the parity report, a real tritonserver, gRPC classification of the benchmark's testing images, and the first
throughput figure.

The data step is the one part not run here: ``make demo`` builds the ``demo`` profile (minutes), the test uses the
suite's ``small`` build (same layout, shared with the other tests through its cache); the builder's profiles are
tested in ``tests/test_benchmark.py``.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

import demo
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.training.benchmark import BuildConfig, Profile, build_dataset
from tests.figures import record

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_demo_path_serves_the_committed_default_detector(tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    data = build_dataset(BuildConfig.preset(Profile.SMALL, out=tmp_path_factory.getbasetemp() / "benchmark_small"))
    artifacts = tmp_path_factory.mktemp("demo") / "artifacts"
    (artifacts / "data").mkdir(parents=True)
    (artifacts / "data" / "demo").symlink_to(data, target_is_directory=True)
    cfg = demo.DemoConfig(artifacts=artifacts, only_build=False, retrain=False, epochs=1, seed=0)
    assert cfg.checkpoint == demo.DEFAULT_DETECTOR

    demo.train(cfg)
    demo.export(cfg)
    demo.summary(cfg)
    demo.serve_and_classify(cfg)
    out = capsys.readouterr().out

    meta = DetectorMetadata.load(demo.DEFAULT_DETECTOR)
    assert (demo.DEFAULT_DETECTOR / "evaluation" / "metrics.md").read_text() in out
    assert f"threshold {meta.threshold.value:.4f}" in out
    parity = json.loads(cfg.parity_report.read_text())
    record("parity", "onnx-default", max_abs_logit_diff=parity["max_abs_logit_diff"])
    assert parity["max_abs_logit_diff"] < 1e-3, parity
    # The served repository is the committed detector: its weights' hash is the one the export recorded.
    source = json.loads((cfg.repository.parent / "cpu.source.json").read_text())
    weights = (demo.DEFAULT_DETECTOR / "model.safetensors").read_bytes()
    assert source["weights_sha256"] == hashlib.sha256(weights).hexdigest()

    samples = demo.sample_images(cfg)
    rows = re.findall(r"^(\S+)\s+(real|fake)\s+([0-9.]+)\s+(FAKE|real)\s+(\S+)$", out, re.M)
    assert len(rows) == len(samples) > 0, out[-3000:]
    assert all(0.0 <= float(prob) <= 1.0 for _, _, prob, _, _ in rows)
    assert all((float(prob) >= meta.threshold.value) == (decision == "FAKE") for _, _, prob, decision, _ in rows)
    correct = sum((truth == "fake") == (decision == "FAKE") for _, truth, _, decision, _ in rows)
    assert f"{correct}/{len(samples)} correct at the calibrated threshold" in out
    for concurrency in (1, 4):
        assert re.search(rf"concurrency {concurrency}: +[0-9.]+ images/s, latency p50 [0-9.]+ ms", out), out[-2000:]
    assert "server stopped" in out

    demo.export(cfg)  # a second run reuses what the first built
    assert "reusing the exported repository" in capsys.readouterr().out
