"""The prepared GPU check's dry path: on a machine without a CUDA device every check is skipped with its reason,
the report files are written, and it takes seconds. The GPU path itself runs only on a lent GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmdetect.benchmarks import gpu_check

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the GPU path runs instead")
def test_dry_path_skips_every_check_with_its_reason(tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == list(gpu_check.CHECKS)
    assert all(c["status"] == "skipped" and "CUDA" in c["reason"] for c in checks.values()), checks
    summary = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} | skipped |" in summary for name in checks)
    assert report["environment"]["torch"] == torch.__version__


def test_unknown_check_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--only", "nosuch"])
    assert "unknown checks" in capsys.readouterr().err


def test_carry_holds_what_a_gpu_machine_lacks_within_the_limit(tmp_path: Path) -> None:
    folder = gpu_check.prepare_carry(tmp_path / "carry")
    names = {p.name for p in folder.iterdir()}
    assert {"efficientnet_lite_pytorch", "safetensors"} <= names, names
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 64 * 2**20, size
