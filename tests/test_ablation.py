"""The ablation driver end to end on the small offline benchmark: real training and evaluation runs (a few steps
each), aggregation over seeds, the report files, and the per-run cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fmdetect.training import ablation
from fmdetect.training.benchmark.families import TRAIN_FAMILY

TINY_TRAINING = "--backbone efficientnet_lite0 --pretrained --image-size 64 --epochs 1 --max-steps 2 --workers 0"


@pytest.fixture(scope="module")
def ablation_out(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ablation")
    assert ablation.main(_args(small_dataset, out)) == 0
    return out


def _args(data: Path, out: Path, store: Path | None = None) -> list[str]:
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--seeds",
        "0,1",
        "--configs",
        f"none,{ablation.REFERENCE}",
        "--test-time-masks",
        "0,1",
        "--train-flags",
        TINY_TRAINING,
        "--results",
        str(store or out / "store"),
    ]


def test_report_aggregates_every_seed_of_every_config(ablation_out: Path, small_dataset: Path) -> None:
    report = json.loads((ablation_out / "ablation.json").read_text())
    assert report["seen_families"] == [TRAIN_FAMILY] and report["seeds"] == [0, 1]
    testing = sorted(p.name for p in (small_dataset / "testing").iterdir())
    per_seed = {
        name: [
            json.loads((ablation_out / "runs" / ablation.slug(name) / f"seed{s}" / "eval" / "metrics.json").read_text())
            for s in (0, 1)
        ]
        for name in ("none", ablation.REFERENCE)
    }
    for name, runs in per_seed.items():
        row = report["configs"][name]
        assert row["seeds"] == 2
        assert sorted(row["per_family_ap"]) == testing
        # The unseen mean is the mean over seeds of the mean over unseen families, recomputed here from the runs.
        unseen = [f for f in testing if f != TRAIN_FAMILY]
        per_run = [sum(m["generators"][f]["ap"] for f in unseen) / len(unseen) for m in runs]
        expected = sum(per_run) / 2
        assert row["unseen_ap"][0] == pytest.approx(expected)
        assert row["seen_ap"][0] == pytest.approx(sum(m["generators"][TRAIN_FAMILY]["ap"] for m in runs) / 2)
        # The spread is the sample standard deviation over seeds: for two values, |a - b| / sqrt(2).
        assert row["unseen_ap"][1] == pytest.approx(abs(per_run[0] - per_run[1]) / 2**0.5)
    # The test-time sweep comes from the reference config only, one row per K.
    assert list(report["test_time_masking"]) == ["0", "1"]
    assert [r["masks"] for r in per_seed[ablation.REFERENCE][1]["test_time_masking"]] == [0, 1]
    ap_at_1 = sum(m["test_time_masking"][1]["ap"] for m in per_seed[ablation.REFERENCE]) / 2
    assert report["test_time_masking"]["1"]["ap"][0] == pytest.approx(ap_at_1)


def test_report_files(ablation_out: Path) -> None:
    table = (ablation_out / "ablation.md").read_text()
    assert "| none |" in table and f"| {ablation.REFERENCE} |" in table
    assert f"{TRAIN_FAMILY} (seen)" in table and "test-time masks K" in table
    with Image.open(ablation_out / "ablation.png") as img:
        assert img.format == "PNG" and img.width > 2 * img.height


def test_rerun_reuses_every_run(ablation_out: Path, small_dataset: Path) -> None:
    metrics = sorted((ablation_out / "runs").glob("*/seed*/eval/metrics.json"))
    assert len(metrics) == 4
    stamps = [p.stat().st_mtime_ns for p in metrics]
    assert ablation.main(_args(small_dataset, ablation_out)) == 0
    assert [p.stat().st_mtime_ns for p in metrics] == stamps


def test_results_store_completes_the_ablation_on_another_machine(
    ablation_out: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """A fresh output folder with only the committed store: nothing is trained, and the report is the same."""
    store = ablation_out / "store"
    records = sorted(store.glob("*/seed*.json"))
    assert [p.relative_to(store).as_posix() for p in records] == sorted(
        f"{ablation.slug(n)}/seed{s}.json" for n in ("none", ablation.REFERENCE) for s in (0, 1)
    )
    record = json.loads(records[0].read_text())
    key = record["key"]
    assert key["benchmark"] == ablation.benchmark_identity(small_dataset) and "--mask" in key["train_flags"]
    assert record["build"] == ablation.benchmark_fingerprint(small_dataset)
    fresh = tmp_path / "elsewhere"
    assert ablation.main(_args(small_dataset, fresh, store)) == 0
    assert not (fresh / "runs").exists()
    report = json.loads((fresh / "ablation.json").read_text())
    assert report == json.loads((ablation_out / "ablation.json").read_text())
    assert report["builds"] == [ablation.benchmark_fingerprint(small_dataset)]


def test_stored_only_reports_what_the_store_holds_and_trains_nothing(
    ablation_out: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """``--stored-only`` with a seed the store lacks: that run is left out, the others are reported as stored."""
    store = tmp_path / "store"
    store.mkdir()
    for record in (ablation_out / "store").glob("*/seed*.json"):
        if record.name == "seed0.json" or record.parent.name == "none":  # the reference's seed 1 is missing
            (store / record.parent.name).mkdir(exist_ok=True)
            (store / record.parent.name / record.name).write_text(record.read_text())
    out = tmp_path / "report"
    assert ablation.main([*_args(small_dataset, out, store), "--stored-only"]) == 0
    assert not (out / "runs").exists()
    report = json.loads((out / "ablation.json").read_text())
    assert report["seeds_per_config"] == {"none": [0, 1], ablation.REFERENCE: [0]}
    assert report["configs"]["none"] == json.loads((ablation_out / "ablation.json").read_text())["configs"]["none"]
    assert report["configs"][ablation.REFERENCE]["seeds"] == 1


def test_results_store_refuses_another_benchmark_or_other_flags(ablation_out: Path, small_dataset: Path) -> None:
    store = ablation_out / "store"
    masking = next(c for c in ablation.CONFIGS if c.name == "none")
    cfg = ablation.AblationConfig(
        data=small_dataset,
        out=ablation_out,
        seeds=(0,),
        configs=(masking,),
        train_flags=tuple(TINY_TRAINING.split()),
        seen_families=(TRAIN_FAMILY,),
        test_time_masks=(0, 1),
        results=store,
        benchmark=ablation.benchmark_identity(small_dataset),
    )
    assert ablation.stored_metrics(cfg, masking, 0) is not None
    other_data = ablation.AblationConfig(**{**cfg.__dict__, "benchmark": "0" * 64})
    assert ablation.stored_metrics(other_data, masking, 0) is None
    other_flags = ablation.AblationConfig(**{**cfg.__dict__, "train_flags": (*cfg.train_flags, "--lr", "1e-3")})
    assert ablation.stored_metrics(other_flags, masking, 0) is None


def test_identity_follows_the_recipe_and_fingerprint_the_images(small_dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    assert ablation.benchmark_fingerprint(copy) == ablation.benchmark_fingerprint(small_dataset)
    image = next(p for p in sorted((copy / "testing").rglob("*")) if p.is_file())
    image.write_bytes(image.read_bytes() + b"\0")
    # Other images, same recipe: another draw of the same benchmark.
    assert ablation.benchmark_fingerprint(copy) != ablation.benchmark_fingerprint(small_dataset)
    assert ablation.benchmark_identity(copy) == ablation.benchmark_identity(small_dataset)
    manifest = json.loads((copy / "dataset.json").read_text())
    manifest["config"]["seed"] = manifest["config"].get("seed", 0) + 1
    (copy / "dataset.json").write_text(json.dumps(manifest))
    assert ablation.benchmark_identity(copy) != ablation.benchmark_identity(small_dataset)


def test_unknown_config_is_refused(small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ablation.main(["--data", str(small_dataset), "--out", str(tmp_path), "--configs", "frequency 99%"]) == 2
    assert "unknown configs" in capsys.readouterr().err


def test_report_tables_show_a_spread_only_where_seeds_measured_one() -> None:
    """Two seeds: mean ± sample std; one seed: the mean alone (a ``± 0.000`` would claim a spread never measured)."""
    runs = {
        "none": [
            {"generators": {TRAIN_FAMILY: {"ap": 1.0, "acc_calibrated": 1.0}, "x": {"ap": a, "acc_calibrated": a}}}
            for a in (0.7, 0.8)
        ],
        ablation.REFERENCE: [
            {"generators": {TRAIN_FAMILY: {"ap": 1.0, "acc_calibrated": 1.0}, "x": {"ap": 0.75, "acc_calibrated": 0.6}}}
        ],
    }
    cfg = ablation.AblationConfig(
        data=Path("."),
        out=Path("."),
        seeds=(0, 1),
        configs=ablation.CONFIGS,
        train_flags=(),
        seen_families=(TRAIN_FAMILY,),
        test_time_masks=(0,),
    )
    rows = ablation.summarise(cfg, runs)
    table = ablation.markdown_table(rows, ablation.CONFIGS).splitlines()
    none = next(line for line in table if line.startswith("| none |"))
    reference = next(line for line in table if line.startswith(f"| {ablation.REFERENCE} |"))
    assert none.split(" | ")[1] == f"0.750 ± {0.1 / 2**0.5:.3f}" and none.endswith("| 2 |")
    assert reference.split(" | ")[1] == "0.750" and "±" not in reference and reference.endswith("| 1 |")
    families = ablation.per_family_table(rows, ablation.CONFIGS, (TRAIN_FAMILY,))
    assert f"| {ablation.REFERENCE} | " in families and "0.750 ± " not in families.split(ablation.REFERENCE)[1]
