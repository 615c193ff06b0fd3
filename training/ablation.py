"""The paper's ablation on the offline benchmark: which masking generalises to generator families never seen?

Trains one detector per (masking, seed) with ``python -m training.train`` on the benchmark's single training
family, evaluates each on every testing family with ``python -m training.evaluate``, and reports mean +- std over
seeds of AP and calibrated accuracy on the UNSEEN families, plus the test-time masking sweep. Every run is cached
in ``OUT/runs/<config>/seed<k>``: rerunning the command only does what is missing.

A finished run's evaluation is also kept in the results store (``--results``, committed: ``docs/ablation/runs``),
keyed by the benchmark it was measured on (its build configuration and photos) and the flags that trained it. The
ablation takes days of a 2-core machine, so it is completed across machines: a run already in the store for the
same benchmark and flags is not trained again. Each record also names the build's content fingerprint (each
machine's build is one draw: the generators it trains come out different), and the report lists the draws.

Example::

    python -m training.ablation --data artifacts/data/benchmark --out artifacts/ablation --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskingConfig:
    """One row of the ablation: a name and the training flags that define it."""

    name: str
    flags: tuple[str, ...]
    group: str  # "masking" (kinds and bands at 15 %) or "ratio" (frequency masking, all bands)


CONFIGS = (
    MaskingConfig("none", ("--mask", "none"), "masking"),
    MaskingConfig("pixel 15%", ("--mask", "pixel", "--mask-ratio", "0.15"), "masking"),
    MaskingConfig("patch 15%", ("--mask", "patch", "--mask-ratio", "0.15"), "masking"),
    MaskingConfig(
        "frequency all 15%", ("--mask", "frequency", "--mask-band", "all", "--mask-ratio", "0.15"), "masking"
    ),  # noqa: E501
    MaskingConfig(
        "frequency low 15%", ("--mask", "frequency", "--mask-band", "low", "--mask-ratio", "0.15"), "masking"
    ),  # noqa: E501
    MaskingConfig(
        "frequency mid 15%", ("--mask", "frequency", "--mask-band", "mid", "--mask-ratio", "0.15"), "masking"
    ),  # noqa: E501
    MaskingConfig(
        "frequency high 15%", ("--mask", "frequency", "--mask-band", "high", "--mask-ratio", "0.15"), "masking"
    ),  # noqa: E501
    MaskingConfig("frequency all 5%", ("--mask", "frequency", "--mask-band", "all", "--mask-ratio", "0.05"), "ratio"),
    MaskingConfig("frequency all 30%", ("--mask", "frequency", "--mask-band", "all", "--mask-ratio", "0.30"), "ratio"),
    MaskingConfig("frequency all 50%", ("--mask", "frequency", "--mask-band", "all", "--mask-ratio", "0.50"), "ratio"),
)
REFERENCE = "frequency all 15%"  # the paper's setting; also the one swept for test-time masking


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("%", "pct")


RESULTS_STORE = Path("docs/ablation/runs")


@dataclass(frozen=True)
class AblationConfig:
    data: Path
    out: Path
    seeds: tuple[int, ...]
    configs: tuple[MaskingConfig, ...]
    train_flags: tuple[str, ...]
    seen_families: tuple[str, ...]
    test_time_masks: tuple[int, ...]
    results: Path | None = RESULTS_STORE
    benchmark: str = ""  # benchmark_identity(data): the key of stored runs
    build: str = ""  # benchmark_fingerprint(data): which draw of it this machine has
    stored_only: bool = False  # report the runs the store holds; train nothing


def _run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def seen_families(data: Path) -> tuple[str, ...]:
    """Families present in the training split (the others in testing/ are unseen)."""
    return tuple(sorted(p.name for p in (data / "training").iterdir() if p.is_dir()))


def _manifest(data: Path) -> dict:
    from fmdetect.training.benchmark.build import DATASET_FILE

    return json.loads((Path(data) / DATASET_FILE).read_text())


def benchmark_identity(data: Path) -> str:
    """SHA-256 of what a benchmark is built FROM: its build configuration and the photos (each by hash). Two
    builds of the same command share it. Their images need not be bit-identical: the generators are trained by
    the build, and float arithmetic differs between CPUs, so each machine's build is one draw of the same
    benchmark (``benchmark_fingerprint`` tells the draws apart)."""
    manifest = _manifest(data)
    identity = {
        "layout": manifest.get("layout"),
        "config": manifest["config"],
        "photos": sorted(p["sha256"] for p in manifest["photos"]),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def benchmark_fingerprint(data: Path) -> str:
    """SHA-256 over every file of a built benchmark (its ``dataset.json`` records, path and bytes): two builds
    share a fingerprint only when every image is the same."""
    digest = hashlib.sha256()
    for path in sorted(record["path"] for record in _manifest(data)["files"]):
        digest.update(path.encode() + b"\0" + hashlib.sha256((Path(data) / path).read_bytes()).digest())
    return digest.hexdigest()


def stored_run_path(results: Path, masking: MaskingConfig, seed: int) -> Path:
    return Path(results) / slug(masking.name) / f"seed{seed}.json"


def run_key(cfg: AblationConfig, masking: MaskingConfig, seed: int) -> dict:
    """What a stored run must match to stand for this one: the benchmark's identity and every training flag."""
    return {
        "benchmark": cfg.benchmark,
        "config": masking.name,
        "seed": seed,
        "train_flags": [*masking.flags, *cfg.train_flags],
        "test_time_masks": list(cfg.test_time_masks) if masking.name == REFERENCE else [0],
    }


