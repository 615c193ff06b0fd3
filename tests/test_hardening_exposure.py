"""Exposure: the launcher binds 127.0.0.1 by default; gRPC over TLS and mutual TLS with a real tritonserver.

Certificates are made per test session with the ``openssl`` command line (the ``cryptography`` package is not a
dependency): a CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a second CA that
nobody trusts.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from fmdetect.serving.launcher import get_args_parser
from fmdetect.serving.tritonserver import GrpcTLS, ServerConfig, TritonServer
from tests.conftest import encode, find_tool, photo_like, skip_for_missing_tool

PAYLOAD = encode(photo_like(64, 64, 0), "PNG")


def _listening_addresses(pid: int) -> dict[int, str]:
    """port -> local address of every TCP socket ``pid`` listens on (from /proc/<pid>/fd and /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                address, port = local.split(":")
                # 32-bit words in host (little-endian) order
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
                ip = ipaddress.ip_address(raw)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped  # gRPC listens on an IPv6 socket bound to ::ffff:127.0.0.1
                found[int(port, 16)] = str(ip)
    return found


@pytest.mark.triton
def test_binds_loopback_only_by_default(triton_server):
    """Read-only look at the shared session server: every listening socket is on 127.0.0.1."""
    assert ServerConfig(model_repository=Path(".")).host == "127.0.0.1"
    if "HOST" not in os.environ:
        assert get_args_parser().parse_args(["--model-repository", "r"]).host == "127.0.0.1"
    listening = _listening_addresses(triton_server.process.pid)
    assert {triton_server.grpc_port, triton_server.http_port, triton_server.metrics_port} <= set(listening)
    assert set(listening.values()) == {"127.0.0.1"}, listening


# ---------------------------------------------------------------- TLS
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(name: str, folder: Path) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )


def _leaf(name: str, ca: str, extensions: str, folder: Path) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=folder,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=folder,
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_tool("openssl") is None:
        skip_for_missing_tool("openssl", "no certificates can be made, so no TLS test")
    folder = tmp_path_factory.mktemp("pki")
    _ca("ca", folder)
    _ca("rogue-ca", folder)
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    _leaf("server", "ca", leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n", folder)
    _leaf("client", "ca", leaf + "extendedKeyUsage=clientAuth\n", folder)
    _leaf("rogue-client", "rogue-ca", leaf + "extendedKeyUsage=clientAuth\n", folder)
    return folder


def _classify(url: str, **tls: object):
    """Classify one image with the project's client; returns the Prediction or the DetectorClientError."""
    from fmdetect.client import ClientConfig, DetectorClient, DetectorClientError

    config = ClientConfig(url=url, retries=0, timeout_s=10, **tls)
    with DetectorClient(config) as client:
        try:
            return client.classify(PAYLOAD)
        except DetectorClientError as exc:
            return exc


@pytest.mark.triton
def test_grpc_tls(cpu_repository: Path, certificates: Path):
    from fmdetect.client import Prediction, ServerUnavailableError

    tls = GrpcTLS(server_cert=certificates / "server.pem", server_key=certificates / "server.key")
    with TritonServer(ServerConfig(model_repository=cpu_repository, grpc_tls=tls)) as server:
        trusted = _classify(server.grpc_url, ssl=True, root_certificates=str(certificates / "ca.pem"))
        by_name = _classify(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(certificates / "ca.pem"))
        system_roots = _classify(server.grpc_url, ssl=True)
        wrong_ca = _classify(server.grpc_url, ssl=True, root_certificates=str(certificates / "rogue-ca.pem"))
        plaintext = _classify(server.grpc_url)
    assert isinstance(trusted, Prediction), trusted
    assert isinstance(by_name, Prediction), by_name
    for name, result in {"system roots": system_roots, "wrong CA": wrong_ca, "plaintext": plaintext}.items():
        assert isinstance(result, ServerUnavailableError), (name, result)


@pytest.mark.triton
def test_grpc_mutual_tls(cpu_repository: Path, certificates: Path):
    from fmdetect.client import Prediction, ServerUnavailableError

    tls = GrpcTLS(certificates / "server.pem", certificates / "server.key", certificates / "ca.pem", mutual=True)
    ca = str(certificates / "ca.pem")
    with TritonServer(ServerConfig(model_repository=cpu_repository, grpc_tls=tls)) as server:
        with_cert = _classify(
            server.grpc_url,
            ssl=True,
            root_certificates=ca,
            private_key=str(certificates / "client.key"),
            certificate_chain=str(certificates / "client.pem"),
        )
        without_cert = _classify(server.grpc_url, ssl=True, root_certificates=ca)
        rogue_cert = _classify(
            server.grpc_url,
            ssl=True,
            root_certificates=ca,
            private_key=str(certificates / "rogue-client.key"),
            certificate_chain=str(certificates / "rogue-client.pem"),
        )
    assert isinstance(with_cert, Prediction), with_cert
    for name, result in {"no client certificate": without_cert, "untrusted client CA": rogue_cert}.items():
        assert isinstance(result, ServerUnavailableError), (name, result)


def test_tls_settings_are_validated(tmp_path: Path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    assert GrpcTLS(cert, key).args() == [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={cert}",
        f"--grpc-server-key={key}",
    ]
    with pytest.raises(ValueError, match="mutual TLS needs root_cert"):
        GrpcTLS(cert, key, mutual=True)
    with pytest.raises(ValueError, match="does not exist"):
        GrpcTLS(cert, tmp_path / "missing.key")
    assert "--grpc-use-ssl-mutual=true" in GrpcTLS(cert, key, cert, mutual=True).args()


@pytest.mark.triton
def test_admin_apis_are_closed_to_callers_without_the_key(triton_server):
    """The default launch (no admin settings given) as an outsider sees it: the region attack (register a
    shared-memory region under the server's own python-backend region name, then send a request whose output
    goes there) fails at registration, over gRPC and over plain HTTP; loading models, logging and trace settings
    are refused too; inference, health, statistics and model config stay open; the key opens the API."""
    import json
    import urllib.error
    import urllib.request

    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm

    restricted = triton_server.config.restricted_api
    assert restricted is not None and set(restricted.apis) >= {"shared-memory", "model-repository", "logging", "trace"}
    own_regions = sorted(Path("/dev/shm").glob(f"{triton_server.shm_prefix}*"))
    assert own_regions, "the python backend's regions should exist while the server runs"
    target = own_regions[0].name

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        with pytest.raises(grpcclient.InferenceServerException, match=restricted.header):
            raw.register_system_shared_memory("attack", f"/{target}", 1 << 20)
        with pytest.raises(grpcclient.InferenceServerException, match=restricted.header):
            raw.load_model("detector")
        with pytest.raises(grpcclient.InferenceServerException, match=restricted.header):
            raw.update_log_settings({"log_verbose_level": 1})
        status = raw.get_system_shared_memory_status(headers=restricted.grpc_headers(), as_json=True)
        assert status.get("regions", {}) == {}
        # Open: inference, health, statistics, config.
        data = np.array([[PAYLOAD]], dtype=object)
        tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        tensor.set_data_from_numpy(data)
        assert raw.infer("deepfake_detector", [tensor]).as_numpy("PROB_FAKE").shape == (1, 1)
        assert raw.is_server_ready() and raw.get_inference_statistics("deepfake_detector")
        assert raw.get_model_config("deepfake_detector")

        # With the key, the same API works for a region of the caller's own.
        name = f"fmdetect_test_{os.getpid()}"
        handle = shm.create_shared_memory_region(name, f"/{name}", 1 << 16)
        try:
            raw.register_system_shared_memory(name, f"/{name}", 1 << 16, headers=restricted.grpc_headers())
            status = raw.get_system_shared_memory_status(headers=restricted.grpc_headers(), as_json=True)
            assert [r["name"] for r in status.get("regions", {}).values()] == [name]
            raw.unregister_system_shared_memory(name, headers=restricted.grpc_headers())
        finally:
            shm.destroy_shared_memory_region(handle)

    def http(method: str, path: str, body: dict | None = None, headers: dict | None = None) -> int:
        request = urllib.request.Request(
            f"http://{triton_server.http_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers or {},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    register = {"key": f"/{target}", "offset": 0, "byte_size": 1 << 20}
    assert http("POST", "/v2/systemsharedmemory/region/attack/register", register) == 403
    assert http("POST", "/v2/repository/index", {}) == 403
    assert http("POST", "/v2/logging", {"log_verbose_level": 1}) == 403
    assert http("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}) == 403
    assert http("GET", "/v2/models/stats") == 200
    assert http("GET", "/v2/systemsharedmemory/status", headers=restricted.http_headers()) == 200


def test_launcher_restricts_by_default_and_opens_only_when_told(tmp_path: Path, monkeypatch):
    from fmdetect.serving.tritonserver import RestrictedAPI

    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    first, second = (ServerConfig(model_repository=tmp_path).restricted_api for _ in range(2))
    assert first.apis == RestrictedAPI.DEFAULT_APIS and len(first.value) == 32
    assert first.value != second.value, "a random key per launch"
    monkeypatch.setenv("TRITON_ADMIN_KEY", "k3y")
    assert ServerConfig(model_repository=tmp_path).restricted_api.value == "k3y"
    args = get_args_parser().parse_args(["--model-repository", "r"])
    assert not args.open_admin_apis and args.restrict.split(",") == list(RestrictedAPI.DEFAULT_APIS)
    assert get_args_parser().parse_args(["--model-repository", "r", "--open-admin-apis"]).open_admin_apis
