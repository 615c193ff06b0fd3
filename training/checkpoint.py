"""Checkpoints: a directory with ``model.safetensors`` (weights, no pickle) and ``metadata.json``."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from fmdetect.core.fft import FFTForm
from fmdetect.core.metadata import WEIGHTS_FILE, Coverage, DetectorMetadata
from fmdetect.training.model import Detector

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


def load_detector(checkpoint_dir: str | Path, fft_impl: FFTForm | str = FFTForm.DFT) -> Detector:
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


def with_metadata(model: Detector, **changes: Any) -> Detector:
    """The same weights under a metadata copy with ``changes`` (test-time settings: masks, coverage), on the same
    device, in eval mode."""
    metadata = model.metadata.with_updates(**changes)
    variant = Detector(metadata, fft_impl=model.fft_stage.impl)
    variant.load_state_dict(model.state_dict(), strict=True)
    return variant.to(next(model.parameters()).device).eval()


def with_masks(model: Detector, masks: int) -> Detector:
    """The same weights with ``masks`` fixed test-time FFT masks (the other FFT-stage settings kept)."""
    return with_metadata(model, fft_stage=replace(model.metadata.fft_stage, masks=masks))


def with_coverage(model: Detector, coverage: Coverage) -> Detector:
    """The same weights scoring the windows of ``coverage`` (``core.metadata.Coverage``)."""
    return with_metadata(model, coverage=coverage)
