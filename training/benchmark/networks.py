"""The generator networks of the benchmark's families, all fully convolutional (trained on patches, run at the
benchmark's crop size).

Each mechanism the benchmark covers has its own network: ``AutoEncoder`` (deterministic reconstruction),
``SuperResolutionGenerator`` (+ ``PatchDiscriminator``: GANs that synthesise every output pixel from a 4x smaller
input, upsampling by transposed convolution, nearest + conv, or pixel shuffle, optionally grown progressively as
ProGAN), ``VariationalAutoEncoder`` (a decoded posterior sample), ``DiffusionUNet`` (an epsilon-predicting UNet for
DDPM / DDIM), ``InpaintingNetwork`` (fills a hole of a real image) and ``DCGANGenerator`` (the pretrained GAN).

Colour and contrast are not what a detector should learn: the networks that reconstruct an image carry its
per-image channel mean and standard deviation past their bottleneck (reversible instance normalisation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_STD = 0.01  # [0, 1] units: floor of the per-image standard deviation in the reversible normalisation


def activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    makers = {
        "relu": lambda: nn.ReLU(inplace=True),
        "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    if name not in makers:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(makers)}")
    return makers[name]()


def downsample(kind: str, cin: int, cout: int) -> nn.Module:
    """x1/2 in space."""
    if kind == "strided":
        return nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    if kind == "avgpool":
        return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "maxpool":
        return nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "unshuffle":
        return nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(cin * 4, cout, 1))
    raise ValueError(f"unknown downsampling {kind!r}")


def upsample(kind: str, cin: int, cout: int) -> nn.Module:
    """x2 in space: the mechanism that leaves a family's spectral fingerprint."""
    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    if kind == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 3, padding=1)
        )
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(f"unknown upsampling {kind!r}")


