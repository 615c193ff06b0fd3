"""The main job, end to end: benchmark data -> detector -> ONNX export -> Triton (CPU) -> gRPC client -> a first figure.

The detector is the committed default (``detectors/default``: trained by this project on its offline benchmark,
see ``detectors/README.md``); ``--retrain`` trains it again with the same command instead. Every step caches its
output under ``--artifacts``; a second run reuses what the first built.

Example::

    python demo.py --artifacts artifacts          # what `make demo` runs
    python demo.py --artifacts artifacts --only-build   # stop after writing the repository (`make serve` uses it)
    python demo.py --artifacts artifacts --retrain      # reproduce the default detector (see detectors/README.md)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("demo")

ROOT = Path(__file__).resolve().parent
DEFAULT_DETECTOR = ROOT / "detectors" / "default"
IMAGE_SIZE = 128
BACKBONE = "efficientnet_lite0"
# The training command of the default detector (detectors/README.md): the paper's frequency masking (15 %, all
# bands), efficientnet_lite0 at 128 px from ImageNet weights, 10 epochs on the benchmark's one GAN family
# (gan_progressive); then its test-time masks K, chosen on the validation sources, with the threshold recalibrated.
TRAIN_FLAGS = (
    "--backbone",
    BACKBONE,
    "--pretrained",
    "--image-size",
    str(IMAGE_SIZE),
    "--mask",
    "frequency",
    "--mask-band",
    "all",
    "--mask-ratio",
    "0.15",
)
TEST_TIME_MASKS = 0


@dataclass(frozen=True)
class DemoConfig:
    artifacts: Path
    only_build: bool
    retrain: bool
    epochs: int
    seed: int

    @property
    def data(self) -> Path:
        """The default detector's build to retrain on (full profile, native crops), or the demo profile's few
        testing images to classify."""
        return self.artifacts / "data" / ("benchmark_native" if self.retrain else "demo")

    @property
    def run(self) -> Path:
        return self.artifacts / "runs" / "default"

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoint_k" if self.retrain else DEFAULT_DETECTOR

    @property
    def repository(self) -> Path:
        return self.artifacts / "repository" / "cpu"

    @property
    def parity_report(self) -> Path:
        return self.artifacts / "repository" / "onnx_parity.json"


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def run_module(*args: str) -> None:
    """Run a project command in a child process, its progress bars on this terminal."""
    subprocess.run([sys.executable, "-m", *args], check=True)


def build_data(cfg: DemoConfig) -> None:
    if cfg.retrain:
        step(f"Benchmark, full profile with native crops (cached; about 25 min on 2 cores the first time): {cfg.data}")
        from fmdetect.training.benchmark.config import DEFAULT_DETECTOR_NATIVE_SHARE

        share = str(DEFAULT_DETECTOR_NATIVE_SHARE)
        run_module(
            "fmdetect.training.benchmark", "--out", str(cfg.data), "--seed", str(cfg.seed), "--native-share", share
        )
    else:
        step(f"Benchmark, demo profile: testing images of 4 families (cached; minutes the first time): {cfg.data}")
        run_module("fmdetect.training.benchmark", "--out", str(cfg.data), "--profile", "demo", "--seed", str(cfg.seed))


def train(cfg: DemoConfig) -> None:
    """Train the default detector's recipe into ``artifacts/runs/default`` (only with ``--retrain``), evaluate it."""
    if not cfg.retrain:
        step(f"Detector: the committed default, {DEFAULT_DETECTOR.relative_to(ROOT)} (--retrain to train it again)")
        print((DEFAULT_DETECTOR / "evaluation" / "metrics.md").read_text())
        return
    step(f"Detector: {BACKBONE} at {IMAGE_SIZE}px, frequency masking 15%, {cfg.epochs} epochs: {cfg.checkpoint}")
    if (cfg.checkpoint / "metadata.json").is_file():
        print(f"reusing the checkpoint trained by an earlier --retrain (delete {cfg.run} to train again)")
    else:
        if not (cfg.run / "checkpoint" / "metadata.json").is_file():
            run_module(
                "fmdetect.training.train",
                "--data",
                str(cfg.data),
                "--out",
                str(cfg.run),
                *TRAIN_FLAGS,
                "--epochs",
                str(cfg.epochs),
                "--seed",
                str(cfg.seed),
            )
        run_module(
            "fmdetect.training.calibrate",
            "--checkpoint",
            str(cfg.run / "checkpoint"),
            "--data",
            str(cfg.data),
            "--split",
            "validation",
            "--masks",
            str(TEST_TIME_MASKS),
            "--out",
            str(cfg.checkpoint),
        )
    if not (cfg.run / "eval" / "metrics.md").is_file():
        run_module(
            "fmdetect.training.evaluate",
            "--checkpoint",
            str(cfg.checkpoint),
            "--data",
            str(cfg.data),
            "--out",
            str(cfg.run / "eval"),
            "--robustness",
        )
    print((cfg.run / "eval" / "metrics.md").read_text())


