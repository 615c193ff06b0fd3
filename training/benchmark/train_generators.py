"""Training of the benchmark's generators on the training split's real crops, cached, in parallel processes.

Every trainer draws random square patches (flipped at random) of the training crops: the networks are fully
convolutional, and small patches make a step several times cheaper on a CPU. Training is single-threaded with
deterministic algorithms and a seeded generator, so a trained network depends only on its family's spec, the
crops, the number of steps and the seed, never on how many processes train side by side.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fmdetect.training.benchmark.families import FAMILIES, FamilySpec, Kind, family
from fmdetect.training.benchmark.generate import (
    alphas_cumprod,
    build_network,
    centred_holes,
    network_period,
    single_threaded_deterministic,
    to_tensor,
)
from fmdetect.training.benchmark.networks import PatchDiscriminator, SuperResolutionGenerator

logger = logging.getLogger(__name__)

TRAINER_VERSION = 1
Progress = Callable[[int], None]


def gradient_energy(z: torch.Tensor) -> torch.Tensor:
    """Per image: mean |horizontal difference| + mean |vertical difference|."""
    return z.diff(dim=-1).abs().mean(dim=(1, 2, 3)) + z.diff(dim=-2).abs().mean(dim=(1, 2, 3))


def texture_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mismatch of each image's gradient energy: asks for detail of the real image's strength, as an adversarial
    loss would, where a pixel loss alone blurs."""
    return (gradient_energy(y) - gradient_energy(x)).abs().mean()


