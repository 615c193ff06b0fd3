"""NVIDIA's perf_analyzer as an independent cross-check of ``benchmarks/perf.py``.

The PyPI ``perf-analyzer`` wheel needs a newer glibc than these machines have; the binary inside the
``tritonclient==2.51.0`` wheel (the bundled server's version) runs once ``libb64.so.0d`` and ``libcudart.so.12``
are reachable, and both ship in the nvidia-pytriton wheel. ``install`` lays that out under ``.venv``.

Example::

    python -m benchmarks.perf_analyzer install      # part of the Makefile's set-up
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

from fmdetect.benchmarks.loadgen import WindowPolicy
from fmdetect.core.names import IMAGE_BYTES

logger = logging.getLogger(__name__)

WHEEL = "tritonclient==2.51.0"
HOME = Path(sys.prefix) / "perf_analyzer"
BINARY = HOME / "bin" / "perf_analyzer"


def _pytriton_libs() -> Path:
    return Path(str(importlib_metadata.distribution("nvidia-pytriton").locate_file("nvidia_pytriton.libs")))


def install(home: Path = HOME) -> Path:
    """Fetch the wheel from the package index (once), unpack the binary, link the two libraries it needs."""
    binary = home / "bin" / "perf_analyzer"
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("tritonclient-2.51.0-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
            (home / "bin").mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(binary, "wb") as dst:
                shutil.copyfileobj(src, dst)
    binary.chmod(0o755)
    lib = home / "lib"
    lib.mkdir(exist_ok=True)
    libs = _pytriton_libs()
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        target = next(libs.glob(pattern))
        link = lib / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    logger.info("perf_analyzer installed at %s", binary)
    return binary


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(home / "lib"), str(_pytriton_libs()), env.get("LD_LIBRARY_PATH", "")])
    return env


def input_data(payloads: list[bytes], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: each BYTES element in Triton's serialised form (4-byte LE length)."""
    data = [
        {IMAGE_BYTES: {"b64": base64.b64encode(struct.pack("<I", len(p)) + p).decode(), "shape": [1]}} for p in payloads
    ]
    path.write_text(json.dumps({"data": data}))
    return path


def run(
    url: str,
    protocol: str,
    model: str,
    payloads: list[bytes],
    concurrency: list[int],
    policy: WindowPolicy = WindowPolicy(),
    home: Path = HOME,
) -> list[dict]:
    """Closed-loop concurrency levels with perf_analyzer; one dict per level (throughput, latency in ms, or
    ``error`` when it could not measure that level, e.g. no stable windows).

    perf_analyzer measures under the harness's own ``policy``: the same window length and stability, judged on the
    same figures (throughput and p50 latency; perf_analyzer's default judges the mean latency, which one stalled
    request in a window can swing by more than the stability), so the two tools accept a level on the same terms.
    It may take up to twice the harness's windows (at least 20) to find them: it stops at the first stable ones,
    so the extra windows cost time only on a noisy machine, where perf_analyzer has no number at all without them.
    """
    binary = home / "bin" / "perf_analyzer"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} missing: run 'python -m benchmarks.perf_analyzer install'")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(payloads, Path(tmp) / "input.json")
        for level in concurrency:
            report = Path(tmp) / f"c{level}.csv"
            cmd = [
                str(binary),
                "-m",
                model,
                "-u",
                url,
                "-i",
                protocol,
                "-b",
                "1",
                f"--concurrency-range={level}:{level}",
                f"--input-data={data}",
                f"--shape={IMAGE_BYTES}:1",
                f"--measurement-interval={round(policy.window_s * 1000)}",
                f"--stability-percentage={policy.stability * 100:g}",
                "--percentile=50",
                f"--max-trials={max(20, 2 * policy.max_windows)}",
                "-f",
                str(report),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_environment(home), timeout=600)
            if proc.returncode != 0 or not report.is_file():
                lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
                results.append({"concurrency": level, "error": lines[-1] if lines else f"exit {proc.returncode}"})
                continue
            with report.open() as f:
                row = next(csv.DictReader(f))
            us = lambda key: float(row[key]) / 1e3  # noqa: E731 - µs -> ms
            results.append(
                {
                    "concurrency": level,
                    "throughput_ips": float(row["Inferences/Second"]),
                    "p50_ms": us("p50 latency"),
                    "p90_ms": us("p90 latency"),
                    "p95_ms": us("p95 latency"),
                    "p99_ms": us("p99 latency"),
                    "server_queue_ms": us("Server Queue"),
                    "server_compute_infer_ms": us("Server Compute Infer"),
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args != ["install"]:
        print("usage: python -m benchmarks.perf_analyzer install", file=sys.stderr)
        return 2
    print(install())
    return 0


if __name__ == "__main__":
    sys.exit(main())
