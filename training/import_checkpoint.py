"""Import a checkpoint of the authors' code (FakeImageDetection, ``.pth``) as a checkpoint directory of this project.

The authors save ``{"epoch", "counter", "best_score", "model_state_dict", "optimizer_state_dict"}`` from a
``DistributedDataParallel`` model: weight names carry a ``module.`` prefix, the backbone is a ResNet-50 with
torchvision's parameter names and an ``fc`` of 2048 -> 1, and ``best_score`` is a numpy float64 (scikit-learn's
accuracy). A bare state dict is accepted too. Only ``RN50`` checkpoints fit (their ``RN50_mod`` has the same
parameter names but a stride-1 stem, so it would load and compute something else; CLIP checkpoints hold only a
linear head and are refused).

The file is read with ``torch.load(weights_only=True)``: tensors, containers and plain Python values only, plus
exactly the numpy globals a pickled numpy float64 needs (``numpy.core.multiarray.scalar``, ``numpy.dtype``,
``numpy.dtypes.Float64DType``). Anything else (an arbitrary object, a function call) is refused before any of
its code runs; there is no fallback to unrestricted unpickling.

The imported checkpoint runs without test-time masking (``fft_stage.masks = 0``, the paper's test protocol)
and with threshold 0.5, method ``uncalibrated (imported)``, unless ``--calibrate-on DIR`` sets the threshold
for ``--target-fpr`` on the real images under DIR (every ``0_real`` folder; keep them apart from the test set).

Example::

    python -m training.import_checkpoint rn50ft_fouriermask.pth --out checkpoints/authors-rn50-fourier
    python -m training.import_checkpoint rn50ft_fouriermask.pth --out CKPT --calibrate-on data/wang/validation
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig, Threshold
from fmdetect.training.calibrate import calibrate
from fmdetect.training.checkpoint import save_checkpoint
from fmdetect.training.distributed import resolve_device
from fmdetect.training.model import Backbone, Detector

logger = logging.getLogger(__name__)

MODULE_PREFIX = "module."
IMPORTED_METHOD = "uncalibrated (imported)"
CALIBRATED_METHOD = "fpr_on_held_out_real (imported)"
SOURCE = "FakeImageDetection (Doloriel & Cheung, ICASSP 2024)"
HEADS = {Backbone.RESNET50: "fc", Backbone.EFFICIENTNET_LITE0: "_fc"}


def _numpy_float64_globals() -> list[Any]:
    """Exactly what unpickling a numpy float64 scalar needs: the scalar constructor (under its numpy 1 and numpy 2
    module names, so files written by either load), ``numpy.dtype`` and the float64 dtype class."""
    core = np._core if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else np.core
    scalar = core.multiarray.scalar
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [np.dtype, type(np.dtype(np.float64)), *((scalar, name) for name in names)]


class CheckpointImportError(ValueError):
    """A file that is not an importable checkpoint of the authors' code; the message says why."""


@dataclass(frozen=True)
class ImportConfig:
    source: Path
    out: Path
    backbone: Backbone = Backbone.RESNET50
    image_size: int = 224
    calibrate_on: Path | None = None
    target_fpr: float = 0.05
    batch_size: int = 32
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "backbone", Backbone(self.backbone))
        if self.calibrate_on is not None:
            object.__setattr__(self, "calibrate_on", Path(self.calibrate_on))
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not 0.0 <= self.target_fpr <= 1.0:
            raise ValueError(f"target_fpr must be in [0, 1], got {self.target_fpr}")


def load_authors_file(path: str | Path) -> dict[str, Any]:
    """The unpickled content of an authors' ``.pth`` under ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointImportError: the file holds something the restricted unpickler refuses, or is no checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        with torch.serialization.safe_globals(_numpy_float64_globals()):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message ends with advice to allow-list the global: not advice this tool follows.
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(" Please use")[0]
        raise CheckpointImportError(
            f"refused to load {path}: it holds an object outside the weights-only allow-list "
            f"(tensors, containers, plain values, numpy float64). Nothing from it was executed. Detail: {detail}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointImportError(f"{path} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(content, Mapping):
        raise CheckpointImportError(f"{path} holds a {type(content).__name__}, not a checkpoint dict")
    return dict(content)


def backbone_state_dict(content: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone weights of a checkpoint dict (``model_state_dict`` or a bare state dict), prefix removed."""
    state = content.get("model_state_dict", content)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointImportError("no model_state_dict in the file")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        others = sorted(k for k in state if k not in tensors)[:5]
        raise CheckpointImportError(f"model_state_dict holds non-tensor entries, e.g. {others}")
    return {k.removeprefix(MODULE_PREFIX): v for k, v in tensors.items()}


