"""Triton python model ``detector`` for the CPU target: the exported ONNX graph run by ONNX Runtime.

All well-formed requests of a dynamic batch run in one ``session.run``; a request whose tensor has the wrong
shape fails alone with INVALID_ARG.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

OUTPUTS = ("LOGIT", "PROB_FAKE", "IS_FAKE")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.image_shape = tuple(int(d) for d in shape[1:])
        self.input_name = self.session.get_inputs()[0].name
        pb_utils.Logger.log_info(f"detector ready: {path}, input (B, {', '.join(map(str, self.image_shape))})")

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
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
