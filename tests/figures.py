"""Figures the tests measure, recorded in committed result files, and the documents' tables rendered from them.

A test calls ``record(table, row, **figures)`` with what it measured. Under ``FMDETECT_RECORD_FIGURES=1`` the run is
added to ``docs/figures/<table>.json`` (the last ``RUNS_KEPT`` runs of each row, each with its date, commit and
core count); otherwise nothing is written. The documents hold each table between ``<!-- figures:<table> -->`` and
``<!-- /figures:<table> -->``. ``python -m tests.figures`` rewrites those blocks from the committed records, and
``tests/test_docs_figures.py`` fails when a block is not the rendering of its record, so a document cannot show a
figure that no committed file holds.

To refresh: ``FMDETECT_RECORD_FIGURES=1 python -m pytest tests/test_hardening_faults.py ...`` (each run adds one),
then ``python -m tests.figures``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "figures"
RUNS_KEPT = 5
ENV = "FMDETECT_RECORD_FIGURES"


@dataclass(frozen=True)
class Row:
    """One row of a table: its id in the records, its label, and cell templates that replace the table's."""

    key: str
    label: str
    cells: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """A table in ``document``: ``columns`` are (header, template); a template's ``{field:format}`` becomes the
    range of that field over the recorded runs ("0.21-0.39"), or one value when they agree. With ``per_run`` every
    run of the single row ``"run"`` is a line of its own instead."""

    document: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[Row, ...] = ()
    per_run: bool = False


