"""The FFT stage on the GPU with CuPy (cuFFT, fp32), for the Triton python backend.

Same definition as ``core.fft.apply_fft_stage``. Tensors stay on the GPU: Triton's DLPack tensors go in through
``cupy.from_dlpack`` and come back out the same way. cuFFT runs half precision only for power-of-two sizes, so
the stage computes in fp32 whatever the engine's precision.
"""

from __future__ import annotations

from typing import Any


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes the ``fft_stage`` model computes at: the powers of two below ``max_batch_size``, and
    ``max_batch_size``. Each batch is zero-padded up to the next of them, so cuFFT plans exist for these few sizes
    only (one per size 1..64 would overflow CuPy's plan cache, 16 plans by default, and keep rebuilding them), and
    the model's warm-up builds every one before the first request."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    return tuple(
        sorted({1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size} | {max_batch_size})
    )


def bucket(batch: int, max_batch_size: int) -> int:
    """The smallest of :func:`batch_buckets` that holds ``batch``."""
    if not 1 <= batch <= max_batch_size:
        raise ValueError(f"batch {batch} is outside 1..{max_batch_size}")
    return next(size for size in batch_buckets(max_batch_size) if size >= batch)


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("the CuPy FFT stage needs cupy (e.g. cupy-cuda12x) and a CUDA GPU") from exc
    return cupy


class CupyFFTStage:
    """Holds the fixed masks on the GPU and applies ``Re(iFFT2(M * FFT2(x)))`` to batches."""

    def __init__(self, masks: Any | None, device_id: int = 0) -> None:
        cp = _cupy()
        self.cp = cp
        self.device = cp.cuda.Device(device_id)
        with self.device:
            self.masks = None if masks is None else cp.asarray(masks, dtype=cp.float32)

    def __call__(self, x: Any) -> Any:
        """``x``: float (B, C, H, W) cupy array or DLPack-capable tensor -> float32 (B, K, C, H, W) cupy array."""
        cp = self.cp
        with self.device:
            x = cp.from_dlpack(x) if not isinstance(x, cp.ndarray) else x
            x = x.astype(cp.float32, copy=False)
            if self.masks is None:
                return x[:, None]
            spectrum = cp.fft.fft2(x, norm="ortho")
            masked = spectrum[:, None] * self.masks[None]
            return cp.ascontiguousarray(cp.fft.ifft2(masked, norm="ortho").real.astype(cp.float32))
