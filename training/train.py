"""Train a real/fake detector with the paper's masking and schedule, keep the best epoch, calibrate, write a checkpoint.

The paper's recipe: AdamW (lr 1e-4 times the number of processes, weight decay 1e-4), BCE with logits, the
training transforms of ``training.data`` and a masking augmentation of ``training.masking`` (default: 15 % of
all FFT coefficients). Schedule and early stopping (Wang et al. 2020, kept by the paper; the default policy): an
epoch improves when the validation accuracy exceeds the best so far by more than 0.001; after 5 epochs without
improvement the learning rate drops x0.1; training stops once it reaches 1/100 of the initial rate, or after
``--epochs`` epochs (``--no-early-stopping``: a constant rate for ``--epochs`` epochs). The epoch with the best
validation accuracy (at 0.5) is kept; its decision threshold is calibrated on the validation REAL images for a
target false-positive rate, and the checkpoint is written with inference FFT masks off (the test protocol).

Devices: CPU; one GPU with mixed precision (``torch.autocast`` fp16 and a ``GradScaler``; masking and the loss
stay fp32); several GPUs (or CPU processes) with ``torchrun``: DDP, NCCL on CUDA and gloo on CPU, a
``DistributedSampler`` over the training split, ``--batch-size`` per process, validation sharded over the
processes and gathered, rank 0 logs and writes.

Resuming: after every epoch ``OUT/last.pt`` holds the model, optimiser, grad-scaler and schedule states, the
epoch, step and best epoch, the RNG states and the resolved configuration (``torch.save`` of tensors and plain
containers, read back with ``torch.load(weights_only=True)``); ``OUT/best.pt`` holds the best epoch's weights.
Rerunning the command (or ``--resume OUT``) continues after the last finished epoch; the training-defining
options must match (``--epochs``, ``--max-steps``, ``--epoch-steps``, ``--workers``, ``--device``, ``--no-amp``
and ``--data`` may change), and so must the number of processes. Every epoch seeds its randomness (dropout,
masks, data order, augmentation) from (seed, epoch, rank), so a resumed run equals an uninterrupted one.

Outputs in ``OUT``: ``config.json`` (resolved configuration), ``metrics.jsonl`` (one line per epoch),
``last.pt``, ``best.pt``, ``checkpoint/`` (``model.safetensors`` + ``metadata.json``).

Example::

    python -m training.benchmark --out data/offline --small
    python -m training.train --data data/offline --out runs/small --backbone efficientnet_lite0 --pretrained \\
        --image-size 64 --epochs 6 --mask frequency --mask-ratio 0.15
    torchrun --nproc-per-node 2 -m training.train --data data/offline --out runs/ddp --image-size 64
    python -m training.train --resume runs/small --epochs 12
    python -m training.train --profile-masking --backbone resnet50 --image-size 224 --batch-size 8
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig, Threshold
from fmdetect.training.calibration import false_positive_rate, threshold_at_fpr
from fmdetect.training.checkpoint import save_checkpoint
from fmdetect.training.data import Augment, RealFakeDataset
from fmdetect.training.distributed import (
    Distributed,
    barrier,
    epoch_seed,
    mean_over_processes,
    seed_everything,
    setup_distributed,
)
from fmdetect.training.masking import BandLayout, MaskDomain, MaskKind, MaskSpec
from fmdetect.training.masking_profile import profile_masking, profile_table
from fmdetect.training.metrics import binary_metrics, json_safe
from fmdetect.training.model import Backbone, Detector, MaskedDetector
from fmdetect.training.run_state import (
    BEST_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_FILE,
    METRICS_FILE,
    STATE_VERSION,
    THRESHOLD_METHOD,
    check_resumable,
    load_state,
    rng_state,
    save_atomic,
    set_rng_state,
    trim_metrics,
)
from fmdetect.training.schedule import PlateauSchedule
from fmdetect.training.steps import Predictions, optimisation_step, predict

logger = logging.getLogger(__name__)


# The masking options' flat names (``--mask-*`` flags, keys of config.json) -> ``MaskSpec`` fields.
MASK_KEYS = {
    "kind": "mask",
    "band": "mask_band",
    "ratio": "mask_ratio",
    "per_channel": "mask_per_channel",
    "probability": "mask_prob",
    "layout": "mask_layout",
    "patch_size": "mask_patch_size",
    "rotate": "mask_rotate",
    "translate": "mask_translate",
    "domain": "mask_domain",
}


def default_workers() -> int:
    """DataLoader workers per process: half the cores, at most 4 (0 loads in the main process)."""
    return min(4, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True)
class TrainConfig:
    """Resolved training configuration; written to ``OUT/config.json``, ``last.pt`` and the checkpoint metadata.

    ``lr`` is the rate of one process: with N processes AdamW runs at ``lr * N``. ``batch_size`` is per process.
    """

    data: Path
    out: Path
    backbone: Backbone = Backbone.EFFICIENTNET_LITE0
    pretrained: bool = True
    weights_path: Path | None = None
    image_size: int = 128
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.001
    lr_factor: float = 0.1
    min_lr_ratio: float = 0.01
    masking: MaskSpec = field(default_factory=MaskSpec)  # flags and saved keys: MASK_KEYS
    blur_prob: float = 0.1
    jpeg_prob: float = 0.1
    seed: int = 0
    target_fpr: float = 0.05
    max_steps: int | None = None
    epoch_steps: int | None = None
    train_split: str = "training"
    val_split: str = "validation"
    workers: int = field(default_factory=default_workers)
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "backbone", Backbone(self.backbone))
        if isinstance(self.masking, dict):
            object.__setattr__(self, "masking", MaskSpec(**self.masking))
        if self.weights_path is not None:
            object.__setattr__(self, "weights_path", Path(self.weights_path))
        if self.pretrained and self.backbone is Backbone.RESNET50 and self.weights_path is None:
            raise ValueError(
                "no ResNet-50 ImageNet weights ship offline: pass --weights-path FILE (e.g. torchvision's "
                "resnet50 weights) or --no-pretrained"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        for name in ("max_steps", "epoch_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.target_fpr <= 1.0:
            raise ValueError(f"target_fpr must be in [0, 1], got {self.target_fpr}")
        if self.patience < 1 or not 0.0 < self.lr_factor < 1.0 or not 0.0 < self.min_lr_ratio < 1.0:
            raise ValueError("patience must be >= 1, lr_factor and min_lr_ratio in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and flat (the masking options under their ``MASK_KEYS`` names): paths as strings, enums as
        their values. What ``config.json``, ``last.pt`` and the checkpoint metadata hold."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masking"}
        values.update({key: getattr(self.masking, name) for name, key in MASK_KEYS.items()})
        return {key: _plain(value) for key, value in values.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The configuration of ``to_dict``'s flat form (a saved ``config.json``, or flag values)."""
        names = {key: name for name, key in MASK_KEYS.items()}
        known = {f.name for f in fields(cls)} - {"masking"} | set(names)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        masking = MaskSpec(**{names[k]: v for k, v in data.items() if k in names})
        return cls(**{k: v for k, v in data.items() if k not in names}, masking=masking)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def option_defaults() -> dict[str, Any]:
    """Every option's default under its flat name, from the dataclasses (``TrainConfig``, and ``MaskSpec`` for
    the ``--mask-*`` flags): the one place defaults are declared; the flags take theirs from here."""
    config = TrainConfig(data=Path("."), out=Path("."))
    return {key: value for key, value in config.to_dict().items() if key not in ("data", "out")}