def reconstruction_loss(kind: str, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(y, x)
    if kind == "charbonnier":
        return torch.sqrt((y - x) ** 2 + 1e-6).mean()
    if kind == "l1_gradient":
        grad = F.l1_loss(y.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(y.diff(dim=-2), x.diff(dim=-2))
        return F.l1_loss(y, x) + 0.5 * grad
    raise ValueError(f"unknown loss {kind!r}")


class PatchSampler:
    """Random ``patch`` x ``patch`` windows (at multiples of ``period``) of NCHW crops, flipped at random."""

    def __init__(self, data: torch.Tensor, patch: int, period: int, batch: int, generator: torch.Generator) -> None:
        size = data.shape[-1]
        self.data, self.batch, self.generator, self.period = data, min(batch, len(data)), generator, period
        self.patch = min(patch, size) // period * period
        self.offsets = (size - self.patch) // period + 1

    def __call__(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=self.generator)
        top, left = (torch.randint(0, self.offsets, (2,), generator=self.generator) * self.period).tolist()
        x = self.data[idx][:, :, top : top + self.patch, left : left + self.patch]
        flip = torch.rand(self.batch, generator=self.generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int, warmup: float) -> Any:
    """One-cycle schedule; constant for runs too short to have one (tiny test builds)."""
    if steps < 20:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)


def _adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def _report(progress: Progress | None, step: int, steps: int, done: list[int]) -> None:
    if progress is not None and ((step + 1) % 25 == 0 or step + 1 == steps):
        progress(step + 1 - done[0])
        done[0] = step + 1


def train_network(
    name: str, pixels: np.ndarray, steps: int, batch: int, patch: int, seed: int, progress: Progress | None = None
) -> nn.Module:
    """Train family ``name``'s network on NHWC uint8 real crops for ``steps`` steps of ``batch`` patches."""
    spec = family(name)
    cfg = spec.training
    with single_threaded_deterministic():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = build_network(spec)
        period = network_period(model) * (
            SuperResolutionGenerator.scale if spec.kind is Kind.SUPER_RESOLUTION_GAN else 1
        )
        sample = PatchSampler(to_tensor(pixels), cfg.get("patch", patch), period, cfg.get("batch", batch), generator)
        model.train()
        trainer = {
            Kind.AUTOENCODER: _train_autoencoder,
            Kind.SUPER_RESOLUTION_GAN: _train_gan,
            Kind.VAE: _train_vae,
            Kind.DIFFUSION: _train_diffusion,
            Kind.INPAINTING: _train_inpainting,
        }
        trainer[spec.kind](spec, model, sample, steps, generator, rng, progress)
    return model.eval()


def _fit(
    model: nn.Module,
    lr: float,
    steps: int,
    warmup: float,
    loss_of_batch: Callable[[], torch.Tensor],
    progress: Progress | None,
) -> None:
    """Adam with a one-cycle schedule: ``steps`` steps minimising ``loss_of_batch()`` (which draws its batch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = one_cycle(optimizer, lr, steps, warmup)
    done = [0]
    for step in range(steps):
        loss = loss_of_batch()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        _report(progress, step, steps, done)


def _train_autoencoder(
    spec: FamilySpec,
    model: nn.Module,
    sample: PatchSampler,
    steps: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    progress: Progress | None,
) -> None:
    cfg = spec.training

    def loss() -> torch.Tensor:
        x = sample()
        y = model(x)
        return reconstruction_loss(cfg["loss"], y, x) + cfg.get("texture_weight", 0.0) * texture_loss(y, x)

    _fit(model, cfg["lr"], steps, 0.1, loss, progress)


def _discriminator_step(
    disc: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor
) -> None:
    loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _train_gan(
    spec: FamilySpec,
    model: nn.Module,
    sample: PatchSampler,
    steps: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    progress: Progress | None,
) -> None:
    """L1 + non-saturating adversarial (+ texture) loss. A progressive generator trains its x2 stage alone for the
    first 40 % of the steps (against a 2x smaller target), then fades the x4 stage in over the next 20 %."""
    cfg = spec.training
    disc = PatchDiscriminator()
    opt_g, opt_d = _adam(model.parameters(), cfg["lr"]), _adam(disc.parameters(), cfg["lr"])
    progressive = spec.network.get("progressive", False)
    done = [0]
    for step in range(steps):
        x = sample()
        low = F.avg_pool2d(x, SuperResolutionGenerator.scale)
        stage, alpha = 2, 1.0
        if progressive:
            stage = 1 if step < 0.4 * steps else 2
            alpha = min(1.0, max(0.0, (step - 0.4 * steps) / (0.2 * steps)))
        target = F.avg_pool2d(x, 2) if stage == 1 else x
        fake = model(low, stage=stage, alpha=alpha)
        _discriminator_step(disc, opt_d, target, fake)
        loss = (
            F.l1_loss(fake, target)
            + cfg["adversarial_weight"] * F.softplus(-disc(fake)).mean()
            + cfg.get("texture_weight", 0.0) * texture_loss(fake, target)
        )
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        _report(progress, step, steps, done)


def _train_vae(
    spec: FamilySpec,
    model: nn.Module,
    sample: PatchSampler,
    steps: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    progress: Progress | None,
) -> None:
    """L1 + KL + texture, and an adversarial loss on the decoded sample when ``adversarial_weight`` > 0 (as the
    KL-regularised autoencoders of latent diffusion are trained)."""
    cfg = spec.training
    adversarial = cfg.get("adversarial_weight", 0.0)
    disc = PatchDiscriminator() if adversarial else None
    opt_d = _adam(disc.parameters(), cfg["lr"] * 0.2) if disc is not None else None

    def loss() -> torch.Tensor:
        x = sample()
        b, _, h, w = x.shape
        noise = torch.randn(
            (b, model.to_moments.out_channels // 2, h // model.period, w // model.period), generator=generator
        )
        y, mu, logvar = model(x, noise=noise)
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).mean()
        total = F.l1_loss(y, x) + cfg["kl_weight"] * kl + cfg["texture_weight"] * texture_loss(y, x)
        if disc is not None:
            _discriminator_step(disc, opt_d, x, y)
            total = total + adversarial * F.softplus(-disc(y)).mean()
        return total

    _fit(model, cfg["lr"], steps, 0.1, loss, progress)


def _train_diffusion(
    spec: FamilySpec,
    model: nn.Module,
    sample: PatchSampler,
    steps: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    progress: Progress | None,
) -> None:
    """DDPM: predict the noise added at a uniformly drawn step (simple MSE objective)."""
    cfg = spec.training
    abar = alphas_cumprod(cfg["timesteps"]).float()

    def loss() -> torch.Tensor:
        x0 = sample() * 2.0 - 1.0
        t = torch.randint(0, cfg["timesteps"], (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        a = abar[t][:, None, None, None]
        return F.mse_loss(model(a.sqrt() * x0 + (1.0 - a).sqrt() * eps, t), eps)

    _fit(model, cfg["lr"], steps, 0.05, loss, progress)


def _train_inpainting(
    spec: FamilySpec,
    model: nn.Module,
    sample: PatchSampler,
    steps: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    progress: Progress | None,
) -> None:
    """L1 on the hole (x6) and the rest, + adversarial loss on the composite; holes anywhere in the patch."""
    cfg = spec.training
    disc = PatchDiscriminator()
    opt_g, opt_d = _adam(model.parameters(), cfg["lr"]), _adam(disc.parameters(), cfg["lr"])
    done = [0]
    for step in range(steps):
        x = sample()
        hole = centred_holes(x.shape[0], x.shape[-1], cfg["hole_area"], rng, centred=False)
        out = model(x, hole)
        composite = x * (1.0 - hole) + out * hole
        _discriminator_step(disc, opt_d, x, composite)
        l1 = 6.0 * F.l1_loss(out * hole, x * hole) + F.l1_loss(out * (1.0 - hole), x * (1.0 - hole))
        loss = (
            l1
            + cfg["adversarial_weight"] * F.softplus(-disc(composite)).mean()
            + cfg.get("texture_weight", 0.0) * texture_loss(composite, x)
        )
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        _report(progress, step, steps, done)


# ------------------------------------------------------------------------------------------------- cache + pool


def cache_key(name: str, pixels: np.ndarray, steps: int, batch: int, patch: int, seed: int) -> str:
    """Everything that determines a trained network: spec, crops, steps, batch, patch, seed, torch version."""
    spec = asdict(family(name))
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "trainer": TRAINER_VERSION,
                "family": name,
                "spec": spec,
                "steps": steps,
                "batch": batch,
                "patch": patch,
                "seed": seed,
                "torch": torch.__version__,
                "shape": list(pixels.shape),
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()[:20]


def family_seed(base_seed: int, name: str) -> int:
    return base_seed * 1000 + 1 + list(FAMILIES).index(name)


def load_cached(name: str, path: Path) -> tuple[nn.Module, float] | None:
    """A cached network and its training seconds, or None (a damaged entry is ignored, then retrained)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = build_network(family(name))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), float(saved["train_seconds"])
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is retrained
        logger.warning("ignoring cache entry %s: %s", path, exc)
        return None