TABLES: dict[str, Table] = {
    "faults": Table(
        document="triton_repo/README.md",
        columns=(
            ("fault", ""),
            ("runs", "{runs}"),
            ("cold start", "{startup_s:.2f} s"),
            ("noticed after", "{detected_s:.2f} s"),
            ("recovered in", "{recovered_s:.2f} s"),
            ("requests", "{requests}"),
            ("failed requests", "{errors}"),
        ),
        rows=(
            Row("stub-restart", "detector stub SIGKILLed, default model control (restart)"),
            Row("stub-reload-explicit", "detector stub SIGKILLed, explicit model control (reload)"),
            Row("server-process", "`tritonserver` SIGKILLed (restart)"),
            Row(
                "restart",
                "`restart()` mid-load",
                {
                    "noticed after": "-",
                    "recovered in": "{restart_s:.2f} s",
                    "failed requests": "{errors}; longest {longest_s:.2f} s",
                },
            ),
            Row("sigstop-restart", "detector stub SIGSTOPped (hung), default model control (restart)"),
            Row("sigstop-reload-explicit", "detector stub SIGSTOPped (hung), explicit model control (reload)"),
            Row("blocked-execute-restart", "detector `execute` never returns, default model control (restart)"),
        ),
    ),
    "overload": Table(
        document="triton_repo/README.md",
        columns=(
            ("date", "{date}"),
            ("saturation", "{saturation_rps:.0f} req/s"),
            ("offered", "{offered_rps:.0f} req/s, {sent} requests"),
            ("answered OK", "{ok} ({served_rps:.0f} req/s)"),
            ("rejected (queue full / timed out)", "{rejected_queue_full} / {rejected_timeout}"),
            ("OK p50 / p99", "{ok_p50_s:.2f} s / {ok_p99_s:.2f} s"),
            ("rejection p50", "{rejected_p50_ms:.0f} ms"),
            ("drain", "{drain_s:.2f} s"),
            ("RSS tritonserver + stubs", "{rss_start_mb:.0f} -> {rss_end_mb:.0f} MB"),
            ("ensemble failures counted (`OTHER`)", "{ensemble_other_failures:.0f}"),
        ),
        per_run=True,
    ),
    "parity": Table(
        document="README.md",
        columns=(("check", ""), ("runs", "{runs}"), ("figure", ""), ("test", "")),
        rows=(
            Row(
                "onnx-default",
                "ONNX (FFT as MatMul) vs PyTorch fp32, the default detector (K = 0), batch 1 / 3 / 8",
                {"figure": "max \\|logit diff\\| {max_abs_logit_diff:.1e}", "test": "`tests/test_demo.py`"},
            ),
            Row(
                "onnx-resnet50",
                "ONNX vs PyTorch fp32, ResNet-50 at 224 px (untrained weights), 2 test-time masks, batch 1 / 3 / 8",
                {
                    "figure": "max \\|logit diff\\|: MatMul {matmul:.1e}, `DFT` op {dft:.1e}",
                    "test": "`tests/test_export.py`",
                },
            ),
            Row(
                "triton-mixed",
                "Triton (gRPC, dynamic batching) vs in-process PyTorch, 8 mixed images (JPEG, PNG, "
                "grayscale, RGBA, CMYK JPEG, 16x16, 4000x3000, 16-bit PNG), efficientnet_lite0 with 2 "
                "test-time masks",
                {"figure": "max \\|prob_fake diff\\| {max_prob_diff:.1e}", "test": "`tests/test_triton_e2e.py`"},
            ),
        ),
    ),
    "cluster": Table(
        document="deploy/README.md",
        columns=(("what", ""), ("runs", "{runs}"), ("measured", "")),
        rows=(
            Row(
                "spread",
                "spread: 40 calls through the balancer, 2 replicas",
                {"measured": "{r0} / {r1} per replica (each replica's own statistics), {errors} errors"},
            ),
            Row(
                "failover",
                "failover: r1 SIGKILLed a quarter into 400 calls at concurrency 4, DetectorClient defaults (3 retries)",
                {
                    "measured": "{failed_calls} failed calls; {failed_attempts} failed attempts retried, the last "
                    "{last_failure_s:.3f} s after the kill; r1 out of nginx's pool {left_s:.2f} s after the "
                    "kill (active check)"
                },
            ),
            Row(
                "rejoin",
                "rejoin: restart r1",
                {"measured": "ready {ready_s:.2f} s after the restart; first call served {served_s:.2f} s after ready"},
            ),
            Row(
                "one-vs-two",
                "1 vs 2 replicas, closed loop at concurrency 2 (short: 1 s windows)",
                {
                    "measured": "{one_rps:.0f} against {two_rps:.0f} req/s; server CPU per call {one_cpu_ms:.1f} "
                    "against {two_cpu_ms:.1f} ms; machine busy {one_busy:.0%} / {two_busy:.0%}"
                },
            ),
        ),
    ),
    "edges": Table(
        document="triton_repo/README.md",
        columns=(("what", ""), ("runs", "{runs}"), ("measured", ""), ("test", "")),
        rows=(
            Row(
                "jpeg-flood",
                "8 callers flood header-lying JPEGs for 4 s; a 9th sends 1 MP photos",
                {
                    "measured": "{rejected} flood requests rejected; the 9th caller's median "
                    "{flooded_median_ms:.0f} ms (max {flooded_max_ms:.0f} ms) against {quiet_median_ms:.0f} ms "
                    "without the flood",
                    "test": "`tests/test_hardening_inputs.py`",
                },
            ),
            Row(
                "oversized-direct",
                "3 payloads of 40 MiB sent straight to tritonserver",
                {
                    "measured": "/dev/shm {shm_before_mib:.0f} -> {shm_after_mib:.0f} MiB, kept after the rejection",
                    "test": "`tests/test_hardening_protocol.py`",
                },
            ),
            Row(
                "oversized-proxied",
                "45 + 5 payloads of 34 MiB through `make cluster`'s nginx (2 replicas)",
                {
                    "measured": "all refused (413); RSS {rss_before_mib:.0f} -> {rss_after_mib:.0f} MiB, /dev/shm "
                    "{shm_before_mib:.0f} -> {shm_after_mib:.0f} MiB",
                    "test": "`tests/test_cluster.py`",
                },
            ),
        ),
    ),
}