# ------------------------------------------------------------------------------------------------ validation


def scored_metrics(probs: np.ndarray, labels: np.ndarray, generators: list[str]) -> dict[str, Any]:
    """Validation metrics at 0.5, overall and per generator, and the mean BCE."""
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    metrics: dict[str, Any] = {"loss": loss, **binary_metrics(probs, labels)}
    names = np.array(generators)
    if len(set(generators)) > 1:
        metrics["per_generator"] = {
            g: binary_metrics(probs[names == g], labels[names == g]) for g in sorted(set(generators))
        }
    return metrics


def validate(
    model: Detector,
    dataset: RealFakeDataset,
    config: TrainConfig,
    device: torch.device,
    amp: bool,
    ctx: Distributed = Distributed(),
) -> tuple[dict[str, Any], Predictions]:
    """Validation metrics at 0.5 (overall and per generator) over the whole dataset, and its predictions; in a
    job each process scores every world_size-th item and all get the gathered result."""
    if not ctx.active:
        pred = predict(model, dataset, config.batch_size, device, config.workers, amp, desc="validate")
        return scored_metrics(pred.probs, pred.labels, pred.generators), pred
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))
    part = predict(model, Subset(dataset, shard), config.batch_size, device, config.workers, amp, desc="validate")
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, (shard, part.logits.tolist(), part.labels.tolist(), part.generators, part.paths))
    order = np.argsort(np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]), kind="stable")
    gens = [g for p in parts for g in p[3]]
    paths = [path for p in parts for path in p[4]]
    pred = Predictions(
        np.concatenate([np.asarray(p[1], dtype=np.float32) for p in parts])[order],
        np.concatenate([np.asarray(p[2], dtype=np.int64) for p in parts])[order],
        [gens[i] for i in order],
        [paths[i] for i in order],
        part.model_seconds,
    )
    return scored_metrics(pred.probs, pred.labels, pred.generators), pred