def channel_stats(x: torch.Tensor, floor: float = MIN_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: mean and standard deviation (floored)."""
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True).clamp_min(floor)


def restandardise(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``y`` with the given per-image channel mean and std, clamped to [0, 1]."""
    y_mean, y_std = channel_stats(y, floor=1e-6)
    return ((y - y_mean) / y_std * std + mean).clamp(0.0, 1.0)


class AutoEncoder(nn.Module):
    """Encoder (x1/2 per stage) -> linear bottleneck -> decoder (x2 per stage); I/O in [0, 1]."""

    def __init__(
        self,
        upsample_kind: str,
        downsample_kind: str,
        widths: tuple[int, ...],
        latent: int,
        activation_name: str,
        extra_convs: int = 0,
    ) -> None:
        super().__init__()
        chans = [*widths, latent]
        encoder: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1), activation(activation_name)]
        for i in range(len(widths)):
            encoder += [downsample(downsample_kind, chans[i], chans[i + 1]), activation(activation_name)]
        self.encoder = nn.Sequential(*encoder[:-1])
        decoder: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            decoder += [upsample(upsample_kind, chans[i + 1], chans[i]), activation(activation_name)]
            for _ in range(extra_convs):
                decoder += [nn.Conv2d(chans[i], chans[i], 3, padding=1), activation(activation_name)]
        decoder.append(nn.Conv2d(widths[0], 3, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)
        self.period = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = channel_stats(x)
        return restandardise(self.decoder(self.encoder((x - mean) / std)), mean, std)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, activation_name: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            activation(activation_name),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SuperResolutionGenerator(nn.Module):
    """A GAN generator: a 4x smaller image in, every pixel of the full-size image synthesised out.

    Stem -> residual blocks -> two x2 upsampling stages (``upsample_kind``) -> RGB. With ``progressive`` each
    stage has its own RGB head, as in ProGAN: ``forward(x, stage=1, alpha)`` gives the half-size output, and
    ``stage=2`` fades the second stage in over the nearest-upsampled first head while ``alpha`` < 1.
    """

    scale = 4

    def __init__(
        self, upsample_kind: str, width: int, blocks: int, activation_name: str, progressive: bool = False
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), activation(activation_name))
        self.blocks = nn.Sequential(*[ResidualBlock(width, activation_name) for _ in range(blocks)])
        self.up1 = nn.Sequential(
            upsample(upsample_kind, width, width),
            activation(activation_name),
            nn.Conv2d(width, width, 3, padding=1),
            activation(activation_name),
        )
        self.up2 = nn.Sequential(
            upsample(upsample_kind, width, width // 2),
            activation(activation_name),
            nn.Conv2d(width // 2, width // 2, 3, padding=1),
            activation(activation_name),
        )
        self.rgb2 = nn.Conv2d(width // 2, 3, 3, padding=1)
        self.rgb1 = nn.Conv2d(width, 3, 1) if progressive else None

    def forward(self, low: torch.Tensor, stage: int = 2, alpha: float = 1.0) -> torch.Tensor:
        mean, std = channel_stats(low)
        h = self.up1(self.blocks(self.stem((low - mean) / std)))
        if stage == 1:
            if self.rgb1 is None:
                raise ValueError("stage 1 needs a progressive generator")
            return restandardise(self.rgb1(h), mean, std)
        out = self.rgb2(self.up2(h))
        if self.rgb1 is not None and alpha < 1.0:
            out = alpha * out + (1.0 - alpha) * F.interpolate(self.rgb1(h), scale_factor=2, mode="nearest")
        return restandardise(out, mean, std)


class PatchDiscriminator(nn.Module):
    """A fully convolutional discriminator with spectral normalisation: a map of real/fake logits."""

    def __init__(self, width: int = 32, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        modules: list[nn.Module] = []
        cin = in_channels
        for i in range(layers):
            cout = width * 2**i
            modules += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        modules.append(sn(nn.Conv2d(cin, 1, 3, padding=1)))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)


class VariationalAutoEncoder(nn.Module):
    """A VAE with a spatial latent (x1/8): ``forward`` returns the decoded posterior sample, mu and log-variance.

    ``sample_scale`` multiplies the posterior's standard deviation when the benchmark generates (1 = the model's
    own posterior sample).
    """

    def __init__(self, widths: tuple[int, ...], latent: int, activation_name: str) -> None:
        super().__init__()
        encoder: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1), activation(activation_name)]
        chans = [widths[0], *widths]
        for i in range(len(widths)):
            encoder += [downsample("strided", chans[i], chans[i + 1]), activation(activation_name)]
        self.encoder = nn.Sequential(*encoder)
        self.to_moments = nn.Conv2d(widths[-1], 2 * latent, 1)
        decoder: list[nn.Module] = [nn.Conv2d(latent, widths[-1], 3, padding=1), activation(activation_name)]
        for i in reversed(range(len(widths))):
            decoder += [upsample("bilinear", chans[i + 1], chans[i]), activation(activation_name)]
        decoder.append(nn.Conv2d(widths[0], 3, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)
        self.period = 2 ** len(widths)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, sample_scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, std = channel_stats(x)
        mu, logvar = self.to_moments(self.encoder((x - mean) / std)).chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 4.0)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + sample_scale * noise * torch.exp(0.5 * logvar)
        return restandardise(self.decoder(z), mean, std), mu, logvar


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class DiffusionUNet(nn.Module):
    """An epsilon-predicting UNet (DDPM): residual blocks with a timestep embedding, x1/2 per level by strided
    convolution, x2 back by nearest + conv, skip connections. I/O in [-1, 1] (the noisy image, the noise)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96), tdim: int = 128) -> None:
        super().__init__()
        self.tdim = tdim
        self.time_mlp = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, w in enumerate(widths):
            self.down_blocks.append(TimeResBlock(widths[max(i - 1, 0)] if i else widths[0], w, tdim))
            self.downs.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid = TimeResBlock(widths[-1], widths[-1], tdim)
        self.up_blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in reversed(range(len(widths))):
            cout = widths[max(i - 1, 0)]
            self.up_blocks.append(TimeResBlock(widths[i] * 2, cout, tdim))
            self.ups.append(upsample("nearest", cout, cout) if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(8, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1))
        self.period = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.tdim))
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downs, strict=True):
            h = block(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb)
        for block, up in zip(self.up_blocks, self.ups, strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
            h = up(h)
        return self.out(h)


def coarse_fill(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill the unknown pixels (``known`` 0) from the known ones by push-pull: average the known pixels over a
    pyramid of x1/2 levels, then fill each level's holes from the level below, upsampled (bilinear)."""
    if min(image.shape[-2:]) <= 2 or bool(known.min() > 0):
        weight = known.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        mean = (image * known).sum(dim=(2, 3), keepdim=True) / weight
        return image * known + mean * (1.0 - known)
    pooled = F.avg_pool2d(image * known, 2, ceil_mode=True)
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    small = coarse_fill(pooled / weight.clamp_min(1e-6), (weight > 0).float())
    up = F.interpolate(small, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return image * known + up * (1.0 - known)


class InpaintingNetwork(nn.Module):
    """Fills the hole of an image, coarse to fine: a push-pull fill of the hole from its surroundings, refined by
    an encoder (x1/4) with dilated convolutions (a wide receptive field to reach across the hole) and a bilinear +
    conv decoder that predicts a correction. (image with the hole, mask) -> full image; the caller keeps the known
    pixels."""

    def __init__(self, width: int = 48, activation_name: str = "leaky_relu") -> None:
        super().__init__()
        act = activation_name
        self.encoder = nn.Sequential(
            nn.Conv2d(4, width, 5, padding=2),
            activation(act),
            downsample("strided", width, width * 2),
            activation(act),
            downsample("strided", width * 2, width * 2),
            activation(act),
        )
        self.middle = nn.Sequential(
            *[
                m
                for d in (2, 4, 8, 1)
                for m in (nn.Conv2d(width * 2, width * 2, 3, padding=d, dilation=d), activation(act))
            ]
        )
        self.decoder = nn.Sequential(
            upsample("bilinear", width * 2, width),
            activation(act),
            upsample("bilinear", width, width // 2),
            activation(act),
            nn.Conv2d(width // 2, 3, 3, padding=1),
        )
        self.period = 4

    def forward(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """``image`` in [0, 1], ``hole`` (N, 1, H, W) 1 where unknown: the network's full output in [0, 1]."""
        coarse = coarse_fill(image, 1.0 - hole)
        features = self.middle(self.encoder(torch.cat([coarse * 2.0 - 1.0, hole], 1)))
        return (coarse + torch.tanh(self.decoder(features))).clamp(0.0, 1.0)


class DCGANGenerator(nn.Module):
    """The DCGAN generator of the PyTorch tutorial (as in ``gan_face_generate.models.Generator``): z -> RGB in
    [-1, 1] through five transposed convolutions. Fully convolutional: a z of spatial size (5, 5) instead of
    (1, 1) gives a 128 x 128 image (a mosaic of faces) from the same weights."""

    def __init__(self, latent: int = 100, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for cin, cout, stride, pad in (
            (latent, w * 8, 1, 0),
            (w * 8, w * 4, 2, 1),
            (w * 4, w * 2, 2, 1),
            (w * 2, w, 2, 1),
        ):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @staticmethod
    def latent_side(image_size: int) -> int:
        """The spatial side of z that gives an image of about ``image_size`` (the output is 16 (s + 3))."""
        return max(1, math.ceil(image_size / 16) - 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)
