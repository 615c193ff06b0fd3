"""The FFT stage in torch: ``Re(iFFT2(M * FFT2(x)))``, ortho-scaled, in two interchangeable implementations.

- ``FFTForm.DFT``: ``torch.fft``. Used for training; the ONNX exporter turns it into the ONNX ``DFT`` op
  (ONNX Runtime CPU, TensorRT >= 11.2).
- ``FFTForm.MATMUL``: the 2-D DFT as real matrix products with constant, ortho-scaled cos/sin matrices. Exports
  to plain ``MatMul`` nodes that every TensorRT version takes, and stays inside FP16 range.

Both follow ``core.fft.apply_fft_stage`` (the numpy reference) to 1e-4 in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from fmdetect.core.fft import FFTForm, dft_matrices
from fmdetect.core.metadata import views_for


def masked_fft_torch(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """torch.fft implementation; ``masks`` broadcasts against ``x`` (..., C, H, W), e.g. one mask per sample
    in training, or ``x[:, None]`` against K fixed masks ``masks[None]`` at inference. Computed in fp32."""
    spectrum = torch.fft.fft2(x.float(), norm="ortho")
    return torch.fft.ifft2(spectrum * masks.float(), norm="ortho").real.to(x.dtype)


class MatmulDFT(nn.Module):
    """2-D DFT masking as real matrix products; matrices are non-persistent buffers rebuilt from the size."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        cos_h, sin_h = dft_matrices(height)
        cos_w, sin_w = dft_matrices(width)
        for name, value in (("cos_h", cos_h), ("sin_h", sin_h), ("cos_w", cos_w), ("sin_w", sin_w)):
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)

    def forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W); ``masks``: (K, C|1, H, W) -> (B, K, C, H, W)."""
        ch, sh, cw, sw = self.cos_h, self.sin_h, self.cos_w, self.sin_w
        a = torch.matmul(x, cw)
        b = torch.matmul(x, sw)
        real = torch.matmul(ch, a) - torch.matmul(sh, b)
        imag = torch.matmul(ch, b) + torch.matmul(sh, a)
        m = masks[None].to(x.dtype)
        real = real[:, None] * m
        imag = imag[:, None] * m
        p_real = torch.matmul(ch, real) + torch.matmul(sh, imag)
        p_imag = torch.matmul(ch, imag) - torch.matmul(sh, real)
        return torch.matmul(p_real, cw) + torch.matmul(p_imag, sw)


class FFTStage(nn.Module):
    """Inference FFT stage with K fixed masks (or none). Output is flattened to (B*K, C, H, W)."""

    def __init__(self, masks: torch.Tensor | None, height: int, width: int, impl: FFTForm | str = FFTForm.DFT):
        super().__init__()
        self.impl = FFTForm(impl)
        if self.impl is FFTForm.EXTERNAL:
            raise ValueError("a PyTorch FFT stage computes dft or matmul; external is the CuPy stage's")
        self.num_masks = 0 if masks is None else int(masks.shape[0])
        self.register_buffer("masks", masks if masks is not None else torch.zeros(0), persistent=False)
        self.matmul = MatmulDFT(height, width) if self.impl is FFTForm.MATMUL and masks is not None else None

    @property
    def views(self) -> int:
        """Number of masked views per image (1 when the stage is skipped)."""
        return views_for(self.num_masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_masks == 0:
            return x
        if self.matmul is not None:
            y = self.matmul(x, self.masks)
        else:
            y = masked_fft_torch(x[:, None], self.masks[None])
        return y.reshape(-1, *x.shape[1:])
