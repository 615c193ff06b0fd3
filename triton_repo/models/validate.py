"""Triton python model ``validate`` (``--decode dali``): image bytes -> the same bytes as uint8, checked.

GPU decoding fails a whole batch when one image in it cannot be decoded, so every check that needs no pixel runs
here first, per request, on the CPU (``core.preprocess.check_image``: size, format, header, pixel limits, a
complete JPEG). A request that fails a check gets INVALID_ARG with the reason, as from ``preprocess``, and never
reaches the decoder; the others go on to ``decode``. Output ``ENCODED`` (N, L) uint8: the request's images, one per
row, zero-padded to the longest. Same limits parameters as ``preprocess`` (``triton_repo/README.md``).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from fmdetect.core.names import ENCODED, VALIDATE
from fmdetect.core.preprocess import check_image
from fmdetect.core.request_stage import RequestStage, each_image


def padded_rows(images):
    """The images as uint8 rows, zero-padded to the longest."""
    rows = np.zeros((len(images), max(len(data) for data in images)), dtype=np.uint8)
    for row, data in zip(rows, images):
        row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return rows


class TritonPythonModel:
    def initialize(self, args):
        self.stage = RequestStage(pb_utils, VALIDATE, args["model_config"])
        pb_utils.Logger.log_info(f"validate ready: limits {self.stage.limits}")

    def _check(self, data):
        check_image(data, self.stage.limits)
        return data

    def _checked(self, request):
        return padded_rows(each_image(self.stage.payload(request), self._check))

    def execute(self, requests):
        return self.stage.answer((lambda request=request: self._checked(request) for request in requests), ENCODED)

    def finalize(self):
        self.stage.close()
