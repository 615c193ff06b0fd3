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

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from fmdetect.core.jpeg import region_reader
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import IMAGE, IMAGE_BYTES
from fmdetect.core.preprocess import REJECTION_REASONS, ImageDecodeError, preprocess_image
from fmdetect.core.preprocess import limits_from_parameters as core_limits_from_parameters


def _parameters(model_config):
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def _positive_int(params, key, default):
    raw = params.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise pb_utils.TritonModelException(f"parameter {key} must be a positive integer, got {raw!r}")
    return value


def limits_from_parameters(params):
    """The ``DecodeLimits`` a config's parameters ask for; a bad value fails the model load with its reason."""
    try:
        return core_limits_from_parameters(params)
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"bad input limits in the config: {exc}") from None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.metadata = DetectorMetadata.load(version_dir)
        self.limits = limits_from_parameters(params)
        self.pool = ThreadPoolExecutor(max_workers=_positive_int(params, "decode_threads", 2))
        # Pillow warns about every odd EXIF tag or truncated metadata block it skips; hostile inputs would flood
        # the server log with them. The failures that matter reach the client as INVALID_ARG instead.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        self.logger = pb_utils.Logger
        # Triton's own counters cannot count rejections: the python backend records a request answered with an
        # error as a success of this model, and the ensemble's failure counter counts each failed request twice
        # (2.51). This counter is the one to alert on.
        self.rejected_family = pb_utils.MetricFamily(  # kept: its metrics die with it
            name="fmdetect_preprocess_rejected_requests_total",
            description="requests the preprocess stage rejected (INVALID_ARG), by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rejected = {reason: self.rejected_family.Metric(labels={"reason": reason}) for reason in REJECTION_REASONS}
        reader = region_reader()
        jpeg = f"centre regions read with {reader.path}" if reader is not None else "decoded whole (no libturbojpeg)"
        coverage = self.metadata.coverage
        self.logger.log_info(
            f"preprocess ready: input size {self.metadata.input_size}, {coverage.crops} window(s) "
            f"per image (top {coverage.top_k}), limits {self.limits}, JPEGs {jpeg}"
        )

    def _decode(self, request):
        payload = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy().reshape(-1)
        images = []
        for index, item in enumerate(payload):
            try:
                images.append(
                    preprocess_image(bytes(item), self.metadata.input_size, self.limits, self.metadata.coverage.crops)
                )
            except ImageDecodeError as exc:
                where = f"image {index} of {len(payload)}: " if len(payload) > 1 else ""
                raise ImageDecodeError(f"{where}{exc}", exc.reason) from None
        return np.stack(images)

    def execute(self, requests):
        futures = [self.pool.submit(self._decode, request) for request in requests]
        responses = []
        for future in futures:
            try:
                image = future.result()
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(IMAGE, image)]))
            except ImageDecodeError as exc:
                self.rejected[exc.reason].increment(1)
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                )
            except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the batch
                self.logger.log_error(f"preprocess failed: {exc!r}")
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"preprocessing failed: {exc}", pb_utils.TritonError.INTERNAL)
                    )
                )
        return responses

    def finalize(self):
        self.pool.shutdown(wait=True)
        self.rejected.clear()  # the metrics before their family
