"""Latency and throughput of the detector: the Triton ensemble over gRPC/HTTP and, side by side, in-process runtimes.

With no arguments it serves the default CPU repository on a local tritonserver (built if missing), sends the
``photos`` payload profile (photo-sized JPEGs, some rotated, some WebP/PNG: ``benchmarks/payloads.py``), sweeps
concurrency 1, 2, 4 over gRPC and prints a table; every report states the bytes and megapixels sent. Results go to
``artifacts/perf/`` under the working directory as JSON, CSV and a plot.

Examples::

    python benchmarks/perf.py                                   # local server, short sweep
    python benchmarks/perf.py --compare                         # + PyTorch eager, ONNX Runtime, HTTP, FFT stage
    python benchmarks/perf.py --url 10.0.0.5:8001 --concurrency 1,8,32,64 --input-dir photos/
    python benchmarks/perf.py --payload-profile square --image-size 256      # small synthetic squares
    python benchmarks/perf.py --request-rate 50,100,200 --arrivals poisson   # open loop
    python benchmarks/perf.py --perf-analyzer                   # cross-check with NVIDIA perf_analyzer
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmdetect.benchmarks.backends import (  # noqa: E402
    MODEL,
    Backend,
    InProcessSender,
    Protocol,
    SharedMemory,
    TritonSender,
    admin_headers,
    onnxruntime_runner,
    pytorch_runner,
    replica_statistics,
    server_statistics,
    statistics_delta,
    summed_statistics,
)
from fmdetect.benchmarks.loadgen import (  # noqa: E402
    Arrivals,
    LevelResult,
    WindowPolicy,
    closed_loop,
    closed_loop_async,
    latency_summary_ms,
    open_loop,
)
from fmdetect.benchmarks.payloads import Payload, PayloadProfile, describe, from_directory, generate, summary_line  # noqa: E402
from fmdetect.benchmarks.report import (  # noqa: E402
    RunRecord,
    format_server_breakdown,
    format_table,
    write_csv,
    write_json,
    write_plot,
)
from fmdetect.core.metadata import DetectorMetadata  # noqa: E402

logger = logging.getLogger("perf")
ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path("artifacts") / "perf"  # results, relative to the working directory (never the installed package)


def _numbers(text: str, kind: type, what: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{what} must all be > 0, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    return _numbers(text, int, "levels")


def _floats(text: str) -> list[float]:
    return _numbers(text, float, "rates")


def _positive(text: str) -> int:
    values = _numbers(text, int, "value")
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"one number > 0 expected, got {text!r}")
    return values[0]


def _url(text: str) -> str:
    """host:port, as tritonclient takes it; a scheme or a path is refused rather than sent wrong."""
    if "://" in text or "/" in text:
        raise argparse.ArgumentTypeError(f"give host:port without a scheme or path, e.g. 127.0.0.1:8001; got {text!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"give host:port, e.g. 127.0.0.1:8001; got {text!r}")
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


@dataclass(frozen=True)
class PerfConfig:
    url: str | None
    replica_urls: tuple[str, ...]
    model: str
    protocol: Protocol
    concurrency: tuple[int, ...]
    request_rate: tuple[float, ...]
    arrivals: Arrivals
    batch_size: int
    policy: WindowPolicy
    input_dir: Path | None
    payload_profile: PayloadProfile
    payload: str
    image_size: int
    num_images: int
    shared_memory: SharedMemory
    admin_key: tuple[str, str] | None
    compare: bool
    compare_batches: tuple[int, ...]
    perf_analyzer: bool
    repository: Path
    checkpoint: Path | None
    json: Path | None
    csv: Path | None
    plot: Path | None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--url", type=_url, default=None, help="host:port of a running server (default: start a local one)")
    p.add_argument(
        "--replica-urls",
        default="",
        help="gRPC host:port of each replica behind --url (a load balancer), comma-separated: server-side "
        "statistics are summed over them and the calls each answered are printed",
    )
    p.add_argument("--model", default=MODEL, help="model to call")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--concurrency", type=_ints, default="1,2,4", help="closed-loop levels, comma-separated")
    p.add_argument(
        "--request-rate", type=_floats, default="", help="open-loop request rates per second (replaces --concurrency)"
    )
    p.add_argument("--arrivals", default="poisson", choices=[a.value for a in Arrivals], help="open-loop arrivals")
    p.add_argument("--batch-size", type=_positive, default=1, help="images per request")
    p.add_argument("--duration", type=float, default=12.0, help="most seconds measured per level")
    p.add_argument("--window", type=float, default=1.5, help="seconds per measurement window")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per level, not counted")
    p.add_argument("--stability", type=float, default=0.10, help="windows agree within this fraction")
    p.add_argument("--input-dir", type=Path, default=None, help="real images to send (replaces --payload-profile)")
    p.add_argument(
        "--payload-profile",
        default=PayloadProfile.PHOTOS.value,
        choices=[x.value for x in PayloadProfile],
        help="generated images: sizes and formats of benchmarks/payloads.py",
    )
    p.add_argument("--payload", default="jpeg", choices=["jpeg", "png"], help="encoding of the square profile")
    p.add_argument("--image-size", type=_positive, default=256, help="side of the square profile's images")
    p.add_argument("--num-images", type=_positive, default=32, help="distinct images to cycle through")
    p.add_argument(
        "--shared-memory",
        default="none",
        choices=[s.value for s in SharedMemory],
        help="send inputs through system shared memory (local server only; cuda: GPU only)",
    )
    p.add_argument(
        "--admin-key-header",
        default="admin-key",
        help="with --url: the header that carries $TRITON_ADMIN_KEY to the server's restricted APIs "
        "(shared-memory registration) (default: %(default)s)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also PyTorch eager and ONNX Runtime in-process, Triton over gRPC and HTTP, FFT stage cost",
    )
    p.add_argument("--compare-batches", type=_ints, default="1,8,32", help="batch sizes tried for in-process backends")
    p.add_argument("--perf-analyzer", action="store_true", help="cross-check with NVIDIA perf_analyzer")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("artifacts") / "repository" / "cpu",
        help="CPU model repository to serve (built if missing), relative to the working directory",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint for the in-process backends")
    p.add_argument(
        "--json",
        type=_optional_path,
        default=OUT_DIR / "perf.json",
        help="report, relative to the working directory ('': none)",
    )
    p.add_argument("--csv", type=_optional_path, default=OUT_DIR / "perf.csv", help="one row per run ('': none)")
    p.add_argument(
        "--plot",
        type=_optional_path,
        default=OUT_DIR / "perf.png",
        help="PNG of throughput against p99 latency ('': none)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> PerfConfig:
    windows = max(3, int(round(args.duration / args.window)))
    return PerfConfig(
        url=args.url,
        replica_urls=tuple(u.strip() for u in args.replica_urls.split(",") if u.strip()),
        model=args.model,
        protocol=Protocol(args.protocol),
        concurrency=tuple(args.concurrency),
        request_rate=tuple(args.request_rate),
        arrivals=Arrivals(args.arrivals),
        batch_size=args.batch_size,
        policy=WindowPolicy(window_s=args.window, warmup_s=args.warmup, stability=args.stability, max_windows=windows),
        input_dir=args.input_dir,
        payload_profile=PayloadProfile(args.payload_profile),
        payload=args.payload,
        image_size=args.image_size,
        num_images=args.num_images,
        shared_memory=SharedMemory(args.shared_memory),
        admin_key=(
            (args.admin_key_header, os.environ["TRITON_ADMIN_KEY"]) if os.environ.get("TRITON_ADMIN_KEY") else None
        ),
        compare=args.compare,
        compare_batches=tuple(args.compare_batches),
        perf_analyzer=args.perf_analyzer,
        repository=args.repository,
        checkpoint=args.checkpoint,
        json=args.json,
        csv=args.csv,
        plot=args.plot,
    )


# ------------------------------------------------------------------------------------------------ inputs
def load_payloads(cfg: PerfConfig) -> list[Payload]:
    """The images to send: the files under ``--input-dir``, or ``--num-images`` of the payload profile."""
    if cfg.input_dir is not None:
        return from_directory(cfg.input_dir, cfg.num_images)
    return generate(cfg.payload_profile, cfg.num_images, size=cfg.image_size, fmt=cfg.payload)


def check_ready(url: str, protocol: Protocol, model: str, admin_key: tuple[str, str] | None = None) -> None:
    """Fails in one line when the server cannot be reached or does not serve ``model`` ready; the models it does
    serve are listed when ``admin_key`` opens its repository API (restricted by default)."""
    if protocol is Protocol.GRPC:
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    try:
        client = module.InferenceServerClient(url)
        live = client.is_server_live()
    except Exception as exc:  # noqa: BLE001 - any transport failure means the same to the user
        raise SystemExit(f"error: no Triton server at {url} ({protocol.value}): {str(exc).splitlines()[0]}") from None
    if not live:
        raise SystemExit(f"error: the server at {url} is not live")
    try:
        ready = client.is_model_ready(model)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"error: the server at {url} did not answer for model {model!r}: {exc}") from None
    if not ready:
        try:
            index = client.get_model_repository_index(headers=admin_headers(admin_key, protocol))
            names = sorted(
                {
                    (m["name"] if isinstance(m, dict) else m.name)
                    for m in (index if isinstance(index, list) else index.models)
                }
            )
            serves = f"it serves: {', '.join(names) or 'none'}"
        except Exception:  # noqa: BLE001 - the repository API is restricted without the admin key
            serves = "its model list needs the admin key ($TRITON_ADMIN_KEY)"
        raise SystemExit(f"error: model {model!r} is not ready at {url}; {serves}")


# ------------------------------------------------------------------------------------------------ artifacts
DEFAULT_DETECTOR = ROOT / "detectors" / "default"


def default_checkpoint() -> Path:
    """The committed default detector (detectors/README.md)."""
    if not (DEFAULT_DETECTOR / "metadata.json").is_file():
        raise SystemExit(f"error: {DEFAULT_DETECTOR} is missing; pass --checkpoint or --repository")
    return DEFAULT_DETECTOR


def ensure_repository(cfg: PerfConfig) -> Path:
    """The CPU repository to serve, exported from the checkpoint when missing."""
    if (cfg.repository / "detector" / "1" / "model.onnx").is_file():
        return cfg.repository
    checkpoint = cfg.checkpoint or default_checkpoint()
    print(f"building {cfg.repository} from {checkpoint}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fmdetect.export",
            "repo",
            "--checkpoint",
            str(checkpoint),
            "--target",
            "cpu",
            "--out",
            str(cfg.repository),
        ],
        check=True,
        cwd=ROOT,
    )
    return cfg.repository


# ------------------------------------------------------------------------------------------------ measurement
def record(
    backend: str,
    protocol: str,
    level: LevelResult,
    batch_size: int,
    concurrency: int | None,
    rate: float | None,
    server: dict | None = None,
) -> RunRecord:
    s = level.samples
    return RunRecord(
        backend=backend,
        protocol=protocol,
        concurrency=concurrency,
        request_rate=rate,
        batch_size=batch_size,
        throughput_ips=s.throughput_rps * batch_size,
        throughput_rps=s.throughput_rps,
        latency_ms=latency_summary_ms(s.latencies),
        samples=len(s.latencies),
        errors=s.errors,
        windows=level.windows,
        stable=level.stable,
        server=server or {},
        error_messages=s.error_messages,
    )


def _statistics(cfg: PerfConfig, sender: TritonSender) -> dict[str, dict[str, dict[str, int]]]:
    """Counters per server: each replica at its own address, or the one server behind the URL (through a
    balancer, one statistics call reaches one replica only)."""
    return replica_statistics(list(cfg.replica_urls)) if cfg.replica_urls else {sender.url: server_statistics(sender)}


def measure_triton(cfg: PerfConfig, url: str, protocol: Protocol, payloads: list[bytes]) -> list[RunRecord]:
    sender = TritonSender(
        url, protocol, payloads, cfg.batch_size, cfg.model, cfg.shared_memory, admin_key=cfg.admin_key
    )
    runs = []
    try:
        levels = [(None, r) for r in cfg.request_rate] or [(c, None) for c in cfg.concurrency]
        for concurrency, rate in levels:
            before = _statistics(cfg, sender)
            if rate is None and sender.supports_async:
                level = closed_loop_async(sender.start, concurrency, cfg.policy)
            elif rate is None:
                level = closed_loop(sender, concurrency, cfg.policy)
            else:
                level = open_loop(sender, rate / 1.0, cfg.arrivals, cfg.policy)
            after = _statistics(cfg, sender)
            server = statistics_delta(summed_statistics(before), summed_statistics(after))
            if cfg.replica_urls:
                calls = {
                    u: after[u].get(cfg.model, {}).get("success_count", 0)
                    - before[u].get(cfg.model, {}).get("success_count", 0)
                    for u in after
                }
                print("  calls per replica: " + ", ".join(f"{u} {n}" for u, n in calls.items()), flush=True)
            runs.append(record("triton", protocol.value, level, cfg.batch_size, concurrency, rate, server))
            print(format_table(runs[-1:]).splitlines()[-1], flush=True)
    finally:
        sender.close()
    return runs


def measure_inprocess(
    cfg: PerfConfig, backend: Backend, runner, metadata: DetectorMetadata, payloads: list[bytes]
) -> list[RunRecord]:
    runs = []
    for batch in cfg.compare_batches:
        sender = InProcessSender(runner, metadata, payloads, batch)
        level = closed_loop(sender, 1, cfg.policy)
        runs.append(record(backend.value, Protocol.INPROCESS.value, level, batch, 1, None))
        print(format_table(runs[-1:]).splitlines()[-1], flush=True)
    return runs


def fft_stage_costs(metadata: DetectorMetadata, batch: int = 8, repeats: int = 20) -> list[dict]:
    """Milliseconds per batch of the FFT stage alone, per implementation, at the checkpoint's input size."""
    import warnings

    import onnxruntime as ort
    import torch

    from fmdetect.core.fft import FFTForm, apply_fft_stage, inference_masks
    from fmdetect.core.metadata import FFTStageConfig
    from fmdetect.training.fft_stage import FFTStage

    k = metadata.fft_stage.views
    h, w = metadata.input_size
    stage_cfg = FFTStageConfig(**{**asdict(metadata.fft_stage), "masks": k})
    masks = inference_masks(stage_cfg, h, w)
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)

    def timed(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3

    results = [("numpy (reference)", timed(lambda: apply_fft_stage(x, masks)))]
    tx = torch.from_numpy(x)
    for impl in (FFTForm.DFT, FFTForm.MATMUL):
        stage = FFTStage(torch.from_numpy(masks), h, w, impl).eval()
        with torch.inference_mode():
            results.append(("torch fft" if impl is FFTForm.DFT else "torch matmul", timed(lambda: stage(tx))))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "stage.onnx"
            torch.onnx.export(
                stage,
                (tx,),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=20,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = "onnxruntime DFT op" if impl is FFTForm.DFT else "onnxruntime MatMul"
        results.append((name, timed(lambda: session.run(None, {"x": x}))))
    return [{"impl": n, "batch_size": batch, "masks": k, "input_size": [h, w], "ms_per_batch": ms} for n, ms in results]


def ratios(runs: list[RunRecord]) -> dict[str, float]:
    """The comparisons the README reports, from this run's figures."""

    def best(backend: str, protocol: str) -> RunRecord | None:
        pool = [r for r in runs if r.backend == backend and r.protocol == protocol and r.errors == 0]
        return max(pool, key=lambda r: r.throughput_ips, default=None)

    out = {}
    torch_best, ort_best = best("pytorch", "inprocess"), best("onnxruntime", "inprocess")
    triton_best = best("triton", "grpc")
    if torch_best and ort_best:
        out["onnxruntime_over_pytorch_throughput"] = ort_best.throughput_ips / torch_best.throughput_ips
    if triton_best and ort_best:
        out["triton_grpc_over_onnxruntime_throughput"] = triton_best.throughput_ips / ort_best.throughput_ips
    single = [r for r in runs if r.backend == "onnxruntime" and r.batch_size == 1]
    c1 = [r for r in runs if r.backend == "triton" and r.protocol == "grpc" and r.concurrency == 1]
    if single and c1:
        out["triton_p99_c1_over_inprocess_p50_single"] = c1[0].latency_ms["p99"] / single[0].latency_ms["p50"]
    return out


TARGETS = {
    "onnxruntime_over_pytorch_throughput": (">=", 1.3),
    "triton_grpc_over_onnxruntime_throughput": (">=", 0.8),
    "triton_p99_c1_over_inprocess_p50_single": ("<=", 1.5),
}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    try:
        images = load_payloads(cfg)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    payload_description = {
        "profile": str(cfg.input_dir) if cfg.input_dir else cfg.payload_profile.value,
        **describe(images),
    }
    sent = [p.data for p in images]
    print(
        f"payloads ({payload_description['profile']}): {summary_line(payload_description)}; "
        f"windows of {cfg.policy.window_s:g} s, stable within {cfg.policy.stability:.0%} over "
        f"{cfg.policy.stable_windows} windows (at most {cfg.policy.max_windows})",
        flush=True,
    )

    server = None
    url = cfg.url
    if url is None:
        from fmdetect.serving.tritonserver import ServerConfig, TritonServer

        server = TritonServer(ServerConfig(model_repository=ensure_repository(cfg)))
        server.start()
        restricted = server.config.restricted_api
        cfg = replace(cfg, admin_key=(restricted.header, restricted.value) if restricted else None)
        url = server.grpc_url if cfg.protocol is Protocol.GRPC else server.http_url
    else:
        check_ready(url, cfg.protocol, cfg.model, cfg.admin_key)
    runs: list[RunRecord] = []
    extra: dict = {"payloads": payload_description}
    try:
        print(format_table([]).splitlines()[0], flush=True)
        runs += measure_triton(cfg, url, cfg.protocol, sent)
        if cfg.compare:
            if server is not None:
                other = Protocol.HTTP if cfg.protocol is Protocol.GRPC else Protocol.GRPC
                other_url = server.http_url if other is Protocol.HTTP else server.grpc_url
                runs += measure_triton(replace(cfg, shared_memory=SharedMemory.NONE), other_url, other, sent)
            checkpoint = cfg.checkpoint or default_checkpoint()
            metadata = DetectorMetadata.load(checkpoint)
            onnx_path = ensure_repository(cfg) / "detector" / "1" / "model.onnx"
            runs += measure_inprocess(cfg, Backend.PYTORCH, pytorch_runner(checkpoint), metadata, sent)
            runs += measure_inprocess(cfg, Backend.ONNXRUNTIME, onnxruntime_runner(onnx_path), metadata, sent)
            extra["fft_stage"] = fft_stage_costs(metadata)
        if cfg.perf_analyzer:
            from fmdetect.benchmarks import perf_analyzer

            pa_url = server.grpc_url if server is not None else url
            try:
                extra["perf_analyzer"] = perf_analyzer.run(
                    pa_url, "grpc", cfg.model, sent, list(cfg.concurrency), cfg.policy
                )
            except (RuntimeError, FileNotFoundError) as exc:
                extra["perf_analyzer_error"] = str(exc)
                print(f"perf_analyzer: {exc}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()

    print("\n" + format_table(runs))
    breakdown = format_server_breakdown(runs)
    if breakdown:
        print("\nserver-side, per request (Triton statistics over each level):\n" + breakdown)
    if "fft_stage" in extra:
        print("\nFFT stage alone (batch 8, in-process, CPU):")
        for row in extra["fft_stage"]:
            print(f"  {row['impl']:<22} {row['ms_per_batch']:8.2f} ms  (K={row['masks']}, {row['input_size']})")
    if "perf_analyzer" in extra:
        ours = {r.concurrency: r for r in runs if r.backend == "triton" and r.protocol == "grpc"}
        print("\nperf_analyzer vs this harness (gRPC, same model and images):")
        for pa in extra["perf_analyzer"]:
            if "error" in pa:
                print(f"  concurrency {pa['concurrency']}: perf_analyzer could not measure: {pa['error']}")
                continue
            mine = ours.get(pa["concurrency"])
            ratio = pa["throughput_ips"] / mine.throughput_ips if mine and mine.throughput_ips else float("nan")
            print(
                f"  concurrency {pa['concurrency']}: perf_analyzer {pa['throughput_ips']:.1f} img/s "
                f"p99 {pa['p99_ms']:.1f} ms | ours {mine.throughput_ips if mine else float('nan'):.1f} img/s "
                f"p99 {mine.latency_ms['p99'] if mine else float('nan'):.1f} ms | ratio {ratio:.2f}"
            )
    found = ratios(runs)
    if found:
        extra["ratios"] = found
        print("\nratios (same run):")
        for key, value in found.items():
            op, target = TARGETS[key]
            ok = value >= target if op == ">=" else value <= target
            print(f"  {key:<42} {value:6.2f}   target {op} {target}  {'met' if ok else 'MISSED'}")
    errors = sum(r.errors for r in runs)
    if errors:
        print(f"\n{errors} requests failed:")
        for r in runs:
            for message, count in r.error_messages.items():
                print(f"  {r.label} x{count}: {message}")
    config = {
        k: (str(v) if isinstance(v, (Path, Protocol, SharedMemory, Arrivals)) else v)
        for k, v in asdict(cfg).items()
        if k != "admin_key"
    }  # a secret: never in a report
    config["url"] = url
    if cfg.json:
        write_json(cfg.json, config, runs, extra)
    if cfg.csv:
        write_csv(cfg.csv, runs)
    if cfg.plot and runs:
        where = f"at {cfg.url}" if cfg.url else f"local server, {os.cpu_count()} CPU cores"
        write_plot(cfg.plot, runs, f"{cfg.model} {where}, payloads {payload_description['profile']}")
    written = [str(p) for p in (cfg.json, cfg.csv, cfg.plot) if p]
    if written:
        print("\nwrote " + ", ".join(written))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
