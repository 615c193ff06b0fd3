"""What an evaluation on the benchmark adds to the per-family table: the unseen families' mean, the false-positive
rate on each real source at the shipped threshold, and a summary by generator mechanism.

It reads the build's ``dataset.json`` (the source of every real image, the families' mechanisms, which family is
seen in training), so it applies to a directory this package built; other datasets are evaluated without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmdetect.training.benchmark.build import DATASET_FILE

UNSEEN_KEYS = (
    "ap",
    "auc",
    "acc_calibrated",
    "real_acc_calibrated",
    "fake_acc_calibrated",
    "tpr_at_fpr_1",
    "tpr_at_fpr_5",
)


def load_manifest(data: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data) / DATASET_FILE).read_text())
    except (OSError, ValueError):
        return None


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def benchmark_summary(
    probs: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    data: Path,
    threshold: float,
    table: dict[str, dict[str, Any]],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """``unseen`` (mean over the families training never saw), ``real_sources`` (per source of the evaluated
    reals: n and FPR at ``threshold``), ``mechanisms`` (families and mean AP per mechanism) and
    ``leave_one_mechanism_out`` (the unseen mean AP without each mechanism's families)."""
    data = Path(data).resolve()
    source_of = {r["path"]: r.get("source") for r in manifest.get("files", []) if r["label"] == 0}
    fpr: dict[str, list[int]] = {}
    for prob, label, path in zip(probs, labels, paths, strict=True):
        if label != 0:
            continue
        try:
            rel = str(Path(path).resolve().relative_to(data))
        except ValueError:
            continue
        source = source_of.get(rel)
        if source is not None:
            fpr.setdefault(source, []).append(int(prob >= threshold))
    seen = set(manifest.get("families", {}).get("training", []))
    listed = [f for f in manifest.get("unseen_families", []) if f in table]
    unseen = listed + [f for f in table if f not in seen and f not in listed]
    by_mechanism: dict[str, list[str]] = {}
    for mechanism, families in manifest.get("mechanisms", {}).items():
        present = [f for f in families if f in table]
        if present:
            by_mechanism[mechanism] = present
    return {
        "unseen_families": unseen,
        "unseen": {key: _mean([table[f][key] for f in unseen]) for key in UNSEEN_KEYS},
        "real_sources": {
            source: {"n": len(flags), "fpr": float(np.mean(flags))} for source, flags in sorted(fpr.items())
        },
        "mechanisms": {
            m: {"families": fams, "ap": _mean([table[f]["ap"] for f in fams])} for m, fams in by_mechanism.items()
        },
        "leave_one_mechanism_out": {
            m: _mean([table[f]["ap"] for f in unseen if f not in fams]) for m, fams in by_mechanism.items()
        },
    }


def markdown(summary: dict[str, Any]) -> list[str]:
    """The summary's tables (percent) as markdown lines."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100.0 * value:.2f}"

    u = summary["unseen"]
    lines = [
        "",
        "## Benchmark summary",
        "",
        f"Unseen families ({len(summary['unseen_families'])}): AP {pct(u['ap'])}, acc@thr "
        f"{pct(u['acc_calibrated'])}, TPR@1%FPR {pct(u['tpr_at_fpr_1'])}, TPR@5%FPR {pct(u['tpr_at_fpr_5'])}.",
        "",
        "| real source | n | FPR at the threshold (%) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {s} | {r['n']} | {pct(r['fpr'])} |" for s, r in summary["real_sources"].items()]
    lines += ["", "| mechanism | families | mean AP | unseen mean AP without it |", "| --- | --- | ---: | ---: |"]
    for mechanism, row in summary["mechanisms"].items():
        lines.append(
            f"| {mechanism} | {', '.join(row['families'])} | {pct(row['ap'])} | "
            f"{pct(summary['leave_one_mechanism_out'][mechanism])} |"
        )
    return lines