def render_fp16() -> str:
    """The FP16 table of ``triton_repo/GPU.md`` from the committed ``docs/fp16/default_k{0,2}.json`` reports."""
    lines = [
        "| FFT stage | runtime | max \\|Δprob\\| | mean \\|Δprob\\| | max \\|Δlogit\\| | decisions agreeing |",
        "|---|---|---|---|---|---|",
    ]
    for masks in (0, 2):
        report = json.loads((ROOT / "docs" / "fp16" / f"default_k{masks}.json").read_text())
        for r in report["results"]:
            if masks == 0 and r["fft_impl"] != "matmul":
                continue  # no FFT stage: both forms are the same graph
            if "skipped" in r:
                lines.append(f"| K = {masks}, {r['fft_impl']} | {r['runtime']} | not run: {r['skipped']} | | | |")
                continue
            stage = "none (K = 0, the shipped setting)" if masks == 0 else f"K = 2, {r['fft_impl']}"
            lines.append(
                f"| {stage} | {r['runtime']} | {r['max_abs_prob_diff']:.4f} | {r['mean_abs_prob_diff']:.5f} | "
                f"{r['max_abs_logit_diff']:.3f} | {r['images'] - r['decisions_changed']} / {r['images']} |"
            )
    return "\n".join(lines)


