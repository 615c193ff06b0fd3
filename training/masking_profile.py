"""What masking costs: mask generation and application of each masking kind timed against a whole training step
(forward, backward, AdamW) on random images (``python -m training.train --profile-masking``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fmdetect.core.metadata import DetectorMetadata
from fmdetect.training.distributed import resolve_device, seed_everything
from fmdetect.training.masking import MaskDomain, MaskKind, MaskSpec
from fmdetect.training.model import Detector, MaskedDetector
from fmdetect.training.steps import optimisation_step

if TYPE_CHECKING:
    from fmdetect.training.train import TrainConfig

logger = logging.getLogger(__name__)

PROFILED_MASKS = (
    ("none", MaskSpec(kind=MaskKind.NONE)),
    ("frequency all 15%", MaskSpec(kind=MaskKind.FREQUENCY, band="all", ratio=0.15)),
    ("frequency low+mid 15%", MaskSpec(kind=MaskKind.FREQUENCY, band="low+mid", ratio=0.15)),
    ("frequency all 15% per channel", MaskSpec(kind=MaskKind.FREQUENCY, band="all", ratio=0.15, per_channel=True)),
    ("frequency legacy all 15%", MaskSpec(kind=MaskKind.FREQUENCY, band="all", ratio=0.15, layout="legacy")),
    ("dct all 15%", MaskSpec(kind=MaskKind.DCT, band="all", ratio=0.15)),
    ("wavelet all 15%", MaskSpec(kind=MaskKind.WAVELET, band="all", ratio=0.15)),
    ("pixel 15%", MaskSpec(kind=MaskKind.PIXEL, ratio=0.15)),
    ("patch 15%", MaskSpec(kind=MaskKind.PATCH, ratio=0.15)),
    ("frequency all 15% + rotate/translate", MaskSpec(kind=MaskKind.FREQUENCY, ratio=0.15, rotate=15, translate=0.1)),
)


def timed(fn: Any, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (synchronised on CUDA)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def profile_masking(config: TrainConfig, step_repeats: int = 3, mask_repeats: int = 20) -> list[dict[str, Any]]:
    """Cost of masking against a whole training step (forward, backward, AdamW) on random images.

    Per masking kind: the median time of mask generation + application on the normalised batch, and its share
    of (step without masking + masking). The configured masking is also timed inside a real step.
    """
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    seed_everything(config.seed)
    size = (config.image_size, config.image_size)
    detector = Detector(
        DetectorMetadata(backbone=config.backbone.value, input_size=size), pretrained=config.pretrained
    ).to(device)
    images = torch.randint(0, 256, (config.batch_size, 3, *size), dtype=torch.uint8, device=device)
    targets = (torch.arange(config.batch_size, device=device) % 2).float()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device=device).manual_seed(config.seed)

    def step_with(spec: MaskSpec) -> None:
        net = MaskedDetector(detector, spec).train()
        net.generator = generator
        optimisation_step(net, images, targets, criterion, optimizer, scaler, device, amp)

    none = MaskSpec(kind=MaskKind.NONE)
    step_with(none)  # warm-up
    plain = timed(lambda: step_with(none), device, step_repeats)
    configured = config.masking
    step_with(configured)
    full = timed(lambda: step_with(configured), device, step_repeats)
    normalised = detector.normalise(images)
    pixels = images.float()
    rows = []
    for name, spec in (*PROFILED_MASKS, ("configured: " + describe(configured), configured)):
        x = normalised if spec.domain is MaskDomain.NORMALISED else pixels
        with torch.no_grad():
            spec.apply(x, generator)
            seconds = timed(lambda: spec.apply(x, generator), device, mask_repeats)
        rows.append(
            {
                "masking": name,
                "mask_ms": 1e3 * seconds,
                "step_ms": 1e3 * (plain + seconds),
                "share": seconds / (plain + seconds),
            }
        )
    rows.append(
        {"masking": "measured step with the configured masking", "mask_ms": None, "step_ms": 1e3 * full, "share": None}
    )
    logger.info(
        "masking cost: %s %dpx batch %d on %s (amp %s); step without masking %.1f ms",
        config.backbone.value,
        config.image_size,
        config.batch_size,
        device,
        amp,
        1e3 * plain,
    )
    return rows


def describe(spec: MaskSpec) -> str:
    return f"{spec.kind.value} {spec.band} {spec.ratio:g} {spec.layout.value}"


def profile_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| masking | mask ms | step ms | mask share |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        mask = "" if r["mask_ms"] is None else f"{r['mask_ms']:.2f}"
        share = "" if r["share"] is None else f"{100 * r['share']:.2f} %"
        lines.append(f"| {r['masking']} | {mask} | {r['step_ms']:.1f} | {share} |")
    return "\n".join(lines)
