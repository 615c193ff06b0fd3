"""Triton python model ``preprocess``: image bytes -> uint8 (3, H, W) at the checkpoint's input size.

Each request is decoded on a thread pool (Pillow releases the GIL while decoding), and each is answered on its
own: a corrupt, empty, oversized, too-many-pixels or unsupported image fails its request with INVALID_ARG and the
reason, while the requests batched with it succeed. Animated or multi-page images give their first frame; a broken
EXIF block is ignored. The input size comes from ``metadata.json`` in the version folder; the input limits come
from the config's parameters (see ``triton_repo/README.md``):

- ``max_bytes``: largest encoded image, bytes.
- ``max_pixels``: largest width x height, checked on the header before any pixel is decoded.
- ``max_jpeg_pixels_per_byte``: most pixels a JPEG header may claim per byte received (default 512).
- ``formats``: comma-separated Pillow formats; no other decoder ever sees the bytes.
- ``decode_threads``: decoding threads.
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from fmdetect.core.jpeg import region_reader
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import IMAGE, PREPROCESS
from fmdetect.core.preprocess import preprocess_image
from fmdetect.core.request_stage import RequestStage, each_image


class TritonPythonModel:
    def initialize(self, args):
        self.stage = RequestStage(pb_utils, PREPROCESS, args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.metadata = DetectorMetadata.load(version_dir)
        self.pool = ThreadPoolExecutor(max_workers=self.stage.positive_int("decode_threads", 2))
        # Pillow warns about every odd EXIF tag or truncated metadata block it skips; hostile inputs would flood
        # the server log with them. The failures that matter reach the client as INVALID_ARG instead.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        reader = region_reader()
        jpeg = f"centre regions read with {reader.path}" if reader is not None else "decoded whole (no libturbojpeg)"
        coverage = self.metadata.coverage
        pb_utils.Logger.log_info(
            f"preprocess ready: input size {self.metadata.input_size}, {coverage.crops} window(s) "
            f"per image (top {coverage.top_k}), limits {self.stage.limits}, JPEGs {jpeg}"
        )

    def _decode(self, request):
        size, limits, crops = self.metadata.input_size, self.stage.limits, self.metadata.coverage.crops
        return np.stack(
            each_image(self.stage.payload(request), lambda data: preprocess_image(data, size, limits, crops))
        )

    def execute(self, requests):
        futures = [self.pool.submit(self._decode, request) for request in requests]
        return self.stage.answer((future.result for future in futures), IMAGE)

    def finalize(self):
        self.pool.shutdown(wait=True)
        self.stage.close()
