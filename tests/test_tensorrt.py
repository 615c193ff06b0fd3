"""TensorRT: operator lists per version, the engine CLI without TensorRT, engine metadata checks, the builder flow
against a stub of the TensorRT API, and a real engine build (needs TensorRT and a GPU; skipped otherwise)."""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fmdetect.core.checksum import sha256_file
from fmdetect.core.fft import FFTForm
from fmdetect.export.onnx_export import OUTPUT_NAMES, ExportConfig, Precision, export_onnx, parity_images
from fmdetect.export.tensorrt_engine import (
    EngineBuildError,
    EngineConfig,
    EngineMismatchError,
    build_engine,
    check_engine_compatible,
    engine_metadata_path,
)
from fmdetect.export.trt_ops import available_lists, check_onnx, read_op_list, resolve_list
from fmdetect.export.trt_ops import main as trt_ops_main

REPO = Path(__file__).resolve().parents[1]
TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


def _export(checkpoint: Path, out: Path, fft: str, precision: str = "fp32") -> Path:
    export_onnx(
        ExportConfig(
            checkpoint=checkpoint,
            out=out,
            fft_impl=FFTForm(fft),
            precision=Precision(precision),
            parity_batch_sizes=(2,),
        )
    )
    return out


@pytest.fixture(scope="module")
def graphs(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny detector exported with the FFT stage as MatMul and as the ONNX DFT op (fp32)."""
    folder = tmp_path_factory.mktemp("trt_graphs")
    return {fft: _export(checkpoint, folder / f"{fft}.onnx", fft) for fft in ("matmul", "dft")}


# --- trt-ops ---------------------------------------------------------------------------------------------------


def test_operator_lists_are_well_formed():
    lists = available_lists()
    assert {"10.0", "10.1", "11.2"} <= {".".join(map(str, v)) for v in lists}
    for version, path in lists.items():
        text = path.read_text()
        assert f"# TensorRT version: {'.'.join(map(str, version))}" in text
        assert "onnx-tensorrt" in text and "https://" in text  # the header names its source
        ops = read_op_list(path)
        assert {"Conv", "MatMul", "Gemm", "Cast", "Sigmoid"} <= ops
        assert ("DFT" in ops) == (version >= (11, 2))


@pytest.mark.parametrize(
    ("requested", "used"),
    [
        ("10.0", "10.0"),
        ("10.8", "10.1"),
        ("10.8.0.43", "10.1"),
        ("10.16.1", "10.16"),
        ("11.2", "11.2"),
        ("11.3", "11.2"),
    ],
)
def test_version_matching_takes_newest_list_not_newer(requested, used):
    version, path = resolve_list(requested)
    assert ".".join(map(str, version)) == used and path.name == f"trt_ops_{used}.txt"


@pytest.mark.parametrize("version", ["10.0", "10.8", "11.2"])
def test_matmul_graph_is_supported(graphs, version, capsys):
    assert trt_ops_main(["--onnx", str(graphs["matmul"]), "--tensorrt-version", version]) == 0
    out = capsys.readouterr().out
    assert "all supported" in out and "MatMul" in out and "DFT" not in out
    used, ops, unsupported = check_onnx(graphs["matmul"], version)
    assert unsupported == [] and ops == sorted(ops, key=str.lower) and "Conv" in ops


@pytest.mark.parametrize("version", ["10.0", "10.8", "10.16"])
def test_dft_graph_is_rejected_by_tensorrt_10(graphs, version, capsys):
    assert trt_ops_main(["--onnx", str(graphs["dft"]), "--tensorrt-version", version]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^unsupported by TensorRT 10\.\d+: DFT$", out, re.M) and "fft-impl matmul" in out
    assert check_onnx(graphs["dft"], version)[2] == ["DFT"]


def test_dft_graph_is_supported_by_tensorrt_11_2(graphs, capsys):
    assert trt_ops_main(["--onnx", str(graphs["dft"]), "--tensorrt-version", "11.2"]) == 0
    out = capsys.readouterr().out
    assert "all supported" in out and "DFT" in out
    used, ops, unsupported = check_onnx(graphs["dft"], "11.2")
    assert used == "11.2" and "DFT" in ops and unsupported == []


def test_ops_are_collected_through_subgraphs_functions_and_domains(tmp_path, capsys):
    from onnx import TensorProto, helper

    def value(name, dims=(4, 8)):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))

    branch = helper.make_graph([helper.make_node("DFT", ["x"], ["spec"], onesided=0)], "then", [], [value("spec")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "else", [], [value("same")])
    local = helper.make_function(
        "local.fn", "Smooth", ["a"], ["b"], [helper.make_node("Erf", ["a"], ["b"])], [helper.make_opsetid("", 20)]
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["flag"], keepdims=0),
        helper.make_node("Cast", ["flag"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
        helper.make_node("Smooth", ["y"], ["z"], domain="local.fn"),
        helper.make_node("Shape", ["z"], ["axes"], start=1),
        helper.make_node("ReduceMean", ["z", "axes"], ["m"]),  # axes computed, not an initializer
        helper.make_node("Foo", ["m"], ["out"], domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [value("x")], [value("out", ())])
    model = helper.make_model(
        graph,
        functions=[local],
        opset_imports=[
            helper.make_opsetid("", 20),
            helper.make_opsetid("local.fn", 1),
            helper.make_opsetid("com.example", 1),
        ],
    )
    path = tmp_path / "nested.onnx"
    path.write_bytes(model.SerializeToString())

    used, ops, unsupported = check_onnx(path, "10.0")
    assert used == "10.0" and {"DFT", "Identity", "Erf", "ReduceMean"} <= set(ops) and "Smooth" not in ops
    assert unsupported == ["com.example::Foo", "DFT"]
    assert trt_ops_main(["--onnx", str(path), "--tensorrt-version", "11.2"]) == 1  # Foo and the axes restriction
    out = capsys.readouterr().out
    assert "unsupported by TensorRT 11.2: com.example::Foo" in out
    assert "restriction: ReduceMean node" in out and "'axes' must be an initializer" in out


@pytest.mark.parametrize("version", ["9.3", "11.0", "12.0", "ten"])
def test_unknown_version_exits_2_listing_versions(graphs, version, capsys):
    assert trt_ops_main(["--onnx", str(graphs["matmul"]), "--tensorrt-version", version]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    if version != "ten":
        assert "10.0" in err and "11.2" in err


# --- engine CLI without TensorRT ---------------------------------------------------------------------------------


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here")
def test_engine_cli_without_tensorrt_is_one_line(graphs, tmp_path):
    plan = tmp_path / "model.plan"
    proc = subprocess.run(
        [sys.executable, "-m", "fmdetect.export", "engine", "--onnx", str(graphs["matmul"]), "--out", str(plan)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "TensorRT is not installed" in lines[0] and "GPU" in lines[0]
    assert not plan.exists() and not engine_metadata_path(plan).exists()


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here")
def test_engine_builder_starts_without_torch(graphs, tmp_path):
    """The builder runs in a TensorRT container that has onnx but no torch: with torch unimportable it gets as far
    as asking for TensorRT."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
    )
    plan = tmp_path / "model.plan"
    proc = subprocess.run(
        [sys.executable, "-m", "fmdetect.export.tensorrt_engine", "--onnx", str(graphs["matmul"]), "--out", str(plan)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert proc.returncode != 0
    assert "torch is blocked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "TensorRT is not installed" in proc.stderr


# --- engine metadata compatibility -------------------------------------------------------------------------------


def _engine_json(
    path: Path, trt_version: str = "10.8.0.43", gpu: str = "NVIDIA H100 80GB HBM3", cc: str = "9.0"
) -> Path:
    path.write_text(
        json.dumps(
            {
                "tensorrt_version": trt_version,
                "gpu": {"name": gpu, "compute_capability": cc},
                "precision": "fp16",
                "plan": {"file": "model.plan", "sha256": "0" * 64},
            }
        )
    )
    return path


def test_engine_metadata_match_passes(tmp_path):
    path = _engine_json(tmp_path / "model.engine.json")
    assert check_engine_compatible(path, "10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")["precision"] == "fp16"
    assert check_engine_compatible(json.loads(path.read_text()), "10.8.0", "nvidia  h100 80gb hbm3")


@pytest.mark.parametrize(
    ("runtime", "gpu", "cc", "reason"),
    [
        ("10.3.0.26", "NVIDIA H100 80GB HBM3", None, "TensorRT version differs"),
        ("11.2.1", "NVIDIA H100 80GB HBM3", None, "TensorRT version differs"),
        ("10.8.0.43", "NVIDIA A10G", None, "GPU differs"),
        ("10.8.0.43", "NVIDIA H100 80GB HBM3", "8.0", "compute capability differs"),
    ],
)
def test_engine_metadata_mismatch_raises(tmp_path, runtime, gpu, cc, reason):
    path = _engine_json(tmp_path / "model.engine.json")
    with pytest.raises(EngineMismatchError) as info:
        check_engine_compatible(path, runtime, gpu, cc)
    message = str(info.value)
    assert message.startswith("engine built with TensorRT 10.8.0.43 for GPU NVIDIA H100 80GB HBM3")
    assert f"this server has TensorRT {runtime} and GPU {gpu}" in message and reason in message


def test_engine_metadata_unknown_gpu_checks_version_only(tmp_path, caplog):
    path = _engine_json(tmp_path / "model.engine.json", gpu="unknown", cc="unknown")
    with caplog.at_level(logging.WARNING):
        check_engine_compatible(path, "10.8.0.43", "NVIDIA A10G")
    assert "cannot compare GPUs" in caplog.text
    with pytest.raises(EngineMismatchError, match="TensorRT version differs"):
        check_engine_compatible(path, "10.9.0.34", "NVIDIA A10G")


# --- the builder flow, against a stub of the TensorRT 10/11 Python API -----------------------------------------------


def _stub_tensorrt(plan: bytes | None = b"PLAN", parser_errors: tuple[str, ...] = ()) -> types.ModuleType:
    """Just enough of ``tensorrt`` to drive EngineBuilder; it records the calls the builder makes."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.8.0.43"
    trt.calls = calls = {}

    class ILogger:
        Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        num_inputs, num_outputs, num_layers = 1, 3, 42

        def get_input(self, i):
            return Tensor("IMAGE")

        def get_output(self, i):
            return Tensor(OUTPUT_NAMES[i])

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            calls["parsed"] = path
            self.num_errors = len(parser_errors)
            return not parser_errors

        def get_error(self, i):
            return parser_errors[i]

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+tuned"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

        def create_timing_cache(self, data):
            calls["cache_loaded"] = bytes(data)
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def set_flag(self, flag):
            calls.setdefault("flags", []).append(flag)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return plan

    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    return trt


def test_builder_flow_with_stub_api(graphs, tmp_path, monkeypatch):
    trt = _stub_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "trt.cache"
    config = EngineConfig(
        onnx=graphs["matmul"],
        out=tmp_path / "engines" / "model.plan",
        min_batch=1,
        opt_batch=4,
        max_batch=64,
        workspace_gib=0.5,
        timing_cache=cache,
    )
    result = build_engine(config)
    assert trt.calls["network_flags"] == 1 << 5  # STRONGLY_TYPED, nothing else
    assert "flags" not in trt.calls  # no BuilderFlag (FP16 comes from the graph)
    assert trt.calls["parsed"] == str(graphs["matmul"].resolve())
    assert trt.calls["profile"] == ("IMAGE", (1, 3, 64, 64), (4, 3, 64, 64), (64, 3, 64, 64))
    assert trt.calls["workspace"] == (trt.MemoryPoolType.WORKSPACE, 1 << 29) and trt.calls["profiles"] == 1
    assert result.plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"+tuned"
    meta = json.loads(engine_metadata_path(result.plan).read_text())
    assert result.metadata_path == tmp_path / "engines" / "model.engine.json" and meta == result.metadata
    assert meta["tensorrt_version"] == "10.8.0.43" and meta["precision"] == "fp32" and meta["fft_impl"] == "matmul"
    assert meta["profile"]["IMAGE"]["max"] == [64, 3, 64, 64]
    assert meta["onnx"]["sha256"] == sha256_file(graphs["matmul"])
    assert meta["plan"]["sha256"] == sha256_file(result.plan) and meta["plan"]["bytes"] == 4
    assert set(meta["gpu"]) == {"name", "compute_capability"} and meta["build_seconds"] >= 0
    check_engine_compatible(result.metadata_path, "10.8.0.43", meta["gpu"]["name"])

    build_engine(config)  # the second build starts from the saved timing cache
    assert trt.calls["cache_loaded"] == b"+tuned"


def test_builder_logs_every_parser_error(graphs, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", _stub_tensorrt(parser_errors=("bad node A", "bad node B")))
    with caplog.at_level(logging.ERROR), pytest.raises(EngineBuildError, match="2 parser errors"):
        build_engine(EngineConfig(onnx=graphs["dft"], out=tmp_path / "model.plan"))
    assert "bad node A" in caplog.text and "bad node B" in caplog.text
    assert not (tmp_path / "model.plan").exists()


def test_builder_failed_build_raises(graphs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _stub_tensorrt(plan=None))
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_engine(EngineConfig(onnx=graphs["matmul"], out=tmp_path / "model.plan"))
    assert not (tmp_path / "model.plan").exists() and not (tmp_path / "model.engine.json").exists()


def test_engine_config_validates_profile(graphs, tmp_path):
    with pytest.raises(ValueError, match="min-batch"):
        EngineConfig(onnx=graphs["matmul"], out=tmp_path / "m.plan", min_batch=8, opt_batch=4)


# --- a real engine -------------------------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_matches_onnxruntime(checkpoint, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    onnx_path = _export(checkpoint, tmp_path / "model.onnx", "matmul", "fp16")
    cache = tmp_path / "trt.cache"
    result = build_engine(
        EngineConfig(
            onnx=onnx_path,
            out=tmp_path / "model.plan",
            min_batch=1,
            opt_batch=4,
            max_batch=8,
            workspace_gib=1.0,
            timing_cache=cache,
        )
    )
    assert cache.stat().st_size > 0
    major, minor = torch.cuda.get_device_capability(0)
    meta = check_engine_compatible(
        result.metadata_path, trt.__version__, torch.cuda.get_device_name(0), f"{major}.{minor}"
    )
    assert meta["precision"] == "fp16" and meta["plan"]["sha256"] == sha256_file(result.plan)

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(result.plan.read_bytes())
    assert engine is not None
    context = engine.create_execution_context()
    images = parity_images(4, 64, 64)
    image = torch.from_numpy(images).cuda()
    context.set_input_shape("IMAGE", tuple(image.shape))
    context.set_tensor_address("IMAGE", image.data_ptr())
    torch_dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BOOL: torch.bool}
    outputs = {}
    for name in OUTPUT_NAMES:
        shape = tuple(context.get_tensor_shape(name))
        outputs[name] = torch.empty(shape, dtype=torch_dtype[engine.get_tensor_dtype(name)], device="cuda")
        context.set_tensor_address(name, outputs[name].data_ptr())
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    got = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"IMAGE": images}), strict=True))
    assert got["PROB_FAKE"].shape == (4, 1) and got["IS_FAKE"].shape == (4, 1) and got["IS_FAKE"].dtype == np.bool_
    np.testing.assert_allclose(got["PROB_FAKE"], expected["PROB_FAKE"], atol=5e-2)
