"""Checkpoints: a directory with ``model.safetensors`` (weights, no pickle) and ``metadata.json``."""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file, save_file

from core.metadata import WEIGHTS_FILE, DetectorMetadata
from training.fft_stage import FFTImpl
from training.model import Detector

logger = logging.getLogger(__name__)


def save_checkpoint(model: Detector, checkpoint_dir: str | Path, metadata: DetectorMetadata | None = None) -> Path:
    """Write weights and metadata into ``checkpoint_dir`` (created if needed); returns the directory."""
    out = Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    # Weights land under a temporary name first so a crash never leaves a half-written checkpoint.
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    (metadata or model.metadata).save(out)
    logger.info("checkpoint written to %s", out)
    return out


def load_detector(checkpoint_dir: str | Path, fft_impl: FFTImpl | str = FFTImpl.FFT) -> Detector:
    """Load a checkpoint directory into a ``Detector`` in eval mode (CPU, fp32)."""
    ckpt = Path(checkpoint_dir)
    metadata = DetectorMetadata.load(ckpt)
    weights = ckpt / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: a checkpoint directory needs {WEIGHTS_FILE}")
    model = Detector(metadata, fft_impl=fft_impl)
    state = load_file(str(weights), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()