def save_cached(path: Path, model: nn.Module, seconds: float) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"state_dict": model.state_dict(), "train_seconds": seconds}, tmp)
        tmp.replace(path)
    except OSError as exc:
        logger.warning("could not cache generator %s: %s", path.name, exc)


_PROGRESS: Any = None  # a worker process's queue of finished step counts


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress
    torch.set_num_threads(1)


def run_jobs(
    jobs: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], workers: int, total_steps: int, desc: str
) -> list[Any]:
    """Run ``fn(*args, progress=...)`` for each job, in ``workers`` spawned processes (one torch thread each) or in
    this process; returns the results in order. Progress (steps) is shown on one bar."""
    results: list[Any] = [None] * len(jobs)
    with tqdm(total=total_steps, desc=desc, unit="step", disable=None) as bar:
        remaining = list(range(len(jobs)))
        if workers > 1 and len(jobs) > 1:
            try:
                context = multiprocessing.get_context("spawn")
                progress = context.Queue()
                with futures.ProcessPoolExecutor(
                    min(workers, len(jobs)), mp_context=context, initializer=_init_worker, initargs=(progress,)
                ) as pool:
                    pending = {pool.submit(_call_with_queue, fn, args): i for i, (fn, args) in enumerate(jobs)}
                    waiting = set(pending)
                    while waiting:
                        finished, waiting = futures.wait(waiting, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                        _drain(progress, bar)
                        for job in finished:
                            results[pending[job]] = job.result()
                            remaining.remove(pending[job])
                _drain(progress, bar)
                progress.close()
            except (futures.process.BrokenProcessPool, EOFError, OSError) as exc:
                # E.g. a script without an ``if __name__ == "__main__":`` guard, which spawned workers re-run.
                logger.warning("worker processes failed (%s); running in this process instead", exc)
        for i in remaining:
            fn, args = jobs[i]
            results[i] = fn(*args, progress=bar.update)
    return results


def _call_with_queue(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args, progress=None if _PROGRESS is None else _PROGRESS.put)


def _drain(progress: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(progress.get_nowait())
        except queue.Empty:
            return


def trained_network(
    name: str,
    pixels: np.ndarray,
    steps: int,
    batch: int,
    patch: int,
    seed: int,
    cache_dir: Path,
    progress: Progress | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Family ``name``'s network from the cache, or trained now and cached; with ``{cache_key, cached,
    train_seconds, steps}``."""
    key = cache_key(name, pixels, steps, batch, patch, seed)
    path = Path(cache_dir) / "generators" / f"{name}-{key}.pt"
    cached = load_cached(name, path)
    if cached is not None:
        if progress is not None:
            progress(steps)
        return cached[0], {"cache_key": key, "cached": True, "train_seconds": round(cached[1], 1), "steps": steps}
    start = time.perf_counter()
    model = train_network(name, pixels, steps, batch, patch, seed, progress)
    seconds = time.perf_counter() - start
    save_cached(path, model, seconds)
    logger.info("trained %s in %.0f s", name, seconds)
    return model, {"cache_key": key, "cached": False, "train_seconds": round(seconds, 1), "steps": steps}
