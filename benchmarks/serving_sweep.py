"""The CPU target's serving settings, chosen by measurement: one ``perf.py`` run per variant of the repository.

Each variant is a copy of the CPU repository with its ``config.pbtxt`` files edited (dynamic batchers' queue
delays, preprocess instances and decode threads, ONNX Runtime threads), served on a local tritonserver and measured
with the same payload profile and concurrency levels, in rounds of alternating order (medians over rounds, since
one run on a shared 2-core machine moves by 20 %). The table puts the variants side by side: best throughput,
p50 / p99 at concurrency 1, and where preprocess and the detector spend their time.

Example::

    python benchmarks/serving_sweep.py --out artifacts/perf/sweep      # writes sweep.json and sweep.md
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """A name and the settings it sets: ``queue_us`` (preprocess, detector), ``preprocess_instances``,
    ``decode_threads``, ``ort_threads`` (0: all cores); None keeps the repository's value."""

    name: str
    queue_us: tuple[int, int] | None = None
    preprocess_instances: int | None = None
    decode_threads: int | None = None
    ort_threads: int | None = None


PREVIOUS = {"queue_us": (1000, 2000), "preprocess_instances": 1, "decode_threads": 2, "ort_threads": 0}
VARIANTS = (
    Variant("previous defaults", **PREVIOUS),
    Variant("no queue delay", **{**PREVIOUS, "queue_us": (0, 0)}),
    Variant("2 preprocess instances", **{**PREVIOUS, "preprocess_instances": 2}),
    Variant("1 ONNX Runtime thread", **{**PREVIOUS, "ort_threads": 1}),
    Variant("1 decode thread", **{**PREVIOUS, "decode_threads": 1}),
    Variant("4 decode threads", **{**PREVIOUS, "decode_threads": 4}),
    Variant(
        "no queue delay + 2 preprocess instances + 1 ONNX Runtime thread",
        **{**PREVIOUS, "queue_us": (0, 0), "preprocess_instances": 2, "ort_threads": 1},
    ),
    Variant("shipped"),  # whatever the repository's configs say now
)


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, replacement, text)
    if count != 1:
        raise ValueError(f"{path}: expected one match of {pattern!r}, found {count}")
    path.write_text(new)