def render_one_vs_two() -> str:
    """The 1-vs-N table of ``deploy/README.md`` from ``docs/deploy/one_vs_two.json`` (``benchmarks.spread --json``)."""
    import statistics

    report = json.loads((ROOT / "docs" / "deploy" / "one_vs_two.json").read_text())
    lines = [
        "| replicas | concurrency | req/s per round | median | server CPU ms per request (median) | "
        "machine busy (median) | calls per replica, last round |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in report["scaling"]:
        groups.setdefault((row["concurrency"], row["replicas"]), []).append(row)
    for (concurrency, replicas), rows in sorted(groups.items()):
        rates = [r["throughput_rps"] for r in rows]
        calls = rows[-1]["per_replica"]
        total = sum(c["requests"] for c in calls.values()) or 1
        share = " / ".join(f"{100 * c['requests'] / total:.0f} %" for c in calls.values())
        lines.append(
            f"| {replicas} | {concurrency} | {', '.join(f'{x:.0f}' for x in rates)} | "
            f"{statistics.median(rates):.0f} | "
            f"{statistics.median(r['server_cpu_ms_per_request'] for r in rows):.1f} | "
            f"{statistics.median(r['cpu_busy'] for r in rows):.0%} | {share} |"
        )
    return "\n".join(lines)


def render_ablation_runs() -> str:
    """The README's table of every run in the ablation's results store (``docs/ablation/runs/*/seed*.json``)."""
    store = ROOT / "docs" / "ablation" / "runs"
    records = [json.loads(path.read_text()) for path in sorted(store.glob("*/seed*.json"))]
    records.sort(key=lambda r: (-r["metrics"]["benchmark"]["unseen"]["ap"], r["key"]["seed"]))
    families = sorted(records[0]["metrics"]["generators"])
    header = [
        "training masking",
        "seed",
        "benchmark draw",
        "unseen AP",
        "unseen TPR at 5 % FPR",
        "unseen reals called fake (%)",
        "`exif` reals called fake (%)",
        *families,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        bench = r["metrics"]["benchmark"]
        draw = r["build"][:8] if re.fullmatch(r"[0-9a-f]{64}", r.get("build", "")) else "not recorded"
        cells = [
            r["key"]["config"],
            str(r["key"]["seed"]),
            draw,
            f"{bench['unseen']['ap']:.3f}",
            f"{bench['unseen']['tpr_at_fpr_5']:.3f}",
            f"{100 * (1 - bench['unseen']['real_acc_calibrated']):.1f}",
            f"{100 * bench['real_sources']['exif']['fpr']:.1f}",
            *(f"{r['metrics']['generators'][f]['ap']:.3f}" for f in families),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_ablation_probes() -> str:
    """The README's table of the spectral probes (``python -m training.probes``) of ablation checkpoints
    (``docs/ablation/probes/<setting>_seed<k>/probes.json``, named as the results store names its runs; frequency all
    15 % seed 0 is the previous default detector's): AP against the unchanged testing reals, threshold-free."""
    from fmdetect.training.benchmark.families import TRAIN_FAMILY

    runs = []
    for path in sorted((ROOT / "docs" / "ablation" / "probes").glob("*_seed*/probes.json")):
        setting, seed = path.parent.name.rsplit("_seed", 1)
        record = json.loads((ROOT / "docs" / "ablation" / "runs" / setting / f"seed{seed}.json").read_text())
        runs.append((record["key"]["config"], seed, json.loads(path.read_text())))
    header = [
        "training masking",
        "seed",
        "unseen fakes AP",
        "unseen transplants AP",
        "lowpass 0.25 AP",
        "lowpass 0.35 AP",
        "resample nearest / bilinear / bicubic AP",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config, seed, report in sorted(runs, key=lambda run: (run[0], run[1])):
        rows = {(r["probe"], r["family"]): r["ap_vs_reals"] for r in report["rows"]}
        unseen = sorted({f for _, f in rows if f and f != TRAIN_FAMILY})

        def mean_ap(probe: str, families: list[str] = unseen, rows: dict = rows) -> str:
            return f"{sum(rows[(probe, f)] for f in families) / len(families):.3f}"

        resample = " / ".join(f"{rows[(f'resample {u}', None)]:.3f}" for u in ("nearest", "bilinear", "bicubic"))
        lines.append(
            f"| {config} | {seed} | {mean_ap('fakes')} | {mean_ap('transplant')} | "
            f"{rows[('lowpass 0.25', None)]:.3f} | {rows[('lowpass 0.35', None)]:.3f} | {resample} |"
        )
    return "\n".join(lines)


def render_coverage() -> str:
    """The README's coverage table from ``docs/coverage/coverage.json`` (``python -m training.coverage``)."""
    report = json.loads((ROOT / "docs" / "coverage" / "coverage.json").read_text())
    rows = report["rows"]
    counts = sorted({r["crops"] for r in rows})
    per = "/".join(str(c) for c in counts)
    lines = [
        f"| split | arrangement | AP, {per} windows | TPR at 5 % FPR, {per} | reals called fake (%), {per} |",
        "|---|---|---|---|---|",
    ]
    for split in ("validation", "testing"):
        for arrangement in dict.fromkeys(r["arrangement"] for r in rows):
            sel = sorted(
                (r for r in rows if r["split"] == split and r["arrangement"] == arrangement), key=lambda r: r["crops"]
            )
            cells = [
                " / ".join(f"{r['ap']:.3f}" for r in sel),
                " / ".join(f"{r['tpr_at_fpr_5']:.3f}" for r in sel),
                " / ".join(f"{100 * r['real_fpr_at_threshold']:.1f}" for r in sel),
            ]
            lines.append(f"| {split} | {arrangement} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| windows | Triton gRPC images/s, concurrency 1 (per round) | concurrency 4 (per round) | "
        "detector ms per request, concurrency 1 | preprocess ms per request, concurrency 1 |",
        "|---|---|---|---|---|",
    ]
    for crops in counts:
        runs = [
            json.loads(path.read_text())["runs"]
            for path in sorted((ROOT / "docs" / "coverage").glob(f"perf_c{crops}_r*.json"))
        ]
        if not runs:
            continue

        def level(concurrency: int, key: str, runs: list = runs) -> list:
            found = [next(r for r in rs if r["backend"] == "triton" and r["concurrency"] == concurrency) for rs in runs]
            return [key_of(r, key) for r in found]

        def key_of(run: dict, key: str) -> float:
            return run["throughput_ips"] if key == "ips" else run["server"][key]["compute_infer_us"] / 1000

        lines.append(
            f"| {crops} | {', '.join(f'{x:.1f}' for x in level(1, 'ips'))} | "
            f"{', '.join(f'{x:.1f}' for x in level(4, 'ips'))} | "
            f"{', '.join(f'{x:.1f}' for x in level(1, 'detector'))} | "
            f"{', '.join(f'{x:.1f}' for x in level(1, 'preprocess'))} |"
        )
    return "\n".join(lines)


# Blocks rendered from committed result files other than the tests' records: name -> (document, renderer).
DERIVED = {
    "fp16": ("triton_repo/GPU.md", render_fp16),
    "one_vs_two": ("deploy/README.md", render_one_vs_two),
    "ablation_runs": ("README.md", render_ablation_runs),
    "ablation_probes": ("README.md", render_ablation_probes),
    "coverage": ("README.md", render_coverage),
}


def record(table: str, row: str, **figures: object) -> None:
    """Add one run of ``row`` to ``docs/figures/<table>.json`` when recording is on (``FMDETECT_RECORD_FIGURES``)."""
    if os.environ.get(ENV, "") in ("", "0"):
        return
    if table not in TABLES:
        raise KeyError(f"no table named {table!r} in tests/figures.py")
    path = RECORDS / f"{table}.json"
    data = json.loads(path.read_text()) if path.exists() else {"table": table, "rows": {}}
    run = {"date": dt.date.today().isoformat(), "commit": _commit(), "cores": os.cpu_count(), **figures}
    runs = data["rows"].setdefault(row, [])
    runs.append(run)
    del runs[:-RUNS_KEPT]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load(table: str) -> dict[str, list[dict]]:
    """The committed runs of ``table``, per row."""
    return json.loads((RECORDS / f"{table}.json").read_text())["rows"]


def _cell(template: str, runs: list[dict]) -> str:
    """``template`` filled with each field's range over ``runs``; ``{runs}`` is the number of runs."""
    out = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name == "runs":
            out.append(str(len(runs)))
            continue
        values = sorted(run[name] for run in runs)  # by value, not by text: "99%" < "100%"
        texts = list(dict.fromkeys(format(v, spec) for v in values))
        dash = " to " if any("e-" in t for t in texts) else "-"  # 1.1e-06-4.2e-07 would read as a minus
        out.append(texts[0] if len(texts) == 1 else f"{texts[0]}{dash}{texts[-1]}")
    return "".join(out)


def render(name: str, rows: dict[str, list[dict]] | None = None) -> str:
    """The markdown table ``name`` from its records (the committed ones unless ``rows`` is given)."""
    spec = TABLES[name]
    rows = load(name) if rows is None else rows
    headers = [header for header, _ in spec.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    if spec.per_run:
        for run in rows["run"]:
            lines.append("| " + " | ".join(_cell(t, [run]) for _, t in spec.columns) + " |")
    else:
        for row in spec.rows:
            runs = rows[row.key]
            cells = [row.label] + [_cell(row.cells.get(h, t), runs) for h, t in spec.columns[1:]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_pattern(name: str) -> re.Pattern[str]:
    """Open marker, table (absent in a new block), close marker."""
    return re.compile(rf"(<!-- figures:{name} -->\n)(?:(.*?)\n)?(<!-- /figures:{name} -->)", re.S)


def write_documents() -> list[str]:
    """Rewrite every table block from the committed records; returns the documents changed."""
    changed = []
    blocks = {name: (spec.document, lambda name=name: render(name)) for name, spec in TABLES.items()}
    for name, (document, renderer) in {**blocks, **DERIVED}.items():
        path = ROOT / document
        text = path.read_text()
        new, count = block_pattern(name).subn(lambda m: m.group(1) + renderer() + "\n" + m.group(3), text)
        if count != 1:
            raise SystemExit(f"{document} must hold one block <!-- figures:{name} --> ... (found {count})")
        if new != text:
            path.write_text(new)
            changed.append(document)
    return changed


if __name__ == "__main__":
    for document in write_documents():
        print(f"rewrote {document}", file=sys.stderr)
