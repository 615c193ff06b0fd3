"""Triton python model ``preprocess``: image bytes -> uint8 (3, H, W) at the checkpoint's input size.

Each request is decoded on a thread pool (Pillow releases the GIL while decoding), and each is answered on its
own: a corrupt, empty, oversized or unsupported image fails its request with INVALID_ARG and the reason, while
the requests batched with it succeed. The input size comes from ``metadata.json`` in the version folder.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from core.metadata import DetectorMetadata
from core.preprocess import DecodeLimits, ImageDecodeError, preprocess_image


def _parameters(model_config):
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.metadata = DetectorMetadata.load(version_dir)
        defaults = DecodeLimits()
        self.limits = DecodeLimits(
            max_bytes=int(params.get("max_bytes", defaults.max_bytes)),
            max_pixels=int(params.get("max_pixels", defaults.max_pixels)),
            formats=tuple(f.strip().upper() for f in params.get("formats", ",".join(defaults.formats)).split(",")),
        )
        self.pool = ThreadPoolExecutor(max_workers=int(params.get("decode_threads", "2")))
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"preprocess ready: input size {self.metadata.input_size}, limits {self.limits}"
        )

    def _decode(self, request):
        payload = pb_utils.get_input_tensor_by_name(request, "IMAGE_BYTES").as_numpy().reshape(-1)
        images = []
        for index, item in enumerate(payload):
            try:
                images.append(preprocess_image(bytes(item), self.metadata.input_size, self.limits))
            except ImageDecodeError as exc:
                where = f"image {index} of {len(payload)}: " if len(payload) > 1 else ""
                raise ImageDecodeError(f"{where}{exc}") from None
        return np.stack(images)

    def execute(self, requests):
        futures = [self.pool.submit(self._decode, request) for request in requests]
        responses = []
        for future in futures:
            try:
                image = future.result()
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("IMAGE", image)]))
            except ImageDecodeError as exc:
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
