"""ONNX export: checker, dynamic batch, parity report against PyTorch, metadata carried in the file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fmdetect.core.metadata import DetectorMetadata
from fmdetect.export.__main__ import main as export_main
from fmdetect.export.onnx_export import parity_images, read_onnx_metadata


@pytest.mark.parametrize("fft_impl", ["matmul", "dft"])
def test_export_onnx_report_and_graph(checkpoint, tmp_path, fft_impl, capsys):
    out, report_path = tmp_path / "model.onnx", tmp_path / "parity.json"
    code = export_main(
        [
            "onnx",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--fft-impl",
            fft_impl,
            "--report",
            str(report_path),
        ]
    )
    assert code == 0
    assert "max |logit diff|" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["batch_sizes"] == [1, 3, 8]
    assert report["precision"] == "fp32" and report["fft_impl"] == fft_impl
    assert 0.0 <= report["max_abs_logit_diff"] <= 1e-3 and report["passed"] is True

    graph = onnx.load(str(out))
    onnx.checker.check_model(graph, full_check=True)
    ops = {node.op_type for node in graph.graph.node}
    assert ("DFT" in ops) == (fft_impl == "dft")
    assert [i.name for i in graph.graph.input] == ["IMAGE"]
    assert [o.name for o in graph.graph.output] == ["LOGIT", "PROB_FAKE", "IS_FAKE"]
    assert read_onnx_metadata(out) == DetectorMetadata.load(checkpoint)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 17):  # dynamic batch beyond the parity sizes
        logit, prob, is_fake = session.run(None, {"IMAGE": parity_images(batch, 64, 64)})
        assert logit.shape == prob.shape == is_fake.shape == (batch, 1)
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit)), atol=1e-6)
        assert is_fake.dtype == np.bool_


def test_masks_override_changes_the_graph(checkpoint, tmp_path):
    out = tmp_path / "k0.onnx"
    assert export_main(["onnx", "--checkpoint", str(checkpoint), "--out", str(out), "--masks", "0"]) == 0
    assert read_onnx_metadata(out).fft_stage.masks == 0
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "DFT" not in ops and ops.count("MatMul") == 0  # no FFT stage at all without masks


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_main(["onnx", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "metadata.json" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet50_at_224_exports_with_parity(tmp_path):
    """The paper's backbone at its input size, 2 test-time masks, both FFT forms: the ONNX graph against PyTorch
    fp32 at batch 1 / 3 / 8 (untrained weights: parity is a property of the graph, not of the training)."""
    import torch

    from fmdetect.core.metadata import FFTStageConfig
    from fmdetect.training.checkpoint import save_checkpoint
    from fmdetect.training.model import Detector
    from tests.figures import record

    torch.manual_seed(0)
    metadata = DetectorMetadata(
        backbone="resnet50", input_size=(224, 224), fft_stage=FFTStageConfig(masks=2, band="all", ratio=0.15, seed=1)
    )
    checkpoint = save_checkpoint(Detector(metadata, pretrained=False), tmp_path / "ckpt")
    diffs = {}
    for fft_impl in ("matmul", "dft"):
        report_path = tmp_path / f"{fft_impl}.json"
        assert (
            export_main(
                [
                    "onnx",
                    "--checkpoint",
                    str(checkpoint),
                    "--out",
                    str(tmp_path / f"{fft_impl}.onnx"),
                    "--fft-impl",
                    fft_impl,
                    "--report",
                    str(report_path),
                ]
            )
            == 0
        )
        report = json.loads(report_path.read_text())
        assert report["passed"] and report["batch_sizes"] == [1, 3, 8], report
        diffs[fft_impl] = report["max_abs_logit_diff"]
    record("parity", "onnx-resnet50", **diffs)
    assert max(diffs.values()) < 1e-3, diffs
