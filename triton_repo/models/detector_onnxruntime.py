"""Triton python model ``detector`` for the CPU target: the exported ONNX graph run by ONNX Runtime.

All well-formed requests of a dynamic batch run in one ``session.run``; a request whose tensor has the wrong
shape fails alone with INVALID_ARG.

Before loading, the ONNX file is checked against the SHA-256 recorded beside it, ``<onnx_file>.sha256`` in
``sha256sum`` format (``<64 hex digits>  model.onnx``). On a mismatch the model refuses to load and says so in the
server log; the session is built from the very bytes that were hashed. A missing sidecar is an error when the
config parameter ``require_sha256`` is ``true``, a warning otherwise.
"""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from fmdetect.core.checksum import read_sidecar, sidecar_path
from fmdetect.core.names import IMAGE, OUTPUTS


def _flag(value):
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    if value.strip().lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def read_verified(path, required):
    """The bytes of ``path`` after checking them against ``path + '.sha256'``.

    Raises:
        pb_utils.TritonModelException: the digest does not match, the sidecar is malformed, or it is missing
            while ``required``.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    actual = hashlib.sha256(data).hexdigest()
    sidecar = str(sidecar_path(path))
    if not os.path.isfile(sidecar):
        message = f"no checksum file {sidecar}: cannot verify {path} (sha256 {actual})"
        if required:
            pb_utils.Logger.log_error(f"refusing to load: {message}")
            raise pb_utils.TritonModelException(f"refusing to load: {message}")
        pb_utils.Logger.log_warn(f"{message}; loading it unverified")
        return data
    try:
        expected = read_sidecar(path)
    except (OSError, ValueError) as exc:
        message = f"refusing to load {path}: {exc}"
        pb_utils.Logger.log_error(message)
        raise pb_utils.TritonModelException(message) from None
    if actual != expected:
        message = (
            f"refusing to load {path}: SHA-256 mismatch, file has {actual} but {os.path.basename(sidecar)} "
            f"records {expected} (corrupt or tampered artifact)"
        )
        pb_utils.Logger.log_error(message)
        raise pb_utils.TritonModelException(message)
    pb_utils.Logger.log_info(f"verified {path}: sha256 {actual}")
    return data


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        model_bytes = read_verified(path, _flag(params.get("require_sha256", "false")))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.image_shape = tuple(int(d) for d in shape[1:])
        self.input_name = self.session.get_inputs()[0].name
        pb_utils.Logger.log_info(
            f"detector ready: {path} (version {args['model_version']}), "
            f"input (B, {', '.join(map(str, self.image_shape))})"
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy()
            if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
                message = f"IMAGE must be uint8 (B, {self.image_shape}), got {images.dtype} {images.shape}"
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                )
                continue
            good.append(i)
            arrays.append(images)
        if good:
            sizes = [len(a) for a in arrays]
            try:
                outputs = self.session.run(list(OUTPUTS), {self.input_name: np.concatenate(arrays)})
            except Exception as exc:  # noqa: BLE001
                pb_utils.Logger.log_error(f"detector failed: {exc!r}")
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"inference failed: {exc}", pb_utils.TritonError.INTERNAL)
                    )
                return responses
            start = 0
            for i, size in zip(good, sizes):
                tensors = [pb_utils.Tensor(name, out[start : start + size]) for name, out in zip(OUTPUTS, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses
