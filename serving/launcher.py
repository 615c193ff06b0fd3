"""The single-server launcher: serve a model repository with the local tritonserver, watched, until Ctrl-C.

Example::

    python -m serving.launcher --model-repository artifacts/demo/repository  # Ctrl-C stops it
    python -m serving.launcher --model-repository REPO --watch-interval 1 \\
        --grpc-server-cert server.pem --grpc-server-key server.key --grpc-root-cert ca.pem --grpc-mutual-tls
    TRITON_ADMIN_KEY=... python -m serving.launcher --model-repository REPO --model-control-explicit \\
        --admin-key-header admin-key
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from fmdetect.serving.tritonserver import GrpcTLS, RestrictedAPI, ServerConfig, ServerError, TritonServer
from fmdetect.serving.watchdog import InferenceProbe, watch


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a model repository with the local tritonserver.")
    parser.add_argument("--model-repository", required=True, type=Path, help="repository written by 'export repo'")
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)"
    )
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument(
        "--watch-interval",
        type=float,
        default=2.0,
        help="seconds between health checks; an unhealthy server is restarted (0 disables)",
    )
    parser.add_argument(
        "--model-control-explicit",
        action="store_true",
        help="allow loading/unloading models through the repository API (keep that API private)",
    )
    parser.add_argument("--grpc-server-cert", type=Path, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--grpc-server-key", type=Path, help="PEM private key of --grpc-server-cert")
    parser.add_argument("--grpc-root-cert", type=Path, help="PEM CA that signs client certificates")
    parser.add_argument(
        "--grpc-mutual-tls", action="store_true", help="require client certificates signed by --grpc-root-cert"
    )
    parser.add_argument(
        "--admin-key-header",
        metavar="NAME",
        default=RestrictedAPI.DEFAULT_HEADER,
        help="the restricted APIs answer only requests carrying header NAME with the value of "
        "$TRITON_ADMIN_KEY (unset: a random key, written to the log's folder) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--restrict",
        default=",".join(RestrictedAPI.DEFAULT_APIS),
        metavar="APIS",
        help="comma-separated APIs behind the admin key, among model-repository, model-config, "
        "shared-memory, statistics, trace, logging, health, metadata, inference "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--open-admin-apis",
        action="store_true",
        help="no admin key: every caller that reaches the ports may load models, register shared "
        "memory, change logging and tracing (unsafe outside a test machine)",
    )
    parser.add_argument(
        "--hang-deadline",
        type=float,
        default=InferenceProbe.deadline_s,
        metavar="S",
        help="deadline of the watchdog's inference probe that finds hung models; 0: no probe (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = None
    if args.grpc_server_cert or args.grpc_server_key:
        if not (args.grpc_server_cert and args.grpc_server_key):
            parser.error("TLS needs both --grpc-server-cert and --grpc-server-key")
        try:
            tls = GrpcTLS(args.grpc_server_cert, args.grpc_server_key, args.grpc_root_cert, args.grpc_mutual_tls)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.grpc_root_cert or args.grpc_mutual_tls:
        parser.error("--grpc-root-cert and --grpc-mutual-tls need --grpc-server-cert and --grpc-server-key")
    restricted = None
    if not args.open_admin_apis:
        try:
            restricted = RestrictedAPI(
                args.admin_key_header,
                os.environ.get("TRITON_ADMIN_KEY") or secrets.token_hex(16),
                tuple(a.strip() for a in args.restrict.split(",")),
            )
        except ValueError as exc:
            parser.error(f"admin key: {exc}")
    server = TritonServer(
        ServerConfig(
            model_repository=args.model_repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            model_control_explicit=args.model_control_explicit,
            grpc_tls=tls,
            restricted_api=restricted,
        )
    )
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        server.start()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hang_probe = InferenceProbe(deadline_s=args.hang_deadline) if args.hang_deadline > 0 else None
    watchdog = watch(server, args.watch_interval, hang_probe=hang_probe) if args.watch_interval > 0 else None
    if restricted is not None:
        key_file = server.workdir / "admin-key"
        key_file.touch(mode=0o600)
        key_file.write_text(restricted.value + "\n")
        source = "$TRITON_ADMIN_KEY" if os.environ.get("TRITON_ADMIN_KEY") else f"the key in {key_file}"
        print(
            f"restricted APIs ({', '.join(restricted.apis)}) need header '{restricted.header}' "
            f"(gRPC: 'triton-grpc-protocol-{restricted.header}') with {source}",
            flush=True,
        )
    print(
        f"serving {args.model_repository}: gRPC {server.grpc_url}{' (TLS)' if tls else ''}  HTTP {server.http_url}  "
        f"metrics {server.metrics_url}  (Ctrl-C stops)",
        flush=True,
    )
    try:
        while not stopping:
            if watchdog is not None:
                if any(not recovery.ok for recovery in watchdog.recoveries):
                    print(f"tritonserver could not be restarted:\n{server.log_tail()}", file=sys.stderr)
                    return 1
            elif server.process is None or server.process.poll() is not None:
                print(f"tritonserver exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        server.stop()
        print("tritonserver stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
