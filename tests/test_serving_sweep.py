"""benchmarks/serving_sweep.py: each variant edits exactly the settings it names, into configs Triton's schema takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fmdetect.benchmarks.serving_sweep import VARIANTS, Variant, apply, median_row


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_variant_edits_only_its_settings(variant: Variant, cpu_repository: Path, tmp_path: Path):
    copy = tmp_path / "repository"
    shutil.copytree(cpu_repository, copy)
    apply(variant, copy)
    shipped = {m: _config(cpu_repository / m / "config.pbtxt") for m in ("preprocess", "detector")}
    edited = {m: _config(copy / m / "config.pbtxt") for m in ("preprocess", "detector")}
    queue = variant.queue_us or tuple(
        shipped[m].dynamic_batching.max_queue_delay_microseconds for m in ("preprocess", "detector")
    )
    assert edited["preprocess"].dynamic_batching.max_queue_delay_microseconds == queue[0]
    assert edited["detector"].dynamic_batching.max_queue_delay_microseconds == queue[1]
    assert edited["preprocess"].instance_group[0].count == (
        variant.preprocess_instances or shipped["preprocess"].instance_group[0].count
    )
    decode = edited["preprocess"].parameters["decode_threads"].string_value
    assert decode == str(variant.decode_threads or shipped["preprocess"].parameters["decode_threads"].string_value)
    threads = edited["detector"].parameters["intra_op_threads"].string_value
    assert threads == str(
        variant.ort_threads
        if variant.ort_threads is not None
        else shipped["detector"].parameters["intra_op_threads"].string_value
    )
    for model in ("preprocess", "detector"):  # nothing else moved
        for key in ("max_bytes", "max_pixels", "formats", "onnx_file"):
            if key in shipped[model].parameters:
                assert edited[model].parameters[key] == shipped[model].parameters[key]
        assert edited[model].input == shipped[model].input and edited[model].output == shipped[model].output


def test_median_over_rounds():
    stage = {
        "preprocess": {"queue_us": 1.0, "compute_infer_us": 2.0},
        "detector": {"queue_us": 0.5, "compute_infer_us": 1.0},
    }
    rounds = [
        {
            "variant": "v",
            "best_ips": ips,
            "best_concurrency": 4,
            "c1_ips": ips / 2,
            "c1_p50_ms": 10.0,
            "c1_p99_ms": p99,
            "c1_stage_ms": stage,
        }
        for ips, p99 in ((50.0, 100.0), (70.0, 90.0), (60.0, 300.0))
    ]
    row = median_row(rounds)
    assert row["best_ips"] == 60.0 and row["c1_ips"] == 30.0 and row["c1_p99_ms"] == 100.0
    assert row["best_ips_per_round"] == [50.0, 70.0, 60.0] and row["rounds"] == 3


def test_readme_sweep_table_is_the_committed_one():
    root = Path(__file__).resolve().parents[1]
    table = (root / "docs" / "perf" / "sweep" / "sweep.md").read_text().strip()
    assert table in (root / "README.md").read_text()
