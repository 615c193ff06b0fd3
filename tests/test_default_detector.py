"""The committed default detector: it loads, scores images, and the figures its model card and the README show are
those of its committed evaluation (``detectors/default/evaluation/metrics.json``), so a stale table fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fmdetect.core.preprocess import center_crop_or_pad
from fmdetect.training.benchmark.families import FAMILIES, TRAIN_FAMILY
from fmdetect.training.checkpoint import load_detector
from tests.conftest import photo_like

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "detectors" / "default"
METRICS = json.loads((DEFAULT / "evaluation" / "metrics.json").read_text())


def test_loads_and_scores_with_its_own_contract() -> None:
    model = load_detector(DEFAULT)
    meta = model.metadata
    assert meta.input_size[0] >= 128 and (DEFAULT / "model.safetensors").stat().st_size <= 30 * 2**20
    assert meta.threshold.method == "fpr_on_validation_real" and 0.0 < meta.threshold.value < 1.0
    assert METRICS["threshold"] == pytest.approx(meta.threshold.value)
    assert METRICS["test_time_masks"] == meta.fft_stage.masks
    images = np.stack([center_crop_or_pad(photo_like(200, 180, seed), meta.input_size) for seed in range(3)])
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def _table_rows(text: str, first_cell: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell, for the table whose header starts with ``first_cell``."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            inside = True
            continue
        if inside and line.startswith("|"):
            if not set(cells[0]) <= set("-: "):
                rows[cells[0].replace("*", "")] = cells[1:]
        elif inside:
            break
    return rows


@pytest.mark.parametrize("document", ["detectors/README.md", "README.md"])
def test_documented_table_is_the_committed_evaluation(document: str) -> None:
    """Per family: AP, acc at the threshold, TPR at 1 % and 5 % FPR (percent, 1 decimal) as in metrics.json."""
    rows = _table_rows((ROOT / document).read_text(), "testing family")
    assert set(FAMILIES) <= set(rows), sorted(rows)
    for family in FAMILIES:
        m = METRICS["generators"][family]
        cells = rows[family]
        numbers = [float(x) for x in cells[-4:]]
        assert numbers == pytest.approx(
            [round(100 * m[k], 1) for k in ("ap", "acc_calibrated", "tpr_at_fpr_1", "tpr_at_fpr_5")], abs=0.051
        ), family
        assert ("yes" in cells[0]) == (family == TRAIN_FAMILY)


def test_documented_false_positive_rates_per_real_source() -> None:
    rows = _table_rows((ROOT / "detectors" / "README.md").read_text(), "testing real source")
    sources = METRICS["benchmark"]["real_sources"]
    assert set(rows) == set(sources)
    for source, row in rows.items():
        assert int(row[0]) == sources[source]["n"]
        assert float(row[1]) == pytest.approx(round(100 * sources[source]["fpr"], 1), abs=0.051)


def test_model_card_states_what_it_must() -> None:
    card = (ROOT / "detectors" / "README.md").read_text()
    for heading in ("Intended use", "Out of scope", "Training data", "Evaluation", "Calibration", "Limitations"):
        assert re.search(rf"^## {heading}", card, re.MULTILINE), heading


def test_readme_prose_figures_are_the_committed_evaluation() -> None:
    """The README's sentences about the default detector: its threshold, the false positives per testing source,
    the unseen mean AP against the target and after JPEG 75."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The default detector") : readme.index("## The paper's ablation")]
    bench = METRICS["benchmark"]
    assert f"threshold {METRICS['threshold']:.4f} calibrated" in section
    per_source = ", ".join(f"{name} {100 * s['fpr']:.1f} %" for name, s in sorted(bench["real_sources"].items()))
    assert f"(target 5 %): {per_source}." in section
    unseen = bench["unseen"]
    assert f"{100 * (1 - unseen['real_acc_calibrated']):.1f} % of all" in section
    assert f"{unseen['ap']:.3f} against ≥ 0.90 (**missed** by {0.90 - unseen['ap']:.3f})" in section
    families = bench["unseen_families"]
    jpeg75 = next(r for r in METRICS["robustness"]["jpeg"] if r["level"] == 75)
    after = sum(jpeg75["generators"][f]["ap"] for f in families) / len(families)
    assert f"({unseen['ap']:.3f} clean, {after:.3f} after JPEG 75; met)" in section


