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

from fmdetect.serving.admin import AdminClient
from fmdetect.serving.tritonserver import RestrictedAPI, ServerConfig, ServerError, TritonServer
from tests.conftest import encode, photo_like
from tests.test_hardening_support import infer, prob, repository_copy, write_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_PROJECT = {".venv", "artifacts", ".git", "build", "fmdetect.egg-info"}

ALWAYS_UNSAFE = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cPickle.load",
    "joblib.load",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pandas.read_pickle",
    "yaml.unsafe_load",
    "yaml.full_load",
    "yaml.load_all",
    "torch.serialization.load",
}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from every ``import`` and ``from ... import`` in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str:
    """The dotted origin of a called expression (aliases resolved), or ''."""
    if isinstance(node, ast.Name):
        return names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, names)
        return f"{base}.{node.attr}" if base else ""
    if isinstance(node, ast.Call):  # Unpickler(f).load(): the call's own origin, marked as a result
        inner = _dotted(node.func, names)
        return f"{inner}()" if inner else ""
    return ""


def unsafe_loads(source: str, where: str = "<source>") -> list[str]:
    """Calls that can unpickle arbitrary objects: pickle / joblib / dill / marshal / shelve / ``Unpickler().load``,
    ``torch.load`` without ``weights_only=True``, numpy load with ``allow_pickle=True``, ``yaml.load`` without a safe
    loader; through any import alias (``from pickle import load as l``, ``import torch as t``)."""
    tree = ast.parse(source, where)
    names = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, names)
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ALWAYS_UNSAFE or name.endswith("Unpickler().load") or name.endswith("Unpickler().loads"):
            found.append(f"{where}:{node.lineno} {name}")
        elif name == "torch.load":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"{where}:{node.lineno} torch.load without weights_only=True")
        elif name == "numpy.load":
            unsafe = keywords.get("allow_pickle")
            if not (isinstance(unsafe, ast.Constant) and unsafe.value is False) and unsafe is not None:
                found.append(f"{where}:{node.lineno} numpy.load(allow_pickle=...)")
        elif name == "yaml.load":
            loader = keywords.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or not _dotted(loader, names).endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{where}:{node.lineno} yaml.load without SafeLoader")
    return found


# The one deliberate unpickling: the test that shows the hostile payload is live before the importer refuses it.
ALLOWED = {("tests/test_import_checkpoint.py", "pickle.loads")}


def project_files() -> list[Path]:
    return sorted(p for p in REPO_ROOT.rglob("*.py") if not NOT_PROJECT & set(p.relative_to(REPO_ROOT).parts))


def test_the_scan_catches_every_unsafe_spelling():
    """The scan below proves nothing unless it can fail: every spelling of an unsafe load is caught, safe ones not."""
    unsafe = {
        "import pickle\npickle.load(f)": 1,
        "from pickle import load\nload(f)": 1,
        "from pickle import loads as l\nl(b)": 1,
        "import pickle as p\np.Unpickler(f).load()": 2,  # the Unpickler and its load
        "import torch\ntorch.load(path)": 1,
        "import torch as t\nt.load(path, weights_only=False)": 1,
        "import numpy as np\nnp.load(path, allow_pickle=True)": 1,
        "import yaml\nyaml.load(text)": 1,
        "import yaml\nyaml.load(text, Loader=yaml.Loader)": 1,
        "from yaml import unsafe_load\nunsafe_load(text)": 1,
        "import joblib\njoblib.load(path)": 1,
        "import marshal\nmarshal.loads(b)": 1,
        "import shelve\nshelve.open(path)": 1,
    }
    for source, count in unsafe.items():
        assert len(unsafe_loads(source)) == count, (source, unsafe_loads(source))
    safe = [
        "import torch\ntorch.load(path, weights_only=True)",
        "import numpy as np\nnp.load(path)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "import yaml\nyaml.safe_load(text)",
        "import json\njson.load(f)",
        "from safetensors.torch import load_file\nload_file(path)",
    ]
    for source in safe:
        assert unsafe_loads(source) == [], source


def test_no_code_path_unpickles_arbitrary_objects():
    """Every Python file of the project (packages, tests, demo.py, deploy/), parsed, not grepped."""
    files = project_files()
    assert any(p.name == "demo.py" for p in files) and any("deploy" in p.parts for p in files)
    hits = [hit for path in files for hit in unsafe_loads(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    unsafe = [hit for hit in hits if (hit.split(":")[0], hit.split(" ", 1)[1]) not in ALLOWED]
    assert unsafe == [], "checkpoints and artifacts must load without unpickling arbitrary objects"
    assert len(hits) - len(unsafe) == len(ALLOWED), "an allowed exception no longer exists: remove it"


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
        status, body = AdminClient(server.http_url).request("POST", "/v2/repository/models/detector/load")
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
        from fmdetect.client import ClientConfig, DetectorClient, DetectorClientError

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
        with caplog.at_level(logging.INFO, logger="fmdetect.client.detector_client"):
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
    assert all(
        any(reason in m for reason in ("Request timeout expired", "Exceeds maximum queue size")) for m in retried
    ), retried
    scores = [r[2] for r in records]
    v2 = next(s for s in scores if abs(s - v1) > 1e-4)
    assert v2 > v1, "v2 shifts the logit by +2"
    assert all(abs(s - v1) < 1e-6 or abs(s - v2) < 1e-6 for s in scores), set(scores)
    assert all(abs(s - v1) < 1e-6 for begin, _, s in records if begin < began - 0.5)
    after = [s for begin, _, s in records if begin > loaded]
    assert after and all(abs(s - v2) < 1e-6 for s in after), "requests sent after the load must get v2"
    print(
        f"rollout: {len(records)} requests, 0 failed ({len(retried)} queue-timeout rejections retried); "
        f"load_model took {loaded - began:.2f} s; score {v1:.4f} -> {v2:.4f}"
    )
