"""Benchmark results: the run records, the on-screen table, JSON, CSV and the throughput-latency plot.

JSON schema::

    {"config": {...resolved options...},
     "runs": [{"backend": "pytorch|onnxruntime|triton", "protocol": "inprocess|grpc|http",
               "concurrency": int|null, "request_rate": float|null, "batch_size": int,
               "throughput_ips": images/s, "throughput_rps": requests/s,
               "latency_ms": {"avg", "p50", "p90", "p95", "p99"}, "samples": answered requests behind the
               percentiles, "errors": int, "windows": int, "stable": bool,
               "server": {"<model>": {"requests", "executions", "avg_batch", "request_us", "queue_us",
                                      "compute_input_us", "compute_infer_us", "compute_output_us"}}}],
     "fft_stage": [{"impl", "batch_size", "masks", "ms_per_batch"}],
     "perf_analyzer": [{"concurrency", "throughput_ips", "p50_ms", "p99_ms", ...}],
     "ratios": {...}}
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CSV_FIELDS = [
    "backend",
    "protocol",
    "concurrency",
    "request_rate",
    "batch_size",
    "throughput_ips",
    "throughput_rps",
    "avg",
    "p50",
    "p90",
    "p95",
    "p99",
    "samples",
    "errors",
    "windows",
    "stable",
]


@dataclass
class RunRecord:
    backend: str
    protocol: str
    concurrency: int | None
    request_rate: float | None
    batch_size: int
    throughput_ips: float
    throughput_rps: float
    latency_ms: dict[str, float]
    samples: int
    errors: int
    windows: int
    stable: bool
    server: dict[str, dict[str, float]] = field(default_factory=dict)
    error_messages: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.protocol}"


def format_table(runs: list[RunRecord]) -> str:
    head = (
        f"{'backend':<12} {'protocol':<9} {'conc':>4} {'rate':>6} {'batch':>5} {'img/s':>8} {'avg ms':>8} "
        f"{'p50':>7} {'p90':>7} {'p95':>7} {'p99':>7} {'n':>6} {'err':>4} {'stable':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        lat = r.latency_ms
        rate = f"{r.request_rate:g}" if r.request_rate else "-"
        conc = str(r.concurrency) if r.concurrency else "-"
        lines.append(
            f"{r.backend:<12} {r.protocol:<9} {conc:>4} {rate:>6} {r.batch_size:>5} {r.throughput_ips:8.1f} "
            f"{lat['avg']:8.2f} {lat['p50']:7.2f} {lat['p90']:7.2f} {lat['p95']:7.2f} {lat['p99']:7.2f} "
            f"{r.samples:>6} {r.errors:>4} {'yes' if r.stable else 'no':>6}"
        )
    return "\n".join(lines)


def format_server_breakdown(runs: list[RunRecord]) -> str:
    """Per Triton run and member model: average batch and per-request queue / compute times (µs)."""
    lines = []
    for r in runs:
        if not r.server:
            continue
        level = f"concurrency {r.concurrency}" if r.concurrency else f"rate {r.request_rate:g}/s"
        lines.append(f"{r.label} {level}:")
        for model, s in sorted(r.server.items()):
            lines.append(
                f"  {model:<18} batch {s['avg_batch']:5.1f}  queue {s['queue_us']:9.0f} us  input "
                f"{s['compute_input_us']:7.0f} us  infer {s['compute_infer_us']:9.0f} us  output "
                f"{s['compute_output_us']:7.0f} us"
            )
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, config: dict, runs: list[RunRecord], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "runs": [asdict(r) for r in runs], **extra}
    path.write_text(json.dumps(_clean(payload), indent=2, default=str) + "\n")


def write_csv(path: Path, runs: list[RunRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in runs:
            row = {k: getattr(r, k) for k in CSV_FIELDS if hasattr(r, k)}
            row.update(r.latency_ms)
            writer.writerow(row)


def write_plot(path: Path, runs: list[RunRecord], title: str) -> None:
    """Throughput (x) against p99 latency (y), one line per backend/protocol; points labelled by concurrency
    (cN), request rate (R/s) or, in-process, batch size (bN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:  # in-process: one line across batch sizes; served: one line across load levels
        key = r.label if r.protocol == "inprocess" else f"{r.label} batch {r.batch_size}"
        groups.setdefault(key, []).append(r)
    for label, group in groups.items():
        xs = [r.throughput_ips for r in group]
        ys = [r.latency_ms["p99"] for r in group]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(group, xs, ys):
            if r.protocol == "inprocess":
                tag = f"b{r.batch_size}"
            else:
                tag = f"c{r.concurrency}" if r.concurrency else f"{r.request_rate:g}/s"
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
