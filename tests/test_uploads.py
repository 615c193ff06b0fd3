"""Photos as uploaded (training.uploads): real photo files of installed packages, decoded as serving decodes
them, scored against an independent computation; refused files counted with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig, Threshold
from fmdetect.core.preprocess import decode_center_crop, decode_windows
from fmdetect.training.benchmark.photos import _installed_root, photo_sources
from fmdetect.training.checkpoint import load_detector, save_checkpoint
from fmdetect.training.model import Detector
from fmdetect.training.uploads import (
    GRID,
    UPLOADS_JSON,
    UPLOADS_MD,
    downscaled,
    folder_sources,
    main,
    photo_windows,
)

SIZE = (64, 64)

pytestmark = pytest.mark.usefixtures("one_thread")


def installed_photos(source: str) -> list[Path]:
    """The photo table's files of a source that is an installed Python package (real camera photos)."""
    entry = photo_sources()[source]
    root = _installed_root(entry)
    assert root is not None, f"{source} is not installed"
    return [root / rel for rel, _ in entry.files]


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Two sources of real photos (scikit-image, scikit-learn) and one refused file in a third."""
    root = tmp_path / "photos"
    for source in ("scikit-image", "scikit-learn"):
        (root / source).mkdir(parents=True)
        for path in installed_photos(source):
            (root / source / path.name).write_bytes(path.read_bytes())
    (root / "broken").mkdir()
    good = installed_photos("scikit-learn")[0].read_bytes()
    (root / "broken" / "truncated.jpg").write_bytes(good[:200])
    (root / "broken" / "china.jpg").write_bytes(good)
    (root / "broken" / ".hidden").write_bytes(b"not a photo")
    return root


def centre_probs(checkpoint: Path, files: list[Path]) -> np.ndarray:
    """prob_fake of each file's centre window, straight through the model (no uploads code)."""
    model = load_detector(checkpoint)
    batch = np.stack([decode_center_crop(p.read_bytes(), SIZE).transpose(2, 0, 1) for p in files])
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(batch)).reshape(-1)).numpy()


@pytest.mark.parametrize("name", ["astronaut.png", "rocket.jpg"])
def test_windows_are_servings_native_windows_and_the_control_is_resampled(name: str):
    """The same pixels as serving's decode (for a JPEG, serving reads only the MCUs around its windows)."""
    data = next(p for p in installed_photos("scikit-image") if p.name == name).read_bytes()
    centre, native, control = photo_windows(data, SIZE)
    assert np.array_equal(centre, decode_center_crop(data, SIZE))
    assert np.array_equal(native, decode_windows(data, SIZE, GRID))
    assert native.shape == control.shape == (GRID, *SIZE, 3)
    assert not np.array_equal(native, control)
    small = downscaled(np.zeros((40, 300, 3), np.uint8), 0.5, SIZE)
    assert small.shape == (64, 150, 3)  # never below the input size


def test_folder_sources_layout(photo_folder: Path, tmp_path: Path):
    found = {name: files for name, _, files in folder_sources(photo_folder)}
    assert set(found) == {"scikit-image", "scikit-learn", "broken"}
    assert [p.name for p in found["broken"]] == ["china.jpg", "truncated.jpg"]  # hidden file left out
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photo files"):
        folder_sources(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        folder_sources(tmp_path / "missing")


def test_uploads_agree_with_the_model_and_count_refusals(photo_folder: Path, tmp_path: Path):
    torch.manual_seed(0)
    metadata = DetectorMetadata(backbone="efficientnet_lite0", input_size=SIZE, fft_stage=FFTStageConfig(masks=0))
    checkpoint = save_checkpoint(Detector(metadata, pretrained=True), tmp_path / "ckpt")
    files = sorted((photo_folder / "scikit-image").iterdir())
    probs = centre_probs(checkpoint, files)
    ordered = np.sort(probs)
    cut = 2 + int(np.argmax(np.diff(ordered)[2:-2]))  # the widest gap away from the ends: no score on the edge
    threshold = float(ordered[cut] + ordered[cut + 1]) / 2
    (checkpoint / "metadata.json").write_text(
        json.dumps({**json.loads((checkpoint / "metadata.json").read_text()), "threshold": {"value": threshold}})
    )
    assert DetectorMetadata.load(checkpoint).threshold == Threshold(threshold)

    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--photos", str(photo_folder), "--out", str(out)]) == 0
    report = json.loads((out / UPLOADS_JSON).read_text())
    rows = {r["source"]: r for r in report["sources"]}
    assert report["threshold"] == pytest.approx(threshold)
    skimage = rows["scikit-image"]
    assert skimage["photos"] == len(files) and skimage["refused"] == 0
    assert skimage["centre_flagged"] == pytest.approx(float((probs >= threshold).mean()), abs=1e-9)
    for row in rows.values():
        for key in ("centre_flagged", "windows_flagged", "downscaled_flagged"):
            assert 0.0 <= row[key] <= 1.0
    broken = rows["broken"]
    assert (broken["photos"], broken["refused"]) == (2, 1)
    assert broken["refusals"][0].startswith("truncated.jpg: ")
    china = centre_probs(checkpoint, [photo_folder / "broken" / "china.jpg"])[0]  # the one good file there
    assert broken["centre_flagged"] == float(china >= threshold)
    total = next(t for t in report["totals"] if t["split"] == "photos")
    assert total["photos"] == sum(r["photos"] for r in rows.values()) and total["refused"] == 1
    n = {name: r["photos"] - r["refused"] for name, r in rows.items()}
    expected = sum(rows[name]["windows_flagged"] * n[name] for name in rows) / sum(n.values())
    assert total["windows_flagged"] == pytest.approx(expected)
    table = (out / UPLOADS_MD).read_text()
    assert "| scikit-image | photos |" in table and "truncated.jpg" in table


def test_cli_refuses_a_missing_folder(tmp_path: Path, checkpoint: Path):
    code = main(["--checkpoint", str(checkpoint), "--photos", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
