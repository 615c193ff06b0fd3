"""One step of each kind that training, evaluation and calibration share: an optimisation step, and scoring a
dataset with a detector (``predict``: logits, from which ``Predictions.probs`` gives ``prob_fake`` as served)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from fmdetect.core.scoring import sigmoid


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on ``device`` when ``enabled`` (mixed precision on CUDA), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def optimisation_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
) -> torch.Tensor:
    """One training step: forward (autocast under AMP), BCE loss in fp32, backward, scaled optimiser step."""
    with autocast(device, amp):
        logits = model(images)
    loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


@dataclass
class Predictions:
    """Logits (float32) of every image in dataset order, with labels, generators, paths and the model time."""

    logits: np.ndarray
    labels: np.ndarray
    generators: list[str]
    paths: list[str]
    model_seconds: float

    @property
    def probs(self) -> np.ndarray:
        """``prob_fake`` as served (float32 sigmoid), widened to float64."""
        return sigmoid(self.logits).astype(np.float64)


def _sample_paths(dataset: Dataset, count: int) -> list[str]:
    """The image paths behind ``dataset`` (through subsets and wrappers with a ``base``), or "" each."""
    indices = None
    while isinstance(dataset, Subset) or hasattr(dataset, "base"):
        if isinstance(dataset, Subset):
            indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
            dataset = dataset.dataset
        else:
            dataset = dataset.base
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [""] * count
    chosen = samples if indices is None else [samples[i] for i in indices]
    return [str(s.path) for s in chosen]


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    amp: bool = False,
    desc: str = "predict",
) -> Predictions:
    """Logits of every item of ``dataset`` (images, labels, generator names) in order, and the time spent in the
    model; the model is put in eval mode."""
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    logits, labels, generators, seconds = [], [], [], 0.0
    for images, targets, gens in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            out = model(images.to(device, non_blocking=True))
        sync(device)
        seconds += time.perf_counter() - t0
        logits.append(out.float().cpu().numpy())
        labels.append(targets.numpy())
        generators += list(gens)
    if not logits:
        return Predictions(np.zeros(0, np.float32), np.zeros(0, np.int64), [], [], 0.0)
    return Predictions(
        np.concatenate(logits).astype(np.float32),
        np.concatenate(labels).astype(np.int64),
        generators,
        _sample_paths(dataset, len(generators)),
        seconds,
    )
