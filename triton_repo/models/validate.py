"""Triton python model ``validate`` (``--decode dali``): image bytes -> the same bytes as uint8, checked.

GPU decoding fails a whole batch when one image in it cannot be decoded, so every check that needs no pixel runs
here first, per request, on the CPU (``core.preprocess.check_image``: size, format, header, pixel limits, a
complete JPEG). A request that fails a check gets INVALID_ARG with the reason, as from ``preprocess``, and never
reaches the decoder; the others go on to ``decode``. Output ``ENCODED`` (N, L) uint8: the request's images, one per
row, zero-padded to the longest. Same limits parameters as ``preprocess`` (``triton_repo/README.md``).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from fmdetect.core.names import ENCODED, IMAGE_BYTES
from fmdetect.core.preprocess import REJECTION_REASONS, ImageDecodeError, check_image
from fmdetect.core.preprocess import limits_from_parameters as core_limits_from_parameters


def _parameters(model_config):
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def limits_from_parameters(params):
    """The ``DecodeLimits`` a config's parameters ask for; a bad value fails the model load with its reason."""
    try:
        return core_limits_from_parameters(params)
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"bad input limits in the config: {exc}") from None


class TritonPythonModel:
    def initialize(self, args):
        self.limits = limits_from_parameters(_parameters(json.loads(args["model_config"])))
        self.rejected_family = pb_utils.MetricFamily(  # kept: its metrics die with it
            name="fmdetect_validate_rejected_requests_total",
            description="requests the validate stage rejected (INVALID_ARG), by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rejected = {reason: self.rejected_family.Metric(labels={"reason": reason}) for reason in REJECTION_REASONS}
        pb_utils.Logger.log_info(f"validate ready: limits {self.limits}")

    def _checked(self, request):
        payload = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy().reshape(-1)
        images = [bytes(item) for item in payload]
        for index, data in enumerate(images):
            try:
                check_image(data, self.limits)
            except ImageDecodeError as exc:
                where = f"image {index} of {len(images)}: " if len(images) > 1 else ""
                raise ImageDecodeError(f"{where}{exc}", exc.reason) from None
        rows = np.zeros((len(images), max(len(d) for d in images)), dtype=np.uint8)
        for row, data in zip(rows, images):
            row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return rows

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                rows = self._checked(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENCODED, rows)]))
            except ImageDecodeError as exc:
                self.rejected[exc.reason].increment(1)
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                )
            except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the batch
                pb_utils.Logger.log_error(f"validate failed: {exc!r}")
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"validation failed: {exc}", pb_utils.TritonError.INTERNAL)
                    )
                )
        return responses

    def finalize(self):
        self.rejected.clear()  # the metrics before their family
