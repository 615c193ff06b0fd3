"""Triton DALI model ``decode`` (``--decode dali``): encoded bytes -> uint8 (3, H, W), the centre window decoded
on the GPU (nvJPEG through DALI's mixed decoder), the same pixels as ``core.preprocess`` gives.

The DALI backend serializes this pipeline itself when the model loads (``autoserialize``), with the container's own
DALI, so no serialized pipeline has to match its version. The window is ``core.preprocess.center_crop_or_pad`` of
the upright image (EXIF orientation applied): from the header's size (``peek_image_shape``), the decoder reads only
the kept pixels (ROI decoding), then the shorter axes are zero-padded, centred as torchvision's ``CenterCrop``.
The input size comes from ``metadata.json`` beside this file. Only the centre window: a detector whose coverage
asks for more windows is served with the python ``preprocess``.

The bytes arrive checked by ``validate`` (format, limits, complete JPEG), one image per row, zero-padded to the
longest of their request: every decoder stops at its format's end marker, so the padding is never read.
"""

from __future__ import annotations

import json
import os

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.triton import autoserialize

from fmdetect.core.names import ENCODED  # the backend feeds the input of this name to the source of this name

MAX_BATCH_SIZE = 64  # the config's max_batch_size


def centre_window(encoded, height: int, width: int, device: str = "mixed"):
    """The DALI graph: a batch of encoded images -> their (3, height, width) uint8 centre windows, zero-padded.

    ``device``: ``mixed`` decodes on the GPU (the served model), ``cpu`` on the CPU (the same pixels for JPEG and
    PNG, which is how it is tested without a GPU).
    """
    window = np.array([height, width], dtype=np.int32)
    upright = fn.peek_image_shape(encoded, adjust_orientation=True, dtype=types.INT32)  # (H, W, C)
    excess = fn.slice(upright, 0, 2, axes=[0]) - types.Constant(window)  # per axis: extent - window
    longer = fn.cast(excess >= 0, dtype=types.INT32)
    half = excess // 2
    # round-half-to-even of excess / 2 where the image is longer (torchvision's CenterCrop, as core.preprocess)
    start = longer * (half + (excess - 2 * half) * (half - 2 * (half // 2)))
    kept = (1 - longer) * excess + types.Constant(window)  # min(extent, window)
    pad_before = (1 - longer) * ((0 - excess) // 2)
    pixels = fn.decoders.image_slice(
        encoded, start, kept, device=device, output_type=types.RGB, axis_names="HW", adjust_orientation=True
    )
    padded = fn.slice(pixels, 0 - pad_before, window, axis_names="HW", out_of_bounds_policy="pad", fill_values=0)
    return fn.transpose(padded, perm=[2, 0, 1])


def _input_size() -> tuple[int, int]:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.json")) as handle:
        height, width = json.load(handle)["input_size"]
    return int(height), int(width)


@autoserialize
@pipeline_def(batch_size=MAX_BATCH_SIZE, num_threads=4, device_id=0)
def decode_pipeline():
    """The served pipeline: ``ENCODED`` -> ``IMAGE`` (the config's output, by position)."""
    encoded = fn.external_source(device="cpu", name=ENCODED, dtype=types.UINT8, ndim=1)
    height, width = _input_size()
    return centre_window(encoded, height, width, device="mixed")