def export(cfg: DemoConfig) -> None:
    step(f"Export: ONNX (FFT stage as MatMul) + Triton CPU repository: {cfg.repository}")
    exported_from = cfg.repository.parent / "cpu.source.json"
    source = {
        "checkpoint": str(cfg.checkpoint.resolve()),
        "weights_sha256": hashlib.sha256((cfg.checkpoint / "model.safetensors").read_bytes()).hexdigest(),
    }
    if (
        (cfg.repository / "detector" / "1" / "model.onnx").is_file()
        and exported_from.is_file()
        and json.loads(exported_from.read_text()) == source
    ):
        print("reusing the exported repository")
        return
    run_module(
        "fmdetect.export",
        "repo",
        "--checkpoint",
        str(cfg.checkpoint),
        "--target",
        "cpu",
        "--out",
        str(cfg.repository),
        "--report",
        str(cfg.parity_report),
    )
    exported_from.write_text(json.dumps(source) + "\n")


def sample_images(cfg: DemoConfig, per_class: int = 3) -> list[tuple[str, int, Path]]:
    """A few test images of every generator family: (family, label, path)."""
    rng = random.Random(cfg.seed)
    picked = []
    for family in sorted(p for p in (cfg.data / "testing").iterdir() if p.is_dir()):
        for label, folder in ((0, "0_real"), (1, "1_fake")):
            files = sorted(p for p in (family / folder).iterdir() if p.suffix in (".png", ".jpg"))
            picked += [(family.name, label, f) for f in rng.sample(files, min(per_class, len(files)))]
    return picked


def serve_and_classify(cfg: DemoConfig) -> None:
    from fmdetect.client import ClientConfig, DetectorClient
    from fmdetect.serving.tritonserver import ServerConfig, TritonServer

    step("Serve: tritonserver (python backend) on 127.0.0.1, free ports")
    with TritonServer(ServerConfig(model_repository=cfg.repository)) as server:
        print(f"ready: gRPC {server.grpc_url}")
        with DetectorClient(ClientConfig(url=server.grpc_url)) as client:
            client.wait_until_ready(timeout_s=60)
            step("Classify through gRPC (unseen families were never in training)")
            samples = sample_images(cfg)
            results = client.classify_many([path.read_bytes() for _, _, path in samples])
            print(f"{'family':<16} {'truth':<6} {'prob_fake':>9}  decision  file")
            correct = 0
            for (family, label, path), result in zip(samples, results):
                if isinstance(result, Exception):
                    print(f"{family:<16} {'fake' if label else 'real':<6} {'error':>9}  {result}")
                    continue
                correct += int(result.is_fake == bool(label))
                print(
                    f"{family:<16} {'fake' if label else 'real':<6} {result.prob_fake:9.4f}  "
                    f"{'FAKE' if result.is_fake else 'real':<8}  {path.name}"
                )
            print(f"{correct}/{len(samples)} correct at the calibrated threshold")

            step("A first throughput / latency figure (benchmarks/perf.py measures properly)")
            payloads = [path.read_bytes() for _, _, path in samples] * 8
            measure(client, payloads, concurrency=1)
            measure(client, payloads, concurrency=4)
    print("server stopped")


def measure(client, payloads: list[bytes], concurrency: int) -> None:
    def one(payload: bytes) -> float:
        start = time.perf_counter()
        client.classify(payload)
        return time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, payloads[: concurrency * 2]))  # warm-up
        start = time.perf_counter()
        latencies = sorted(pool.map(one, payloads))
        elapsed = time.perf_counter() - start
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
    print(
        f"concurrency {concurrency}: {len(payloads) / elapsed:6.1f} images/s, latency p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms ({len(payloads)} requests)"
    )


def summary(cfg: DemoConfig) -> None:
    meta = json.loads((cfg.checkpoint / "metadata.json").read_text())
    threshold = meta["threshold"]
    print(
        f"\ncheckpoint {cfg.checkpoint}: threshold {threshold['value']:.4f} ({threshold['method']}"
        f", target FPR {threshold.get('target_fpr')})"
    )
    if meta.get("metrics"):
        print("validation metrics:", json.dumps(meta["metrics"], sort_keys=True))
    parity = cfg.parity_report
    if parity.is_file():
        report = json.loads(parity.read_text())
        print(
            f"ONNX vs PyTorch: max |logit diff| {report['max_abs_logit_diff']:.2e} at batch sizes "
            f"{report['batch_sizes']}"
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="cache folder for every step")
    parser.add_argument("--only-build", action="store_true", help="stop after writing the model repository")
    parser.add_argument(
        "--retrain", action="store_true", help="train the default detector's recipe instead of using the committed one"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (with --retrain)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = DemoConfig(
        artifacts=args.artifacts, only_build=args.only_build, retrain=args.retrain, epochs=args.epochs, seed=args.seed
    )
    start = time.monotonic()
    build_data(cfg)
    train(cfg)
    export(cfg)
    summary(cfg)
    if not cfg.only_build:
        serve_and_classify(cfg)
    print(f"\ndone in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