def test_readme_probe_figures_are_the_committed_probes() -> None:
    """The README's probe table and sentence are those of ``detectors/default/probes/probes.json``, whose fakes rows
    are the committed evaluation's per-family AP (the same centre windows scored by the same checkpoint)."""
    probes = json.loads((DEFAULT / "probes" / "probes.json").read_text())
    rows = {(r["probe"], r["family"]): r for r in probes["rows"]}
    assert probes["threshold"] == pytest.approx(METRICS["threshold"])
    table = _table_rows((ROOT / "README.md").read_text(), "probed family")
    assert {name.split(" (")[0] for name in table} == set(FAMILIES)
    for name, cells in table.items():
        family = name.split(" (")[0]
        fakes, transplant = rows[("fakes", family)], rows[("transplant", family)]
        assert [float(c) for c in cells] == pytest.approx(
            [
                round(100 * fakes["flagged"], 1),
                round(100 * transplant["flagged"], 1),
                round(fakes["ap_vs_reals"], 3),
                round(transplant["ap_vs_reals"], 3),
            ],
            abs=0.00051,
        ), family
        assert fakes["ap_vs_reals"] == pytest.approx(METRICS["generators"][family]["ap"], abs=1e-4), family
    readme = (ROOT / "README.md").read_text()
    reals = rows[("reals", None)]
    low = [rows[(f"lowpass {r}", None)] for r in ("0.25", "0.35")]
    up = [rows[(f"resample {u}", None)] for u in ("nearest", "bilinear", "bicubic")]
    sentence = (
        f"On the {reals['n']} distinct testing reals ({100 * reals['flagged']:.1f} % flagged unchanged): lowpass 0.25 "
        f"flags {100 * low[0]['flagged']:.1f} % (AP {low[0]['ap_vs_reals']:.3f}), lowpass 0.35\n"
        f"{100 * low[1]['flagged']:.1f} % ({low[1]['ap_vs_reals']:.3f}); resample nearest / bilinear / bicubic "
        + " / ".join(f"{100 * r['flagged']:.1f}" for r in up)
        + " % (AP "
        + " / ".join(f"{r['ap_vs_reals']:.3f}" for r in up)
        + ")."
    )
    assert sentence in readme


def test_readme_upload_figures_are_the_committed_uploads() -> None:
    """The README's sentence on photo files as uploaded is ``detectors/default/uploads/uploads.json``'s totals,
    scored at the committed threshold."""
    uploads = json.loads((DEFAULT / "uploads" / "uploads.json").read_text())
    assert uploads["threshold"] == pytest.approx(METRICS["threshold"])
    totals = {t["split"]: t for t in uploads["totals"]}
    val, test = totals["validation"], totals["testing"]

    def both(key: str) -> str:
        return f"{100 * val[key]:.1f} / {100 * test[key]:.1f} %"

    sentence = (
        f"the photo files of the {val['sources']} validation and {test['sources']} testing sources ({val['photos']} "
        f"and {test['photos']}): the served centre window is flagged on {both('centre_flagged')} of the photos, "
        f"the {uploads['grid_windows']} native windows of the 3 x 3 grid {both('windows_flagged')}, and the same "
        f"windows after a {uploads['control_scale']:g} Lanczos downscale of the photo {both('downscaled_flagged')}."
    )
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert sentence in readme


