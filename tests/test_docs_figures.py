"""The documents' measured tables are the renderings of the committed result files (``docs/figures/*.json``).

A table edited by hand, a record changed without the document, or a record that lost a row fails here. The
records themselves are written by the tests that measure them (``tests/figures.py``)."""

from __future__ import annotations

import json

import pytest

from tests import figures


@pytest.mark.parametrize("name", sorted(figures.TABLES))
def test_document_table_is_the_rendering_of_its_record(name: str) -> None:
    spec = figures.TABLES[name]
    text = (figures.ROOT / spec.document).read_text()
    blocks = figures.block_pattern(name).findall(text)
    assert len(blocks) == 1, f"{spec.document} must hold exactly one <!-- figures:{name} --> block"
    assert blocks[0][1] == figures.render(name), (
        f"{spec.document}'s {name} table is not its record's rendering: run `python -m tests.figures`"
    )


@pytest.mark.parametrize("name", sorted(figures.DERIVED))
def test_derived_block_is_the_rendering_of_its_result_files(name: str) -> None:
    document, renderer = figures.DERIVED[name]
    blocks = figures.block_pattern(name).findall((figures.ROOT / document).read_text())
    assert len(blocks) == 1 and blocks[0][1] == renderer(), f"{document}'s {name} block: run `python -m tests.figures`"


@pytest.mark.parametrize("name", sorted(figures.TABLES))
def test_every_record_run_names_its_machine_and_commit(name: str) -> None:
    rows = figures.load(name)
    expected = {"run"} if figures.TABLES[name].per_run else {row.key for row in figures.TABLES[name].rows}
    assert set(rows) == expected
    for runs in rows.values():
        assert 1 <= len(runs) <= figures.RUNS_KEPT
        assert all(run["cores"] and run["commit"] and run["date"] for run in runs)