def apply(variant: Variant, repository: Path) -> None:
    """Edit the copied repository's configs in place."""
    pre, det = repository / "preprocess" / "config.pbtxt", repository / "detector" / "config.pbtxt"
    if variant.queue_us is not None:
        _edit(pre, r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {variant.queue_us[0]}")
        _edit(det, r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {variant.queue_us[1]}")
    if variant.preprocess_instances is not None:
        _edit(pre, r"instance_group \[ \{ count: \d+", f"instance_group [ {{ count: {variant.preprocess_instances}")
    if variant.decode_threads is not None:
        _edit(
            pre,
            r'key: "decode_threads" value: \{ string_value: "\d+" \}',
            f'key: "decode_threads" value: {{ string_value: "{variant.decode_threads}" }}',
        )
    if variant.ort_threads is not None:
        _edit(
            det,
            r'key: "intra_op_threads" value: \{ string_value: "\d+" \}',
            f'key: "intra_op_threads" value: {{ string_value: "{variant.ort_threads}" }}',
        )


def measure(variant: Variant, repository: Path, perf_args: list[str], out: Path, round_: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repository"
        shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
        apply(variant, copy)
        report = out / f"{re.sub(r'[^a-z0-9]+', '_', variant.name.lower()).strip('_')}_round{round_}.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "perf.py"),
                "--repository",
                str(copy),
                *perf_args,
                "--json",
                str(report),
                "--csv",
                "",
                "--plot",
                "",
            ],
            check=True,
        )
    runs = json.loads(report.read_text())["runs"]
    best = max(runs, key=lambda r: r["throughput_ips"])
    c1 = next(r for r in runs if r["concurrency"] == 1)
    stages = {m: c1["server"].get(m, {}) for m in ("preprocess", "detector")}
    per = {m: {k: s.get(k, 0.0) / 1e3 for k in ("queue_us", "compute_infer_us")} for m, s in stages.items()}
    return {
        "variant": variant.name,
        "best_ips": best["throughput_ips"],
        "best_concurrency": best["concurrency"],
        "c1_ips": c1["throughput_ips"],
        "c1_p50_ms": c1["latency_ms"]["p50"],
        "c1_p99_ms": c1["latency_ms"]["p99"],
        "c1_stage_ms": per,
        "report": report.name,
    }


def median_row(rounds: list[dict]) -> dict:
    """Medians over rounds of every figure of one variant."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    first = rounds[0]
    return {
        "variant": first["variant"],
        "rounds": len(rounds),
        "best_ips": med([r["best_ips"] for r in rounds]),
        "best_concurrency": statistics.mode([r["best_concurrency"] for r in rounds]),
        **{k: med([r[k] for r in rounds]) for k in ("c1_ips", "c1_p50_ms", "c1_p99_ms")},
        "c1_stage_ms": {
            m: {k: med([r["c1_stage_ms"][m][k] for r in rounds]) for k in first["c1_stage_ms"][m]}
            for m in first["c1_stage_ms"]
        },
        "best_ips_per_round": [r["best_ips"] for r in rounds],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | best images/s (concurrency); per round | c1 images/s | c1 p50 / p99 ms "
        "| c1 preprocess queue / compute ms | c1 detector queue / compute ms |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        pre, det = r["c1_stage_ms"]["preprocess"], r["c1_stage_ms"]["detector"]
        rounds = ", ".join(f"{v:.0f}" for v in r.get("best_ips_per_round", []))
        lines.append(
            f"| {r['variant']} | {r['best_ips']:.1f} ({r['best_concurrency']}); {rounds} "
            f"| {r['c1_ips']:.1f} | "
            f"{r['c1_p50_ms']:.1f} / {r['c1_p99_ms']:.1f} | {pre['queue_us']:.1f} / "
            f"{pre['compute_infer_us']:.1f} | {det['queue_us']:.1f} / {det['compute_infer_us']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("artifacts") / "repository" / "cpu",
        help="the CPU repository to vary (perf.py builds it when missing)",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts") / "perf" / "sweep")
    p.add_argument("--variants", default="all", help="comma-separated variant names, or 'all'")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all variants, in alternating order; the table shows medians over rounds",
    )
    p.add_argument(
        "--perf-args",
        default="--concurrency 1,2,4 --num-images 16 --duration 8",
        help="arguments every perf.py run gets",
    )
    args = p.parse_args(argv)
    chosen = (
        VARIANTS
        if args.variants == "all"
        else tuple(v for v in VARIANTS if v.name in {n.strip() for n in args.variants.split(",")})
    )
    if not chosen:
        p.error(f"no such variant; choose from {[v.name for v in VARIANTS]}")
    if not (args.repository / "detector" / "1" / "model.onnx").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fmdetect.export",
                "repo",
                "--checkpoint",
                str(ROOT / "detectors" / "default"),
                "--target",
                "cpu",
                "--out",
                str(args.repository),
            ],
            check=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    measured: dict[str, list[dict]] = {v.name: [] for v in chosen}
    for round_ in range(args.rounds):
        order = chosen if round_ % 2 == 0 else chosen[::-1]  # drift on a shared machine hits every variant alike
        for i, variant in enumerate(order, 1):
            print(f"[round {round_ + 1}/{args.rounds}, {i}/{len(chosen)}] {variant.name}", flush=True)
            measured[variant.name].append(measure(variant, args.repository, args.perf_args.split(), args.out, round_))
    rows = [median_row(measured[v.name]) for v in chosen]
    (args.out / "sweep.json").write_text(
        json.dumps({"perf_args": args.perf_args, "rounds": args.rounds, "rows": rows, "per_round": measured}, indent=2)
    )
    (args.out / "sweep.md").write_text(table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
