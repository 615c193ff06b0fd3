"""What the python models that read ``IMAGE_BYTES`` share (``preprocess``, ``validate``): their config parameters,
their input limits, a rejection counter, and one answer per request, so that one bad request never fails the
requests batched with it.

Runs inside Triton's python backend stub: the caller hands over its ``triton_python_backend_utils`` module, which is
importable only there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import numpy as np

from fmdetect.core.names import IMAGE_BYTES
from fmdetect.core.preprocess import REJECTION_REASONS, ImageDecodeError, limits_from_parameters


def each_image(payload: np.ndarray, work: Callable[[bytes], object]) -> list:
    """``work`` on each image of one request; an :class:`ImageDecodeError` names the image ("image 2 of 8: ...")
    when the request holds more than one."""
    results = []
    for index, item in enumerate(payload):
        try:
            results.append(work(bytes(item)))
        except ImageDecodeError as exc:
            where = f"image {index} of {len(payload)}: " if len(payload) > 1 else ""
            raise ImageDecodeError(f"{where}{exc}", exc.reason) from None
    return results


class RequestStage:
    """One python model's request handling.

    Args:
        pb_utils: the ``triton_python_backend_utils`` module.
        stage: the model's name, in its metric (``fmdetect_<stage>_rejected_requests_total{reason}``) and logs.
        model_config: the ``model_config`` JSON Triton gives ``initialize``.

    Raises:
        pb_utils.TritonModelException: a bad limits parameter (the model does not load, with the reason).
    """

    def __init__(self, pb_utils, stage: str, model_config: str):
        self.pb_utils = pb_utils
        self.stage = stage
        config = json.loads(model_config)
        self.parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        try:
            self.limits = limits_from_parameters(self.parameters)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"bad input limits in the config: {exc}") from None
        # Triton's own counters cannot count rejections: the python backend records a request answered with an
        # error as a success of this model, and the ensemble's failure counter counts each failed request twice
        # (2.51). This counter is the one to alert on.
        self._family = pb_utils.MetricFamily(  # kept: its metrics die with it
            name=f"fmdetect_{stage}_rejected_requests_total",
            description=f"requests the {stage} stage rejected (INVALID_ARG), by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rejected = {reason: self._family.Metric(labels={"reason": reason}) for reason in REJECTION_REASONS}

    def positive_int(self, key: str, default: int) -> int:
        """An integer parameter >= 1; anything else fails the model load with its reason."""
        raw = self.parameters.get(key, str(default))
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise self.pb_utils.TritonModelException(f"parameter {key} must be a positive integer, got {raw!r}")
        return value

    def payload(self, request) -> np.ndarray:
        """The request's encoded images, one per element."""
        return self.pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy().reshape(-1)

    def answer(self, outcomes: Iterable[Callable[[], np.ndarray]], output: str) -> list:
        """One response per request, in order: each outcome gives the request's ``output`` array, or raises.

        An :class:`ImageDecodeError` answers INVALID_ARG with its message and counts its reason; any other error
        answers INTERNAL and is logged. Neither touches the other requests.
        """
        pb_utils = self.pb_utils
        responses = []
        for outcome in outcomes:
            try:
                tensor = pb_utils.Tensor(output, outcome())
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            except ImageDecodeError as exc:
                self.rejected[exc.reason].increment(1)
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the batch
                pb_utils.Logger.log_error(f"{self.stage} failed: {exc!r}")
                error = pb_utils.TritonError(f"{self.stage} failed: {exc}", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def close(self) -> None:
        """Drop the metrics before their family (the python backend requires that order)."""
        self.rejected.clear()