def test_record_writes_only_when_asked(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(figures, "RECORDS", tmp_path)
    monkeypatch.delenv(figures.ENV, raising=False)
    figures.record("edges", "jpeg-flood", rejected=1)
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(figures.ENV, "1")
    for value in range(figures.RUNS_KEPT + 2):
        figures.record("edges", "jpeg-flood", rejected=value)
    runs = json.loads((tmp_path / "edges.json").read_text())["rows"]["jpeg-flood"]
    assert [run["rejected"] for run in runs] == list(range(2, figures.RUNS_KEPT + 2))  # the last runs kept
    with pytest.raises(KeyError):
        figures.record("no-such-table", "row", value=1)


def test_cells_show_the_range_over_runs() -> None:
    runs = [{"a": 0.21, "b": 3}, {"a": 0.394, "b": 3}, {"a": 0.3, "b": 3}]
    assert figures._cell("{a:.2f} s, {b} of {runs}", runs) == "0.21-0.39 s, 3 of 3"
    assert figures._cell("{a:.0f}", runs[:1]) == "0"
    assert figures._cell("{c:.0%}", [{"c": 1.0}, {"c": 0.99}]) == "99%-100%"  # ordered by value, not by text
    assert figures._cell("{d:.1e}", [{"d": 4.2e-7}, {"d": 1.1e-6}]) == "4.2e-07 to 1.1e-06"


# ------------------------------------------------------------------ README figures typed from committed result files
def _readme_section(start: str, end: str) -> str:
    readme = (figures.ROOT / "README.md").read_text()
    return readme[readme.index(start) : readme.index(end)]


def _perf_runs(name: str) -> list[dict]:
    return json.loads((figures.ROOT / "docs" / "perf" / name).read_text())["runs"]


def _run(runs: list[dict], backend: str, protocol: str, concurrency: int, batch: int) -> dict:
    return next(
        r
        for r in runs
        if (r["backend"], r["protocol"], r["concurrency"], r["batch_size"]) == (backend, protocol, concurrency, batch)
    )


def test_readme_decode_table_is_the_committed_decode_reports() -> None:
    """Each band row of "Decode cost" against ``docs/decode/photos_profile.json`` then ``registry_photos.json``."""
    import re

    section = _readme_section("### Decode cost", "The registry rows' bands")
    rows = re.findall(r"^\|[^|]*\| ([^|]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", section, re.M)
    bands = []
    for name in ("photos_profile.json", "registry_photos.json"):
        bands += json.loads((figures.ROOT / "docs" / "decode" / name).read_text())["bands"]
    assert len(rows) == len(bands) == 8
    for (label, full, crop, speedup), band in zip(rows, bands):
        low, high = band["megapixels"]
        assert label.strip() in (f"{low:g} to {high:g}", f">= {low:g}"), (label, band["megapixels"])
        assert [float(full), float(crop), float(speedup)] == pytest.approx(
            [band["full_ms"], band["crop_first_ms"], band["speedup"]], abs=0.051
        ), label


def test_readme_throughput_targets_are_computed_from_the_shipped_run() -> None:
    """The targets table and the lines after it: ratios recomputed from ``docs/perf/photos_crop_first.json``."""
    section = _readme_section("| target (shipped run) |", "### Serving settings")
    runs = _perf_runs("photos_crop_first.json")
    ort_best = max(r["throughput_ips"] for r in runs if r["backend"] == "onnxruntime")
    eager_best = max(r["throughput_ips"] for r in runs if r["backend"] == "pytorch")
    triton_best = max(r["throughput_ips"] for r in runs if r["backend"] == "triton" and r["protocol"] == "grpc")
    triton_c1 = _run(runs, "triton", "grpc", 1, 1)["latency_ms"]
    ort_single = _run(runs, "onnxruntime", "inprocess", 1, 1)["latency_ms"]
    t99, o50, o99 = triton_c1["p99"], ort_single["p50"], ort_single["p99"]
    expected = [
        f"| {ort_best / eager_best:.2f}x |",
        f"| {100 * triton_best / ort_best:.0f} % ({triton_best:.1f} against {ort_best:.1f} images/s) |",
        f"| {t99 / o50:.1f}x ({t99:.1f} ms against {o50:.1f} ms) |",
        f"{o99 / o50:.1f}x its p50 ({o99:.1f} against {o50:.1f} ms)",
        f"Triton's is {t99 / o99:.1f}x",
    ]
    for text in expected:
        assert text in section, text


def test_readme_server_stage_times_are_the_shipped_runs_statistics() -> None:
    section = _readme_section("In-process rows include decoding", "| target (shipped run) |")
    server = _run(_perf_runs("photos_crop_first.json"), "triton", "grpc", 1, 1)["server"]
    pre, det = server["preprocess"], server["detector"]
    queue_ms = pre["queue_us"] / 1e3
    expected = (
        f"`preprocess` computes for {pre['compute_infer_us'] / 1e3:.1f} ms and the detector for\n"
        f"{det['compute_infer_us'] / 1e3:.1f} ms; each queue holds a request for {queue_ms:.1f} ms"
    )
    assert expected in section, expected
    assert f"{det['queue_us'] / 1e3:.1f}" == f"{pre['queue_us'] / 1e3:.1f}", "the two queues differ: say both"


def test_readme_previous_settings_figures_are_in_their_printed_output() -> None:
    import re

    section = _readme_section("A third run, crop-first with the previous settings", "| backend | protocol |")
    figures_text = re.search(r": ([\d.]+) / ([\d.]+) / ([\d.]+) images/s", section).groups()
    printed = (figures.ROOT / "docs" / "perf" / "photos_crop_first_previous_settings.txt").read_text()
    for value in figures_text:
        assert re.search(rf"\b{re.escape(value)}\b", printed), value


def test_readme_fp16_table_is_the_committed_reports() -> None:
    section = _readme_section("### FP16 vs FP32", "## Deviations from the paper")
    reports = {k: json.loads((figures.ROOT / "docs" / "fp16" / f"default_k{k}.json").read_text()) for k in (0, 2)}
    assert all(r["checkpoint"] == "detectors/default" and r["masks"] == k for k, r in reports.items())

    def cells(report: dict, impl: str) -> str:
        r = next(x for x in report["results"] if x["fft_impl"] == impl and x["runtime"] == "onnxruntime-cpu")
        return (
            f"| {r['max_abs_prob_diff']:.4f} | {r['mean_abs_prob_diff']:.5f} | "
            f"{r['images'] - r['decisions_changed']}/{r['images']} |"
        )

    for label, k, impl in (
        ("none (K = 0, the shipped setting)", 0, "matmul"),
        ("K = 2, MatMul", 2, "matmul"),
        ("K = 2, `DFT` op", 2, "dft"),
    ):
        assert f"| {label} {cells(reports[k], impl)}" in section, label


def test_readme_generator_table_is_the_committed_build() -> None:
    """The benchmark's family table: train and sample seconds from ``docs/benchmark/build_info.json``, trivial AUCs
    and the high-band spectral difference from ``docs/benchmark/dataset_summary.json``; the build time too."""
    import re

    section = _readme_section("**Ten generator families, five mechanisms.**", "Seconds on the 2-core machine")
    build = json.loads((figures.ROOT / "docs" / "benchmark" / "build_info.json").read_text())
    summary = json.loads((figures.ROOT / "docs" / "benchmark" / "dataset_summary.json").read_text())
    row = r"^\| (\w+) \| \w+ \| .+ \| (\d+) \| (\d+) \| ([\d.]+) \(([\d.]+)\) \| (-?[\d.]+) \|$"
    rows = re.findall(row, section, re.M)
    assert len(rows) == len(build["generators"]) == 10
    for family, train_s, sample_s, auc, cv_auc, high_db in rows:
        timing = build["generators"][family]
        trivial = summary["trivial_detectors"]["families"][family]
        assert (int(train_s), int(sample_s)) == (round(timing["train_seconds"]), round(timing["generate_seconds"]))
        assert (float(auc), float(cv_auc)) == (round(trivial["auc"], 3), round(trivial["within_family_cv_auc"], 3))
        assert float(high_db) == round(summary["spectra"][family]["fake_minus_real_db_by_band"]["high"], 1), family
    profiles = _readme_section("Profiles: `full`", "`--summary-dir docs/benchmark`")
    assert f"**{build['seconds']:.0f} s**" in profiles
    assert f"the {build['generators']['ddpm']['train_seconds']:.0f} s the DDPM took to train" in profiles


@pytest.mark.parametrize(
    "document",
    [
        "README.md",
        "triton_repo/README.md",
        "triton_repo/GPU.md",
        "deploy/README.md",
        "detectors/README.md",
        "docs/architecture.md",
        "CHANGELOG.md",
    ],
)
def test_every_result_file_a_document_names_is_committed(document: str) -> None:
    """A figure's source named as `docs/...` or `detectors/...` exists in the repository."""
    import re

    text = (figures.ROOT / document).read_text()
    named = set(re.findall(r"`((?:docs|detectors)/[^`\s*<>]+)`", text))
    assert not {n for n in named if not (figures.ROOT / n).exists()}, document
