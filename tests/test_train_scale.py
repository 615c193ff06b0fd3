"""Trainer at scale: the paper's plateau schedule, exact resumption, a 2-process DDP run (gloo on CPU), the
mask-cost profile. Runs are tiny (32 px, a few steps per epoch) on the small offline dataset of test_training
(same directory, so a session builds it once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmdetect.core.metadata import DetectorMetadata
from fmdetect.training.checkpoint import load_detector
from fmdetect.training.masking_profile import profile_masking
from fmdetect.training.run_state import BEST_FILE, CHECKPOINT_DIR, LAST_FILE, METRICS_FILE, check_resumable, load_state
from fmdetect.training.schedule import PlateauSchedule
from fmdetect.training.train import TrainConfig, main, train

REPO = Path(__file__).resolve().parents[1]


def tiny(data: Path, out: Path, **changes) -> TrainConfig:
    options = dict(
        data=data,
        out=out,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=32,
        epochs=2,
        epoch_steps=2,
        batch_size=8,
        workers=0,
        seed=3,
        mask="frequency",
        mask_band="low+mid",
        mask_ratio=0.3,
    )
    return TrainConfig.from_dict({**options, **changes})


# --------------------------------------------------------------------------------------------------- schedule


def test_plateau_schedule_on_a_synthetic_accuracy_sequence() -> None:
    s = PlateauSchedule(initial_lr=1e-4)
    assert s.update(0.50) and s.best == 0.50  # first epoch always improves
    assert s.update(0.60)
    assert not s.update(0.6009)  # +0.0009: not more than 0.001
    assert s.best == 0.60 and s.bad_epochs == 1
    for _ in range(3):
        assert not s.update(0.55)
    assert s.lr == 1e-4 and s.bad_epochs == 4
    assert not s.update(0.60)  # 5th epoch without improvement: lr x0.1
    assert s.lr == pytest.approx(1e-5) and s.bad_epochs == 0 and not s.stopped
    assert s.update(0.6011)  # +0.0011 improves and resets the count
    for _ in range(4):
        s.update(0.6)
    assert not s.stopped and s.lr == pytest.approx(1e-5)
    s.update(0.6)  # second plateau: lr reaches 1e-6 = initial / 100
    assert s.stopped and s.lr == pytest.approx(1e-6)
    with pytest.raises(RuntimeError):
        s.update(0.9)
    restored = PlateauSchedule(initial_lr=1e-4)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()


def test_plateau_schedule_stops_after_two_drops_with_world_size_scaling() -> None:
    s = PlateauSchedule(initial_lr=4e-4, patience=2)
    epochs = 0
    while not s.stopped:
        s.update(0.5)
        epochs += 1
    assert epochs == 1 + 2 + 2 and s.lr == pytest.approx(4e-6)


# ---------------------------------------------------------------------------------------------------- resuming


def test_resume_equals_uninterrupted_training(
    small_dataset: Path, tmp_path: Path, one_thread, caplog: pytest.LogCaptureFixture
) -> None:
    straight = train(tiny(small_dataset, tmp_path / "straight"))
    first = tiny(small_dataset, tmp_path / "resumed", epochs=1)
    train(first)
    state = load_state(tmp_path / "resumed" / LAST_FILE)
    assert state["epoch"] == 1 and state["step"] == 2 and state["config"]["epochs"] == 1
    first_line = (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()[0]
    # The second leg through the command line: --resume takes the saved configuration, --epochs overrides it.
    with caplog.at_level("INFO", logger="fmdetect.training.train"):
        assert main(["--resume", str(tmp_path / "resumed"), "--epochs", "2"]) == 0
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text
    assert (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()[0] == first_line  # epoch 1 not rerun

    a = torch.load(tmp_path / "straight" / LAST_FILE, map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "resumed" / LAST_FILE, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, atol=1e-6, rtol=0, msg=name)
    for key in ("exp_avg", "exp_avg_sq"):
        for pid, pstate in a["optimizer"]["state"].items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][key], pstate[key], atol=1e-6, rtol=0)
    assert a["schedule"] == b["schedule"] and a["best"] == b["best"]

    def lines(run: str) -> list[dict]:
        records = [json.loads(x) for x in (tmp_path / run / METRICS_FILE).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]

    assert [r["epoch"] for r in lines("resumed")] == [1, 2]
    assert lines("resumed") == lines("straight")
    m_a = DetectorMetadata.load(straight).metrics
    m_b = DetectorMetadata.load(tmp_path / "resumed" / CHECKPOINT_DIR).metrics
    assert m_a["best_epoch"] == m_b["best_epoch"] and m_a["val"] == m_b["val"]
    assert DetectorMetadata.load(straight).training["mask_band"] == "low+mid"


def test_resume_refuses_changed_training_options(tmp_path: Path) -> None:
    saved = tiny(tmp_path, tmp_path / "run").to_dict()
    last = tmp_path / "run" / LAST_FILE
    check_resumable(saved, tiny(tmp_path, tmp_path / "run", epochs=7, workers=2, max_steps=3).to_dict(), last)
    with pytest.raises(ValueError, match="mask_ratio"):
        check_resumable(saved, tiny(tmp_path, tmp_path / "run", mask_ratio=0.5).to_dict(), last)


def test_training_options_reach_the_run(small_dataset: Path, tmp_path: Path, one_thread) -> None:
    """Another masking kind in the pixel domain, constant lr, max_steps across epochs."""
    config = tiny(
        small_dataset,
        tmp_path / "run",
        mask="patch",
        mask_band="all",
        mask_ratio=0.25,
        mask_domain="pixels",
        mask_rotate=10,
        early_stopping=False,
        epochs=3,
        max_steps=3,
    )
    checkpoint = train(config)
    records = [json.loads(x) for x in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and all(r["lr"] == 1e-4 for r in records)
    assert all(r["improved"] is None for r in records)
    assert (tmp_path / "run" / BEST_FILE).is_file()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["mask"] == "patch" and saved["mask_domain"] == "pixels"
    assert load_detector(checkpoint).metadata.training["mask_rotate"] == 10


# --------------------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_on_cpu_write_a_loadable_checkpoint(small_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fmdetect.training.train",
        "--data",
        str(small_dataset),
        "--out",
        str(out),
        "--pretrained",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--epoch-steps",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--seed",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_state(out / LAST_FILE)
    assert state["world_size"] == 2 and state["step"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # 1e-4 x 2 processes
    model = load_detector(out / CHECKPOINT_DIR)
    assert model.metadata.metrics["world_size"] == 2
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    records = (out / METRICS_FILE).read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["val_acc"] is not None  # one writer: rank 0


# --------------------------------------------------------------------------------------------------- profiling


def test_profile_masking_reports_shares(tmp_path: Path, one_thread) -> None:
    config = TrainConfig.from_dict(
        {"data": tmp_path, "out": tmp_path, "image_size": 32, "batch_size": 4, "device": "cpu", "mask": "dct"}
    )
    rows = profile_masking(config, step_repeats=1, mask_repeats=2)
    names = [r["masking"] for r in rows]
    assert "frequency all 15%" in names and "patch 15%" in names and any("configured: dct" in n for n in names)
    for r in rows:
        assert r["step_ms"] > 0
        if r["share"] is not None:
            assert 0 <= r["share"] < 1