def stored_record(cfg: AblationConfig, masking: MaskingConfig, seed: int) -> dict | None:
    """The stored record of this run (key, build, provenance, metrics), or None when the store has none for the
    same key."""
    if cfg.results is None:
        return None
    path = stored_run_path(cfg.results, masking, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("key") != run_key(cfg, masking, seed):
        logger.warning("%s was measured on another benchmark or with other flags: run again", path)
        return None
    return record


def stored_metrics(cfg: AblationConfig, masking: MaskingConfig, seed: int) -> dict | None:
    record = stored_record(cfg, masking, seed)
    return None if record is None else record["metrics"]


def store_metrics(cfg: AblationConfig, masking: MaskingConfig, seed: int, metrics: dict, provenance: str) -> Path:
    """Keep a finished run's evaluation in the results store, under its key."""
    path = stored_run_path(cfg.results, masking, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": run_key(cfg, masking, seed), "build": cfg.build, "provenance": provenance, "metrics": metrics}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def train_and_evaluate(cfg: AblationConfig, masking: MaskingConfig, seed: int) -> dict:
    """One cached run: train, then evaluate on testing/ (with the test-time masking sweep for the reference)."""
    stored = stored_metrics(cfg, masking, seed)
    if stored is not None:
        return stored
    run = cfg.out / "runs" / slug(masking.name) / f"seed{seed}"
    metrics_path = run / "eval" / "metrics.json"
    if not metrics_path.is_file():
        if not (run / "checkpoint" / "metadata.json").is_file():
            _run(
                [
                    "fmdetect.training.train",
                    "--data",
                    str(cfg.data),
                    "--out",
                    str(run),
                    "--seed",
                    str(seed),
                    *masking.flags,
                    *cfg.train_flags,
                ]
            )
        masks = ",".join(map(str, cfg.test_time_masks)) if masking.name == REFERENCE else "0"
        _run(
            [
                "fmdetect.training.evaluate",
                "--checkpoint",
                str(run / "checkpoint"),
                "--data",
                str(cfg.data),
                "--out",
                str(run / "eval"),
                "--masks",
                masks,
            ]
        )
    metrics = json.loads(metrics_path.read_text())
    if cfg.results is not None:
        store_metrics(cfg, masking, seed, metrics, f"python -m training.ablation (run folder {run})")
    return metrics


def unseen_means(metrics: dict, seen: tuple[str, ...]) -> dict[str, float]:
    """Mean AP and calibrated accuracy over the unseen families, and the same for the seen ones."""
    gens = metrics["generators"]
    unseen = [g for g in gens if g not in seen]
    out = {}
    for label, names in (("unseen", unseen), ("seen", [g for g in gens if g in seen])):
        if names:
            out[f"{label}_ap"] = statistics.fmean(gens[g]["ap"] for g in names)
            out[f"{label}_acc"] = statistics.fmean(gens[g]["acc_calibrated"] for g in names)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_std_cell(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed (no spread measured)."""
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def summarise(cfg: AblationConfig, results: dict[str, list[dict]]) -> dict:
    """Per config: mean +- std over seeds of unseen/seen AP and accuracy, and per unseen family AP."""
    rows = {}
    for name, per_seed in results.items():
        summary = {"seeds": len(per_seed)}
        parts = [unseen_means(m, cfg.seen_families) for m in per_seed]
        for key in parts[0]:
            summary[key] = _mean_std([p[key] for p in parts])
        families = per_seed[0]["generators"]
        summary["per_family_ap"] = {g: _mean_std([m["generators"][g]["ap"] for m in per_seed]) for g in families}
        rows[name] = summary
    return rows


def markdown_table(rows: dict, configs: tuple[MaskingConfig, ...]) -> str:
    lines = [
        "| training masking | unseen AP | unseen acc (calibrated) | seen AP | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in configs:
        if c.name not in rows:
            continue
        r = rows[c.name]
        cell = lambda key: mean_std_cell(*r[key], r["seeds"]) if key in r else "-"  # noqa: E731
        lines.append(f"| {c.name} | {cell('unseen_ap')} | {cell('unseen_acc')} | {cell('seen_ap')} | {r['seeds']} |")
    return "\n".join(lines)


def per_family_table(rows: dict, configs: tuple[MaskingConfig, ...], seen: tuple[str, ...]) -> str:
    """AP per testing family (mean +- std over seeds), one row per config; seen families are marked."""
    names = [c.name for c in configs if c.name in rows]
    if not names:
        return ""
    families = list(rows[names[0]]["per_family_ap"])
    header = [f"{f} (seen)" if f in seen else f for f in families]
    lines = ["| training masking | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(families)]
    for name in names:
        seeds = rows[name]["seeds"]
        cells = [mean_std_cell(m, s, seeds) for m, s in (rows[name]["per_family_ap"][f] for f in families)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_time_table(sweep: dict[str, dict[str, tuple[float, float]]]) -> str:
    if not sweep:
        return ""
    lines = [
        "| test-time masks K | AP (all testing families) | calibrated acc | ms / image |",
        "| ---: | --- | --- | ---: |",
    ]
    for k, row in sweep.items():
        lines.append(
            f"| {k} | {row['ap'][0]:.3f} ± {row['ap'][1]:.3f} | {row['acc_calibrated'][0]:.3f} ± "
            f"{row['acc_calibrated'][1]:.3f} | {row['ms_per_image'][0]:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: dict, configs: tuple[MaskingConfig, ...], path: Path) -> None:
    """Bars of unseen AP and accuracy (mean +- std over seeds) and AP per testing family, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in configs if c.name in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), dpi=120)
    for ax, key, title in (
        (axes[0], "unseen_ap", "AP on unseen families"),
        (axes[1], "unseen_acc", "calibrated accuracy on unseen families"),
    ):
        means = [rows[n][key][0] for n in names]
        stds = [rows[n][key][1] for n in names]
        ax.bar(
            range(len(names)),
            means,
            yerr=stds,
            capsize=3,
            color=["#888" if n == "none" else "#4a7" if n.startswith("frequency") else "#47a" for n in names],
        )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(max(0.0, min(means) - 0.1), 1.0)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    ax = axes[2]
    for family in rows[names[0]]["per_family_ap"]:
        means = [rows[n]["per_family_ap"][family][0] for n in names]
        stds = [rows[n]["per_family_ap"][family][1] for n in names]
        ax.errorbar(range(len(names)), means, yerr=stds, marker="o", capsize=2, label=family)
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.3, 1.0)
    ax.set_title("AP per testing family", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Training-time masking, mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def test_time_masking(results: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Test-time masking sweep of the reference config: per K, mean +- std over seeds of AP, calibrated accuracy
    and cost (``training.evaluate --masks`` writes one row per K)."""
    per_seed = [m["test_time_masking"] for m in results.get(REFERENCE, []) if m.get("test_time_masking")]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for rows in zip(*per_seed):
        k = str(rows[0]["masks"])
        out[k] = {key: _mean_std([r[key] for r in rows]) for key in ("ap", "acc_calibrated", "ms_per_image")}
    return out


def run(cfg: AblationConfig) -> dict:
    start = time.monotonic()
    results: dict[str, list[dict]] = {}
    total = len(cfg.configs) * len(cfg.seeds)
    done = 0
    for masking in cfg.configs:
        for seed in cfg.seeds:
            done += 1
            print(
                f"[{done}/{total}] {masking.name}, seed {seed} ({time.monotonic() - start:.0f} s elapsed)", flush=True
            )
            if cfg.stored_only:
                metrics = stored_metrics(cfg, masking, seed)
                if metrics is None:
                    print("    not in the store: left out (--stored-only)", flush=True)
                    continue
            else:
                metrics = train_and_evaluate(cfg, masking, seed)
            results.setdefault(masking.name, []).append((seed, metrics))
    rows = summarise(cfg, {name: [m for _, m in runs] for name, runs in results.items()})
    builds = sorted(
        {(stored_record(cfg, m, seed) or {}).get("build") or cfg.build for m in cfg.configs for seed in cfg.seeds}
    )
    report = {
        "seen_families": list(cfg.seen_families),
        "seeds": list(cfg.seeds),
        "seeds_per_config": {name: [seed for seed, _ in runs] for name, runs in results.items()},
        "train_flags": list(cfg.train_flags),
        "benchmark": cfg.benchmark,
        "builds": builds,
        "configs": rows,
        "test_time_masking": test_time_masking({name: [m for _, m in runs] for name, runs in results.items()}),
    }
    (cfg.out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n\n".join(
        part
        for part in (
            markdown_table(rows, cfg.configs),
            per_family_table(rows, cfg.configs, cfg.seen_families),
            test_time_table(report["test_time_masking"]),
        )
        if part
    )
    (cfg.out / "ablation.md").write_text(table + "\n")
    plot(rows, cfg.configs, cfg.out / "ablation.png")
    print("\n" + table)
    print(
        f"\nwrote {cfg.out / 'ablation.json'}, {cfg.out / 'ablation.md'}, {cfg.out / 'ablation.png'} "
        f"in {time.monotonic() - start:.0f} s"
    )
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="benchmark built by training.benchmark")
    p.add_argument("--out", type=Path, required=True, help="folder for runs and the report")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument(
        "--configs",
        default="all",
        help="comma-separated config names (see CONFIGS) or 'all'; e.g. 'none,frequency all 15%%'",
    )
    p.add_argument("--test-time-masks", default="0,1,2,4", help="K values swept for the reference config")
    p.add_argument(
        "--train-flags",
        default="--backbone efficientnet_lite0 --pretrained --image-size 128 --epochs 10",
        help="flags passed to every training run",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_STORE,
        help="store of finished runs' evaluations, reused across machines when the benchmark's content "
        "and the flags match (default: %(default)s, committed)",
    )
    p.add_argument("--no-results", action="store_true", help="neither read nor write the results store")
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="report from the results store alone: train nothing, leave out the runs it lacks",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.configs == "all":
        configs = CONFIGS
    else:
        wanted = [n.strip() for n in args.configs.split(",")]
        by_name = {c.name: c for c in CONFIGS}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            print(f"error: unknown configs {unknown}; choose from {list(by_name)}", file=sys.stderr)
            return 2
        configs = tuple(by_name[n] for n in wanted)
    cfg = AblationConfig(
        data=args.data,
        out=args.out,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        configs=configs,
        train_flags=tuple(args.train_flags.split()),
        seen_families=seen_families(args.data),
        test_time_masks=tuple(int(k) for k in args.test_time_masks.split(",")),
        results=None if args.no_results else args.results,
        benchmark=benchmark_identity(args.data),
        build=benchmark_fingerprint(args.data),
        stored_only=args.stored_only,
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
