"""Train a real/fake detector with frequency masking, keep the best epoch, calibrate, write a checkpoint.

Single process (CPU or one GPU). AdamW, BCE-with-logits, the paper's training transforms (``training.data``) and
random masking of a fraction of the FFT coefficients (``training.masking``). After every epoch the model is
evaluated on the validation split (accuracy at 0.5, AP, AUC); the epoch with the best validation accuracy is
kept. Its decision threshold is then calibrated on the validation REAL images for a target false-positive rate,
and the checkpoint is written with inference FFT masks off (the paper's test protocol).

Outputs in ``OUT``: ``config.json`` (resolved configuration), ``metrics.jsonl`` (one line per epoch),
``checkpoint/`` (``model.safetensors`` + ``metadata.json``).

Example::

    python -m training.offline_data --out data/offline --small
    python -m training.train --data data/offline --out runs/small --backbone efficientnet_lite0 --pretrained \\
        --image-size 64 --epochs 6 --mask frequency --mask-ratio 0.15
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.metadata import Band, DetectorMetadata, FFTStageConfig, Threshold
from training.calibration import false_positive_rate, threshold_at_fpr
from training.checkpoint import save_checkpoint
from training.data import Augment, RealFakeDataset
from training.masking import MaskKind, MaskSpec
from training.model import Backbone, Detector

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
THRESHOLD_METHOD = "fpr_on_validation_real"


@dataclass(frozen=True)
class TrainConfig:
    """Resolved training configuration; written to ``OUT/config.json`` and into the checkpoint metadata."""

    data: Path
    out: Path
    backbone: Backbone = Backbone.EFFICIENTNET_LITE0
    pretrained: bool = False
    weights_path: Path | None = None
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    mask: MaskKind = MaskKind.FREQUENCY
    mask_band: Band = Band.ALL
    mask_ratio: float = 0.15
    mask_per_channel: bool = False
    mask_prob: float = 1.0
    blur_prob: float = 0.1
    jpeg_prob: float = 0.1
    seed: int = 0
    target_fpr: float = 0.05
    max_steps: int | None = None
    train_split: str = "training"
    val_split: str = "validation"
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "backbone", Backbone(self.backbone))
        object.__setattr__(self, "mask", MaskKind(self.mask))
        object.__setattr__(self, "mask_band", Band(self.mask_band))
        if self.weights_path is not None:
            object.__setattr__(self, "weights_path", Path(self.weights_path))
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.target_fpr <= 1.0:
            raise ValueError(f"target_fpr must be in [0, 1], got {self.target_fpr}")

    @property
    def mask_spec(self) -> MaskSpec:
        return MaskSpec(self.mask, self.mask_band, self.mask_ratio, self.mask_per_channel, self.mask_prob)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, enums as their values."""
        def plain(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, Path):
                return str(value)
            return value

        return {key: plain(value) for key, value in asdict(self).items()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict(model: Detector, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``prob_fake``, labels and generator names of every item of ``loader`` (model in eval mode)."""
    model.eval()
    probs, labels, generators = [], [], []
    for images, targets, gens in loader:
        logits = model(images.to(device, non_blocking=True))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(targets.numpy())
        generators += list(gens)
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64), generators


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy (overall, on real, on fake) at ``threshold``, AP and ROC AUC (NaN when one class is absent)."""
    pred = probs >= threshold
    real, fake = labels == 0, labels == 1
    both = bool(real.any() and fake.any())
    return {
        "acc": float(np.mean(pred == labels.astype(bool))),
        "real_acc": float(np.mean(~pred[real])) if real.any() else float("nan"),
        "fake_acc": float(np.mean(pred[fake])) if fake.any() else float("nan"),
        "ap": float(average_precision_score(labels, probs)) if both else float("nan"),
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
    }


def evaluate(
    model: Detector, loader: DataLoader, device: torch.device
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Validation metrics at 0.5 (overall and per generator) and the raw probabilities and labels."""
    probs, labels, generators = predict(model, loader, device)
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    metrics: dict[str, Any] = {"loss": loss, **binary_metrics(probs, labels)}
    names = np.array(generators)
    if len(set(generators)) > 1:
        metrics["per_generator"] = {
            g: binary_metrics(probs[names == g], labels[names == g]) for g in sorted(set(generators))
        }
    return metrics, probs, labels


def _loader(dataset: RealFakeDataset, config: TrainConfig, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=False,
    )


def train(config: TrainConfig) -> Path:
    """Run a training; returns the checkpoint directory ``config.out / "checkpoint"``."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metrics_path = out / METRICS_FILE
    metrics_path.write_text("")

    augment = Augment(blur_prob=config.blur_prob, jpeg_prob=config.jpeg_prob)
    train_set = RealFakeDataset(config.data, config.train_split, config.image_size, train=True, augment=augment,
                                seed=config.seed)
    val_set = RealFakeDataset(config.data, config.val_split, config.image_size, train=False)
    if len(set(val_set.labels.tolist())) < 2:
        raise ValueError(f"validation split {val_set.root} needs both real and fake images")
    train_loader = _loader(train_set, config, shuffle=True, seed=config.seed)
    val_loader = _loader(val_set, config, shuffle=False, seed=config.seed)

    size = (config.image_size, config.image_size)
    metadata = DetectorMetadata(backbone=config.backbone.value, input_size=size, fft_stage=FFTStageConfig(masks=0))
    model = Detector(
        metadata,
        pretrained=config.pretrained,
        weights_path=None if config.weights_path is None else str(config.weights_path),
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = torch.nn.BCEWithLogitsLoss()
    mask_spec = config.mask_spec
    mask_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    logger.info("training %s on %s: %d train / %d val images, masking %s", config.backbone.value, device,
                len(train_set), len(val_set), mask_spec)

    best: dict[str, Any] | None = None
    step = 0
    for epoch in range(config.epochs):
        model.train()
        train_set.set_epoch(epoch)
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=None)
        for images, targets, _ in bar:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            masks = mask_spec.sample(images.shape[0], *size, generator=mask_generator, device=device)
            loss = criterion(model(images, train_masks=masks), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if config.max_steps is not None and step >= config.max_steps:
                break
        val, _, _ = evaluate(model, val_loader, device)
        record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                  "epoch_seconds": round(time.perf_counter() - t0, 2), **{f"val_{k}": v for k, v in val.items()}}
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(json_safe(record)) + "\n")
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val AP %.4f (%.1f s)", epoch + 1,
                    record["train_loss"], val["loss"], val["acc"], val["ap"], record["epoch_seconds"])
        if best is None or val["acc"] > best["val_acc"]:
            best = {"epoch": epoch + 1, "val_acc": val["acc"], "state": copy.deepcopy(model.state_dict())}
        if config.max_steps is not None and step >= config.max_steps:
            logger.info("reached max_steps=%d", config.max_steps)
            break

    assert best is not None
    model.load_state_dict(best["state"])
    val, probs, labels = evaluate(model, val_loader, device)
    real_probs = probs[labels == 0]
    threshold = threshold_at_fpr(real_probs, config.target_fpr)
    calibrated = binary_metrics(probs, labels, threshold)
    final = {
        "best_epoch": best["epoch"],
        "steps": step,
        "val": val,
        "val_at_threshold": {**calibrated, "fpr": false_positive_rate(real_probs, threshold),
                             "tpr": calibrated["fake_acc"]},
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    logger.info("best epoch %d: val acc %.4f, AP %.4f; threshold %.4g at target FPR %.3f (real FPR %.4f, TPR %.4f)",
                best["epoch"], val["acc"], val["ap"], threshold, config.target_fpr,
                final["val_at_threshold"]["fpr"], final["val_at_threshold"]["tpr"])
    metadata = metadata.with_updates(
        threshold=Threshold(value=threshold, method=THRESHOLD_METHOD, target_fpr=config.target_fpr),
        training=config.to_dict(),
        metrics=json_safe(final),
    )
    model.metadata = metadata
    return save_checkpoint(model.cpu(), out / CHECKPOINT_DIR, metadata)


def json_safe(value: Any) -> Any:
    """NaN and infinities -> None, recursively, so the metrics are strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _choices(enum: type[Enum]) -> list[str]:
    return [member.value for member in enum]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset root (Wang layout: training/, validation/)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (config, metrics, checkpoint/)")
    parser.add_argument("--backbone", default=Backbone.EFFICIENTNET_LITE0.value, choices=_choices(Backbone),
                        help="classifier backbone")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from ImageNet weights that ship offline (efficientnet_lite0)")
    parser.add_argument("--weights-path", type=Path, default=None, help="local ImageNet weights for the backbone")
    parser.add_argument("--image-size", type=int, default=64, help="input size (square) in pixels")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--mask", default=MaskKind.FREQUENCY.value, choices=_choices(MaskKind),
                        help="training-time masking augmentation")
    parser.add_argument("--mask-band", default=Band.ALL.value, choices=_choices(Band),
                        help="frequency band of the masked coefficients")
    parser.add_argument("--mask-ratio", type=float, default=0.15, help="fraction of the band's coefficients masked")
    parser.add_argument("--mask-per-channel", action="store_true", help="an independent mask per colour channel")
    parser.add_argument("--mask-prob", type=float, default=1.0, help="fraction of training samples masked")
    parser.add_argument("--blur-prob", type=float, default=0.1, help="probability of Gaussian blur (sigma 0..3)")
    parser.add_argument("--jpeg-prob", type=float, default=0.1, help="probability of JPEG re-compression (q 30..100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, order, augmentation, masks")
    parser.add_argument("--target-fpr", type=float, default=0.05,
                        help="false-positive rate on validation real images that the threshold is set for")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--train-split", default="training", help="folder of the training split under --data")
    parser.add_argument("--val-split", default="validation", help="folder of the validation split under --data")
    parser.add_argument("--workers", type=int, default=min(4, (os.cpu_count() or 1) // 2),
                        help="DataLoader worker processes (0: load in the main process)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, backbone=Backbone(args.backbone), pretrained=args.pretrained,
        weights_path=args.weights_path, image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, mask=MaskKind(args.mask), mask_band=Band(args.mask_band),
        mask_ratio=args.mask_ratio, mask_per_channel=args.mask_per_channel, mask_prob=args.mask_prob,
        blur_prob=args.blur_prob, jpeg_prob=args.jpeg_prob, seed=args.seed, target_fpr=args.target_fpr,
        max_steps=args.max_steps, train_split=args.train_split, val_split=args.val_split, workers=args.workers,
        device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        checkpoint = train(config_from_args(args))
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    metadata = DetectorMetadata.load(checkpoint)
    print(json.dumps({"checkpoint": str(checkpoint), "threshold": metadata.threshold.value,
                      "metrics": metadata.metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