def test_readme_native_crop_figures_are_the_committed_reports() -> None:
    """The README's case for the native-crop build: the previous default's and the current default's validation
    figures as uploaded (the adoption rule), and the trivial detector's AUC on that build, from committed files."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    previous = json.loads((ROOT / "docs" / "benchmark_native" / "previous_default" / "uploads.json").read_text())
    current = json.loads((DEFAULT / "uploads" / "uploads.json").read_text())
    before = {t["split"]: t for t in previous["totals"]}
    after = {t["split"]: t for t in current["totals"]}
    assert (
        f"the previous default flagged {100 * before['validation']['windows_flagged']:.1f} / "
        f"{100 * before['testing']['windows_flagged']:.1f} % of the native windows of a 3 x 3 grid and "
        f"{100 * before['validation']['downscaled_flagged']:.1f} / "
        f"{100 * before['testing']['downscaled_flagged']:.1f} %"
    ) in readme
    assert after["validation"]["windows_flagged"] < before["validation"]["windows_flagged"]  # the adoption rule
    val_ap = json.loads((DEFAULT / "metadata.json").read_text())["metrics"]["val"]["ap"]
    assert (
        f"It gave {100 * after['validation']['windows_flagged']:.1f} % against "
        f"{100 * before['validation']['windows_flagged']:.1f} %, AP {val_ap:.3f}."
    ) in readme
    summary = json.loads((ROOT / "docs" / "benchmark_native" / "dataset_summary.json").read_text())
    trivial = summary["trivial_detectors"]["families"][TRAIN_FAMILY]["auc"]
    assert f"reaches AUC {trivial:.3f} on `{TRAIN_FAMILY}`" in readme
    assert summary["config"]["native_share"] == 0.5


def test_readme_comparison_with_the_previous_default_and_a_second_seed_is_the_committed_evaluations() -> None:
    """The README's comparison on the native-crop testing split: the shipped evaluation, the previous default's and
    the second seed's (``docs/benchmark_native/``), figure for figure."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    native = ROOT / "docs" / "benchmark_native"
    previous = json.loads((native / "previous_default" / "evaluation_metrics.json").read_text())
    seed1 = json.loads((native / "seed1" / "evaluation_metrics.json").read_text())

    def ap(m: dict, family: str) -> str:
        return f"{m['generators'][family]['ap']:.3f}"

    def flagged(m: dict) -> str:
        return f"{100 * (1 - m['benchmark']['unseen']['real_acc_calibrated']):.1f} %"

    def fpr(m: dict, source: str) -> str:
        return f"{100 * m['benchmark']['real_sources'][source]['fpr']:.1f}"

    now, before = METRICS, previous
    fragments = [
        f"unseen mean AP {now['benchmark']['unseen']['ap']:.3f} against {before['benchmark']['unseen']['ap']:.3f}",
        f"DDPM {ap(now, 'ddpm')} against {ap(before, 'ddpm')}, DDIM {ap(now, 'ddim')} against {ap(before, 'ddim')}",
        f"`dcgan_faces` {ap(now, 'dcgan_faces')} against {ap(before, 'dcgan_faces')}",
        f"inpainting {ap(now, 'inpainting')} against {ap(before, 'inpainting')}",
        f"the VAE {ap(now, 'vae')} against {ap(before, 'vae')}",
        f"false positives {flagged(now)} against {flagged(before)} of the testing reals",
        f"(`tuxpaint-data` {fpr(now, 'tuxpaint-data')} against {fpr(before, 'tuxpaint-data')} %, "
        f"`exif` {fpr(now, 'exif')} against {fpr(before, 'exif')} %)",
        f"unseen mean AP {seed1['benchmark']['unseen']['ap']:.3f}, DDPM {ap(seed1, 'ddpm')}, DDIM {ap(seed1, 'ddim')}, "
        f"the VAE {ap(seed1, 'vae')}, `dcgan_faces` {ap(seed1, 'dcgan_faces')}, threshold {seed1['threshold']:.4f}, "
        f"{flagged(seed1)} of the testing reals flagged",
    ]
    for fragment in fragments:
        assert fragment in readme, fragment
    uploads = json.loads((native / "seed1" / "uploads.json").read_text())
    totals = {t["split"]: t for t in uploads["totals"]}
    windows = f"{100 * totals['validation']['windows_flagged']:.1f} / {100 * totals['testing']['windows_flagged']:.1f}"
    assert f"(next paragraph; seed 1: {windows} %)" in readme