def build_detector(state: Mapping[str, torch.Tensor], metadata: DetectorMetadata) -> Detector:
    """A Detector with the imported backbone weights; refuses weights that do not fit exactly."""
    backbone = Backbone(metadata.backbone)
    head = HEADS[backbone]
    weight = state.get(f"{head}.weight")
    if weight is None:
        keys = sorted(state)
        if keys and all(k in ("weight", "bias") for k in keys):
            raise CheckpointImportError("the file holds only a linear head (a CLIP linear probe); not supported")
        raise CheckpointImportError(f"no {head}.weight: not a {backbone.value} checkpoint (keys e.g. {keys[:5]})")
    if weight.ndim != 2 or weight.shape[0] != 1:
        raise CheckpointImportError(f"{head} maps {weight.shape[-1]} -> {weight.shape[0]}; expected one output logit")
    model = Detector(metadata)
    expected = model.backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointImportError(
            f"weights do not fit {backbone.value}: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}), wrong shape {wrong[:5]} ({len(wrong)})"
        )
    model.backbone.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def import_checkpoint(config: ImportConfig) -> Path:
    """Import ``config.source`` into the checkpoint directory ``config.out``; returns it."""
    content = load_authors_file(config.source)
    state = backbone_state_dict(content)
    ignored = sorted(k for k in content if k not in ("model_state_dict", "epoch", "counter", "best_score"))
    if "model_state_dict" in content and ignored:
        logger.info("ignoring %s", ", ".join(ignored))
    size = (config.image_size, config.image_size)
    sha256 = hashlib.sha256(config.source.read_bytes()).hexdigest()
    training: dict[str, Any] = {"imported_from": str(config.source), "source": SOURCE, "sha256": sha256}
    for key in ("epoch", "counter", "best_score"):
        value = content.get(key)
        if isinstance(value, (int, float, np.generic)) and not isinstance(value, bool):
            training[key] = value.item() if isinstance(value, np.generic) else value
    metadata = DetectorMetadata(
        backbone=config.backbone.value,
        input_size=size,
        fft_stage=FFTStageConfig(masks=0),
        threshold=Threshold(value=0.5, method=IMPORTED_METHOD),
        training=training,
    )
    model = build_detector(state, metadata)
    metrics: dict[str, Any] = {}
    if config.calibrate_on is not None:
        threshold, metrics["calibration"] = calibrate(
            model,
            config.calibrate_on,
            config.target_fpr,
            config.batch_size,
            resolve_device(config.device),
            method=CALIBRATED_METHOD,
        )
        model.cpu()
        metadata = metadata.with_updates(threshold=threshold, metrics=metrics)
        model.metadata = metadata
    logger.info(
        "imported %s (%d tensors, %s) with threshold %.6g (%s)",
        config.source,
        len(state),
        config.backbone.value,
        metadata.threshold.value,
        metadata.threshold.method,
    )
    return save_checkpoint(model, config.out, metadata)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.import_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the authors' .pth file")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument(
        "--backbone",
        default=Backbone.RESNET50.value,
        choices=[b.value for b in Backbone],
        help="backbone of the file (the authors' RN50 is resnet50)",
    )
    parser.add_argument("--image-size", type=int, default=224, help="input size (square) of the test protocol")
    parser.add_argument(
        "--calibrate-on",
        type=Path,
        default=None,
        help="calibrate the threshold on the real images (0_real folders) under this directory",
    )
    parser.add_argument("--target-fpr", type=float, default=0.05, help="target false-positive rate of --calibrate-on")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of --calibrate-on")
    parser.add_argument("--device", default="auto", help="torch device of --calibrate-on: auto, cpu, cuda, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = import_checkpoint(
            ImportConfig(
                source=args.source,
                out=args.out,
                backbone=args.backbone,
                image_size=args.image_size,
                calibrate_on=args.calibrate_on,
                target_fpr=args.target_fpr,
                batch_size=args.batch_size,
                device=args.device,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
