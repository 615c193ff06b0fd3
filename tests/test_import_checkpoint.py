"""Importing the authors' .pth checkpoints: same logits as the source model, right metadata, and refusal of any
pickle that would run code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fmdetect.core.metadata import WEIGHTS_FILE, DetectorMetadata
from fmdetect.training.checkpoint import load_detector
from fmdetect.training.import_checkpoint import (
    CALIBRATED_METHOD,
    IMPORTED_METHOD,
    CheckpointImportError,
    ImportConfig,
    get_args_parser,
    import_checkpoint,
    main,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def authors_resnet50() -> nn.Module:
    """The authors' RN50: torchvision parameter names, fc 2048 -> 1; BatchNorm statistics made non-trivial."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 1)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32) * 0.8 + 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def authors_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A file in exactly the structure of the authors' EarlyStopping.save_best_model under DDP."""
    model = authors_resnet50()
    wrapped = nn.DataParallel(model)  # state_dict keys get the "module." prefix, as under DDP
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-4)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.fc.bias.grad = torch.ones_like(model.fc.bias)
    optimizer.step()  # optimizer state for the head only: small, but the real structure
    state = {
        "epoch": 7,
        "counter": 2,
        "best_score": np.float64(0.9375),  # sklearn's accuracy_score
        "model_state_dict": wrapped.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
    }
    assert all(k.startswith("module.") for k in state["model_state_dict"])
    assert state["model_state_dict"]["module.fc.weight"].shape == (1, 2048)
    path = tmp_path_factory.mktemp("authors") / "rn50ft_fouriermask.pth"
    torch.save(state, path)
    return path, model


def test_import_reproduces_source_logits_and_metadata(authors_pth: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, source = authors_pth
    out = tmp_path / "imported"
    assert main([str(path), "--out", str(out), "--backbone", "resnet50", "--image-size", "64"]) == 0

    metadata = DetectorMetadata.load(out)
    assert metadata.backbone == "resnet50" and metadata.input_size == (64, 64)
    assert metadata.fft_stage.masks == 0
    assert metadata.threshold.value == 0.5 and metadata.threshold.method == IMPORTED_METHOD
    assert metadata.threshold.target_fpr is None
    assert metadata.training["best_score"] == 0.9375 and isinstance(metadata.training["best_score"], float)
    assert metadata.training["epoch"] == 7 and metadata.training["imported_from"] == str(path)
    assert len(metadata.training["sha256"]) == 64

    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_FILE), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("backbone.") and "module." not in k for k in keys)

    model = load_detector(out)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ours = model(images)
        theirs = source((images.float() / 255.0 - MEAN) / STD).reshape(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert get_args_parser().parse_args([str(path), "--out", "x"]).image_size == 224


def test_import_calibrates_on_held_out_reals(authors_pth: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = authors_pth
    reals = tmp_path / "held_out" / "any" / "0_real"
    reals.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)).save(reals / f"{i}.png")
    out = import_checkpoint(
        ImportConfig(
            source=path,
            out=tmp_path / "ckpt",
            image_size=64,
            calibrate_on=tmp_path / "held_out",
            target_fpr=0.1,
            device="cpu",
        )
    )
    threshold = DetectorMetadata.load(out).threshold
    assert threshold.method == CALIBRATED_METHOD and threshold.target_fpr == 0.1
    assert DetectorMetadata.load(out).metrics["calibration"]["n_real"] == 10
    assert DetectorMetadata.load(out).metrics["calibration"]["fpr"] <= 0.1


class Payload:
    """Unpickling this runs ``exec``: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    # The payload is live: plain unpickling would create the marker.
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(Payload(live)))
    assert live.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"module.fc.weight": torch.zeros(1, 2048)}, "best_score": Payload(marker)}, path)
    with pytest.raises(CheckpointImportError, match=r"refused to load .*Nothing from it was executed.*exec"):
        import_checkpoint(ImportConfig(source=path, out=tmp_path / "out"))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_refuses_numpy_globals_beyond_the_float64_scalar(tmp_path: Path) -> None:
    path = tmp_path / "array.pth"
    torch.save({"model_state_dict": {"module.fc.weight": torch.zeros(1, 2048)}, "best_score": np.zeros(3)}, path)
    with pytest.raises(CheckpointImportError, match="refused"):
        import_checkpoint(ImportConfig(source=path, out=tmp_path / "out"))


@pytest.mark.parametrize(
    "state, message",
    [
        ({"module.weight": torch.zeros(1, 768), "module.bias": torch.zeros(1)}, "only a linear head"),
        ({"module.fc.weight": torch.zeros(2, 2048), "module.fc.bias": torch.zeros(2)}, "one output logit"),
        ({"module.fc.weight": torch.zeros(1, 2048), "module.fc.bias": torch.zeros(1)}, "do not fit resnet50"),
    ],
)
def test_refuses_checkpoints_of_other_models(tmp_path: Path, state: dict, message: str) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model_state_dict": state, "best_score": np.float64(0.5)}, path)
    with pytest.raises(CheckpointImportError, match=message):
        import_checkpoint(ImportConfig(source=path, out=tmp_path / "out"))
