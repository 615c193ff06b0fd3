"""Artifacts: no unpickling of arbitrary objects, ONNX checked against its SHA-256 before loading, and a v1 -> v2
rollout with explicit model control that fails no in-flight request."""

from __future__ import annotations

import ast
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import encode, photo_like
from tests.test_hardening_support import infer, prob, repository_copy, write_sha256
from triton_repo.server import RestrictedAPI, ServerConfig, ServerError, TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "training", "export", "triton_repo", "client", "benchmarks")


def _unsafe_loads(path: Path) -> list[str]:
    """Calls that can unpickle arbitrary objects: pickle/joblib/dill loads, torch.load without
    weights_only=True, numpy load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}"
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "dill.loads", "cloudpickle.load"):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}")
        elif name == "torch.load":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} torch.load without weights_only=True")
        elif name == "np.load" or name == "numpy.load":
            unsafe = keywords.get("allow_pickle")
            if isinstance(unsafe, ast.Constant) and unsafe.value is True:
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} np.load(allow_pickle=True)")
    return found


def test_no_code_path_unpickles_arbitrary_objects():
    files = [p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")]
    assert files
    unsafe = [hit for path in files for hit in _unsafe_loads(path)]
    assert unsafe == [], "checkpoints and artifacts must load without unpickling arbitrary objects"


def shifted_model(source: Path, dest: Path, delta: float) -> None:
    """A copy of the detector graph whose logits are shifted by ``delta`` (the final Gemm's bias): "v2"."""
    model = onnx.load(str(source))
    gemm = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
    for init in model.graph.initializer:
        if init.name == gemm.input[2]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(delta), init.name))
            break
    else:
        raise AssertionError("no Gemm bias in the detector graph")
    onnx.save(model, str(dest))


def _stage_version(served: Path, version: int, delta: float) -> Path:
    folder = served / "detector" / str(version)
    folder.mkdir()
    shutil.copy2(served / "detector" / "1" / "model.py", folder / "model.py")
    shifted_model(served / "detector" / "1" / "model.onnx", folder / "model.onnx", delta)
    return folder


@pytest.mark.triton
@pytest.mark.slow
def test_checksums_and_rollout_without_failed_requests(cpu_repository: Path, tmp_path: Path, caplog):
    repo = repository_copy(cpu_repository, tmp_path / "repo", detector={"require_sha256": "true"})
    good = encode(photo_like(64, 64, 3), "PNG")
    admin = RestrictedAPI(header="admin-key", value="s3cret")
    config = ServerConfig(model_repository=repo, model_control_explicit=True, restricted_api=admin)
    with TritonServer(config) as server:
        v1 = prob(infer(server.grpc_url, good))
        # The repository API is closed to callers without the key (the launcher sends it itself).
        status, body = server._http_body("POST", "/v2/repository/models/detector/load")
        assert status == 403 and "admin-key" in body, (status, body)
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(server.grpc_url) as raw:
            with pytest.raises(grpcclient.InferenceServerException, match="admin-key"):
                raw.load_model("detector")
            raw.load_model("preprocess", headers={"triton-grpc-protocol-admin-key": "s3cret"})  # gRPC prefix
        v2_dir = _stage_version(server.repository, 2, delta=2.0)

        # A tampered artifact: the sidecar records another file's digest. Refused, with the reason; v1 serves on.
        (v2_dir / "model.onnx.sha256").write_text(
            (server.repository / "detector" / "1" / "model.onnx.sha256").read_text()
        )
        with pytest.raises(ServerError, match="SHA-256 mismatch"):
            server.load_model("detector")
        assert any("refusing to load" in line and "SHA-256 mismatch" in line for line in server.log_errors())
        # No checksum at all while require_sha256 is true: refused too.
        (v2_dir / "model.onnx.sha256").unlink()
        with pytest.raises(ServerError, match="no checksum file"):
            server.load_model("detector")
        assert prob(infer(server.grpc_url, good)) == pytest.approx(v1, abs=1e-6)
        # v1 serves on; the server reports not ready (strict readiness) until a load succeeds. That is not a
        # fault the watchdog should act on: in explicit mode it checks liveness and the stubs only.
        assert server.check_health() is None

        # The genuine v2, rolled out under continuous load from the production client (which retries UNAVAILABLE:
        # loading v2 takes the CPU for a moment, and a request that then waits past the queue timeout is rejected).
        write_sha256(v2_dir / "model.onnx")
        records: list[tuple[float, float, object]] = []
        stop = threading.Event()
        from client import ClientConfig, DetectorClient, DetectorClientError

        def load() -> None:
            with DetectorClient(ClientConfig(url=server.grpc_url, retries=5, backoff_base_s=0.05)) as client:
                while not stop.is_set():
                    begin = time.monotonic()
                    try:
                        outcome: object = client.classify(good).prob_fake
                    except DetectorClientError as exc:
                        outcome = exc
                    records.append((begin, time.monotonic(), outcome))

        threads = [threading.Thread(target=load) for _ in range(4)]
        with caplog.at_level(logging.INFO, logger="client.detector_client"):
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.5)
                began = time.monotonic()
                server.load_model("detector")
                loaded = time.monotonic()
                time.sleep(1.5)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
        assert server.check_health() is None
        deadline = time.monotonic() + 10
        while not server.is_ready():  # ready again once v1 is unloaded
            assert time.monotonic() < deadline, "the server did not report ready after the rollout"
            time.sleep(0.1)

    failures = [r for r in records if isinstance(r[2], Exception)]
    assert failures == [], [str(f[2]) for f in failures[:5]]
    retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert all(any(reason in m for reason in ("Request timeout expired", "Exceeds maximum queue size"))
               for m in retried), retried
    scores = [r[2] for r in records]
    v2 = next(s for s in scores if abs(s - v1) > 1e-4)
    assert v2 > v1, "v2 shifts the logit by +2"
    assert all(abs(s - v1) < 1e-6 or abs(s - v2) < 1e-6 for s in scores), set(scores)
    assert all(abs(s - v1) < 1e-6 for begin, _, s in records if begin < began - 0.5)
    after = [s for begin, _, s in records if begin > loaded]
    assert after and all(abs(s - v2) < 1e-6 for s in after), "requests sent after the load must get v2"
    print(f"rollout: {len(records)} requests, 0 failed ({len(retried)} queue-timeout rejections retried); "
          f"load_model took {loaded - began:.2f} s; score {v1:.4f} -> {v2:.4f}")