# ------------------------------------------------------------------------------------------------- training


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    ctx: Distributed,
    epoch: int,
    step: int,
    config: TrainConfig,
) -> tuple[float, int]:
    """One pass over ``loader`` (cut short by ``--epoch-steps`` / ``--max-steps``); returns the mean training loss
    over every process and the optimiser step count after it."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=None if ctx.is_main else True)
    for images, targets, _ in bar:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = optimisation_step(model, images, targets, criterion, optimizer, scaler, device, amp)
        loss_sum += loss.detach()
        batches += 1
        step += 1
        if ctx.is_main and batches % 10 == 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (config.epoch_steps is not None and batches >= config.epoch_steps) or (
            config.max_steps is not None and step >= config.max_steps
        ):
            break
    return mean_over_processes(loss_sum, batches, ctx), step


def _train_loader(dataset: RealFakeDataset, config: TrainConfig, sampler: DistributedSampler) -> DataLoader:
    # Workers are created anew every epoch so that they see the dataset's current epoch (augmentation seed).
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=len(sampler) > config.batch_size,
        num_workers=config.workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def train(config: TrainConfig, restart: bool = False) -> Path:
    """Run (or resume) a training; returns the checkpoint directory ``config.out / "checkpoint"``.

    Inside a torchrun job every process calls this; rank 0 writes the outputs.

    Args:
        restart: ignore an existing ``OUT/last.pt`` and start over.
    """
    ctx, device = setup_distributed(config.device)
    try:
        return _train(config, ctx, device, restart)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: Distributed, device: torch.device, restart: bool) -> Path:
    start = time.perf_counter()
    out = config.out
    last_path = out / LAST_FILE
    state = None if restart or not last_path.is_file() else load_state(last_path)
    if state is not None:
        check_resumable(state["config"], config.to_dict(), last_path)
        if state["world_size"] != ctx.world_size:
            raise ValueError(
                f"{last_path} was trained by {state['world_size']} processes, this run has "
                f"{ctx.world_size}; resume with the same number"
            )
    amp = config.amp and device.type == "cuda"
    augment = Augment(blur_prob=config.blur_prob, jpeg_prob=config.jpeg_prob)
    train_set = RealFakeDataset(
        config.data, config.train_split, config.image_size, train=True, augment=augment, seed=config.seed
    )
    val_set = RealFakeDataset(config.data, config.val_split, config.image_size, train=False)
    if len(set(val_set.labels.tolist())) < 2:
        raise ValueError(f"validation split {val_set.root} needs both real and fake images")
    # The run folder is written only once its data is known to load: a failed start leaves nothing behind.
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        trim_metrics(out / METRICS_FILE, 0 if state is None else state["epoch"])
        for stale in (BEST_FILE, LAST_FILE):
            if state is None and (out / stale).exists():
                (out / stale).unlink()
    barrier(ctx)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    train_loader = _train_loader(train_set, config, sampler)

    size = (config.image_size, config.image_size)
    metadata = DetectorMetadata(backbone=config.backbone.value, input_size=size, fft_stage=FFTStageConfig(masks=0))
    seed_everything(config.seed)
    detector = Detector(
        metadata,
        pretrained=config.pretrained,
        weights_path=None if config.weights_path is None else str(config.weights_path),
    ).to(device)
    net = MaskedDetector(detector, config.masking)
    model: nn.Module = net
    if ctx.active:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    lr = config.lr * ctx.world_size
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    schedule = PlateauSchedule(lr, config.patience, config.min_delta, config.lr_factor, config.min_lr_ratio)
    criterion = nn.BCEWithLogitsLoss()
    mask_generator = torch.Generator(device=device)

    first_epoch, step, best = 0, 0, None
    if state is not None:
        detector.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        schedule.load_state_dict(state["schedule"])
        first_epoch, step, best = int(state["epoch"]), int(state["step"]), state["best"]
        set_rng_state(state["rng"])
        logger.info(
            "resuming %s after epoch %d (step %d, lr %.3g, best epoch %s)",
            out,
            first_epoch,
            step,
            schedule.lr,
            None if best is None else best["epoch"],
        )
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr
    if ctx.is_main:
        logger.info(
            "training %s on %s x%d (amp %s): %d train / %d val images, lr %.3g, masking %s",
            config.backbone.value,
            device,
            ctx.world_size,
            amp,
            len(train_set),
            len(val_set),
            lr,
            config.masking,
        )

    for epoch in range(first_epoch, config.epochs):
        if schedule.stopped or (config.max_steps is not None and step >= config.max_steps):
            break
        t0 = time.perf_counter()
        seed = epoch_seed(config.seed, epoch, ctx.rank)
        seed_everything(seed)
        mask_generator.manual_seed(seed)
        net.generator = mask_generator
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_loss, step = train_one_epoch(
            model, train_loader, criterion, optimizer, scaler, device, amp, ctx, epoch, step, config
        )
        if ctx.active:  # BatchNorm statistics of rank 0, which DDP broadcasts, everywhere
            for buffer in detector.buffers():
                dist.broadcast(buffer, 0)
        val, _ = validate(detector, val_set, config, device, amp, ctx)
        epoch_lr = schedule.lr
        improved = None
        if config.early_stopping:
            improved = schedule.update(val["acc"])
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr
        is_best = best is None or val["acc"] > best["val_acc"]
        if is_best:
            best = {"epoch": epoch + 1, "val_acc": val["acc"]}
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": epoch_lr,
            "train_loss": train_loss,
            "epoch_seconds": round(time.perf_counter() - t0, 2),
            "improved": improved,
            **{f"val_{k}": v for k, v in val.items()},
        }
        if ctx.is_main:
            if is_best:
                save_atomic(
                    {"epoch": epoch + 1, "val_acc": val["acc"], "model": detector.state_dict()}, out / BEST_FILE
                )
            with (out / METRICS_FILE).open("a") as fh:
                fh.write(json.dumps(json_safe(record)) + "\n")
            save_atomic(
                {
                    "version": STATE_VERSION,
                    "config": config.to_dict(),
                    "world_size": ctx.world_size,
                    "epoch": epoch + 1,
                    "step": step,
                    "best": best,
                    "model": detector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rng_state(),
                },
                last_path,
            )
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val AP %.4f, lr %.3g (%.1f s)%s",
                epoch + 1,
                train_loss,
                val["loss"],
                val["acc"],
                val["ap"],
                epoch_lr,
                record["epoch_seconds"],
                "" if not schedule.stopped else "; early stop",
            )
        if config.max_steps is not None and step >= config.max_steps:
            logger.info("reached max_steps=%d", config.max_steps)

    barrier(ctx)
    checkpoint = out / CHECKPOINT_DIR
    if ctx.is_main:
        checkpoint = _finish(config, detector, metadata, val_set, device, amp, ctx, step, start)
    barrier(ctx)
    return checkpoint


def _finish(
    config: TrainConfig,
    detector: Detector,
    metadata: DetectorMetadata,
    val_set: RealFakeDataset,
    device: torch.device,
    amp: bool,
    ctx: Distributed,
    step: int,
    start: float,
) -> Path:
    """Rank 0: reload the best epoch, calibrate its threshold on validation reals, write the checkpoint."""
    best = load_state(config.out / BEST_FILE)
    detector.load_state_dict(best["model"])
    val, pred = validate(detector, val_set, config, device, amp)
    probs, labels = pred.probs, pred.labels
    real_probs = probs[labels == 0]
    threshold = threshold_at_fpr(real_probs, config.target_fpr)
    calibrated = binary_metrics(probs, labels, threshold)
    final = {
        "best_epoch": int(best["epoch"]),
        "steps": step,
        "world_size": ctx.world_size,
        "effective_lr": config.lr * ctx.world_size,
        "val": val,
        "val_at_threshold": {
            **calibrated,
            "fpr": false_positive_rate(real_probs, threshold),
            "tpr": calibrated["fake_acc"],
        },
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    logger.info(
        "best epoch %d: val acc %.4f, AP %.4f; threshold %.4g at target FPR %.3f (real FPR %.4f, TPR %.4f)",
        final["best_epoch"],
        val["acc"],
        val["ap"],
        threshold,
        config.target_fpr,
        final["val_at_threshold"]["fpr"],
        final["val_at_threshold"]["tpr"],
    )
    metadata = metadata.with_updates(
        threshold=Threshold(value=threshold, method=THRESHOLD_METHOD, target_fpr=config.target_fpr),
        training=config.to_dict(),
        metrics=json_safe(final),
    )
    detector.metadata = metadata
    return save_checkpoint(copy.deepcopy(detector).cpu(), config.out / CHECKPOINT_DIR, metadata)


# ------------------------------------------------------------------------------------------------------- CLI


def _choices(enum: type[Enum]) -> list[str]:
    return [member.value for member in enum]


def get_args_parser() -> argparse.ArgumentParser:
    defaults = option_defaults()
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset root (Wang layout: training/, validation/); required unless --resume",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory (config, metrics, last.pt, best.pt, checkpoint/); resumes from its "
        "last.pt when there is one; required unless --resume",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR with its saved configuration (flags given here override the ones "
        "that may change, e.g. --epochs)",
    )
    parser.add_argument("--restart", action="store_true", help="ignore OUT/last.pt and train from scratch")
    parser.add_argument(
        "--backbone", default=defaults["backbone"], choices=_choices(Backbone), help="classifier backbone"
    )
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=defaults["pretrained"],
        help="start from ImageNet weights (efficientnet_lite0's ship offline; ResNet-50 needs a local weights file)",
    )
    parser.add_argument(
        "--weights-path", type=Path, default=defaults["weights_path"], help="local ImageNet weights for the backbone"
    )
    parser.add_argument("--image-size", type=int, default=defaults["image_size"], help="input size (square) in pixels")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"], help="maximum number of epochs")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="batch size per process")
    parser.add_argument(
        "--lr", type=float, default=defaults["lr"], help="AdamW learning rate per process (x world size)"
    )
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="AdamW weight decay")
    parser.add_argument(
        "--no-early-stopping",
        dest="early_stopping",
        action="store_false",
        default=defaults["early_stopping"],
        help="constant learning rate for --epochs epochs instead of the paper's plateau schedule "
        "(plateau schedule used: %(default)s)",
    )
    parser.add_argument(
        "--patience", type=int, default=defaults["patience"], help="epochs without improvement before the lr drops"
    )
    parser.add_argument(
        "--min-delta",
        type=float,
        default=defaults["min_delta"],
        help="validation accuracy gain that counts as an improvement",
    )
    parser.add_argument("--lr-factor", type=float, default=defaults["lr_factor"], help="lr multiplier on a plateau")
    parser.add_argument(
        "--min-lr-ratio",
        type=float,
        default=defaults["min_lr_ratio"],
        help="stop once the lr reaches this fraction of the initial lr",
    )
    parser.add_argument(
        "--mask",
        default=defaults["mask"],
        choices=_choices(MaskKind),
        help="training-time masking augmentation",
    )
    parser.add_argument(
        "--mask-band",
        default=defaults["mask_band"],
        help="band of the masked coefficients: all, low, mid, high or a combination like low+mid",
    )
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=defaults["mask_ratio"],
        help="fraction of each band's coefficients (of the pixels, of the patches) masked",
    )
    parser.add_argument(
        "--mask-per-channel",
        action="store_true",
        default=defaults["mask_per_channel"],
        help="an independent mask per colour channel",
    )
    parser.add_argument(
        "--mask-prob", type=float, default=defaults["mask_prob"], help="fraction of training samples masked"
    )
    parser.add_argument(
        "--mask-layout",
        default=defaults["mask_layout"],
        choices=_choices(BandLayout),
        help="bands by frequency radius, or the authors' legacy rectangles",
    )
    parser.add_argument(
        "--mask-patch-size", type=int, default=defaults["mask_patch_size"], help="patch side in pixels (--mask patch)"
    )
    parser.add_argument(
        "--mask-rotate", type=float, default=defaults["mask_rotate"], help="max random rotation (degrees) after masking"
    )
    parser.add_argument(
        "--mask-translate",
        type=float,
        default=defaults["mask_translate"],
        help="max random translation (fraction of the size) after masking",
    )
    parser.add_argument(
        "--mask-domain",
        default=defaults["mask_domain"],
        choices=_choices(MaskDomain),
        help="mask the normalised tensor, or 0..255 pixels clipped (pixels) or wrapped like the "
        "authors' uint8 cast (pixels-wrap)",
    )
    parser.add_argument(
        "--blur-prob", type=float, default=defaults["blur_prob"], help="probability of Gaussian blur (sigma 0..3)"
    )
    parser.add_argument(
        "--jpeg-prob", type=float, default=defaults["jpeg_prob"], help="probability of JPEG re-compression (q 30..100)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults["seed"], help="seed of initialisation, order, augmentation, masks"
    )
    parser.add_argument(
        "--target-fpr",
        type=float,
        default=defaults["target_fpr"],
        help="false-positive rate on validation real images that the threshold is set for",
    )
    parser.add_argument(
        "--max-steps", type=int, default=defaults["max_steps"], help="stop after this many optimiser steps in all"
    )
    parser.add_argument(
        "--epoch-steps",
        type=int,
        default=defaults["epoch_steps"],
        help="at most this many optimiser steps per epoch (quick runs)",
    )
    parser.add_argument(
        "--train-split", default=defaults["train_split"], help="folder of the training split under --data"
    )
    parser.add_argument(
        "--val-split", default=defaults["val_split"], help="folder of the validation split under --data"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults["workers"],
        help="DataLoader worker processes per process (0: load in the main process)",
    )
    parser.add_argument(
        "--device", default=defaults["device"], help="torch device: auto, cpu, cuda (torchrun: one GPU per rank)"
    )
    parser.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        default=defaults["amp"],
        help="no mixed precision on CUDA (it is never used on CPU)",
    )
    parser.add_argument(
        "--profile-masking",
        action="store_true",
        help="time mask generation + application against a training step on random images, "
        "print a table and exit (uses --backbone, --image-size, --batch-size, --mask-*)",
    )
    return parser


CLI_ONLY = ("resume", "restart", "profile_masking")


def config_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None, given: set[str] | None = None
) -> TrainConfig:
    """The configuration of parsed flags; with ``base`` (a saved configuration) only the ``given`` flags apply."""
    values = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    if base is not None:
        values = {**base, **{k: v for k, v in values.items() if k in (given or set())}}
    if values.get("data") is None or values.get("out") is None:
        raise ValueError("--data and --out are required (or --resume RUN_DIR)")
    return TrainConfig.from_dict(values)


def _given_flags(argv: list[str] | None) -> set[str]:
    """Destinations of the flags that appear on the command line."""
    probe = get_args_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(levelname)s %(name)s{f' [rank {rank}]' if rank else ''}: %(message)s",
    )
    try:
        if args.resume is not None:
            saved = args.resume / CONFIG_FILE
            if not (args.resume / LAST_FILE).is_file() or not saved.is_file():
                raise FileNotFoundError(f"{args.resume} holds no {LAST_FILE} and {CONFIG_FILE} to resume from")
            base = {**json.loads(saved.read_text()), "out": args.resume}
            config = config_from_args(args, base, _given_flags(argv) - {"out"})
        elif args.profile_masking:
            config = config_from_args(argparse.Namespace(**{**vars(args), "data": Path("."), "out": Path(".")}))
        else:
            config = config_from_args(args)
        if args.profile_masking:
            print(profile_table(profile_masking(config)))
            return 0
        checkpoint = train(config, restart=args.restart)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    if rank == 0:
        metadata = DetectorMetadata.load(checkpoint)
        print(
            json.dumps(
                {"checkpoint": str(checkpoint), "threshold": metadata.threshold.value, "metrics": metadata.metrics},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
