"""Triton python model ``fft_stage`` for the gpu-cupy target: uint8 images -> normalised, masked views, on the GPU.

``IMAGE`` uint8 (B, 3, H, W) -> ``x * scale + shift`` (the checkpoint's mean/std, as ``Detector.normalise``) ->
``core.fft_cupy.CupyFFTStage`` (cuFFT in fp32: cuFFT does half precision only for power-of-two sizes) ->
``MASKED`` (B, K, 3, H, W), float32 (or float16 when the output config says ``TYPE_FP16``), K = max(masks, 1).
The detector that follows is a TensorRT engine exported with ``--fft-impl external``.

Tensors stay on the GPU: with ``FORCE_CPU_ONLY_INPUT_TENSORS`` = "no" an input that is already on the GPU arrives
there and is read through DLPack; a CPU input (``preprocess`` runs on the CPU) is copied over once. The output
leaves through ``pb_utils.Tensor.from_dlpack`` on the GPU (the python backend copies it device to device into
Triton's buffer; it never passes through host memory). A batch is computed at the next size of
``core.fft_cupy.batch_buckets`` (zero-padded), the sizes the config's warm-up plans. The masks and input size
come from ``metadata.json`` in the version folder.

All well-formed requests of a dynamic batch run as one batch; a request with the wrong dtype or shape fails alone
with INVALID_ARG.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from fmdetect.core.fft import inference_masks
from fmdetect.core.fft_cupy import CupyFFTStage, bucket
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import IMAGE as INPUT
from fmdetect.core.names import MASKED as OUTPUT


class MaskedViews:
    """The stage's math, without Triton: uint8 (B, 3 * crops, H, W) GPU array -> (B, crops * K, 3, H, W) GPU array,
    window-major (``export.onnx_export.masked_views`` is its numpy reference)."""

    def __init__(
        self, metadata: DetectorMetadata, device_id: int = 0, out_dtype: str = "float32", max_batch_size: int = 64
    ) -> None:
        height, width = metadata.input_size
        self.max_batch_size = max_batch_size
        self.stage = CupyFFTStage(inference_masks(metadata.fft_stage, height, width), device_id)
        cp = self.cp = self.stage.cp
        with self.stage.device:
            std = cp.asarray(metadata.std, dtype=cp.float32).reshape(1, 3, 1, 1)
            mean = cp.asarray(metadata.mean, dtype=cp.float32).reshape(1, 3, 1, 1)
            # (x / 255 - mean) / std == x * scale + shift, as in training.model.Detector.normalise
            self.scale = (1.0 / (255.0 * std)).astype(cp.float32)
            self.shift = (-mean / std).astype(cp.float32)
        self.shape = (metadata.coverage.channels, height, width)
        self.views = metadata.coverage.crops * metadata.fft_stage.views
        self.out_dtype = np.dtype(out_dtype)

    def __call__(self, images):
        cp = self.cp
        with self.stage.device:
            batch, _, height, width = images.shape
            padded = bucket(batch, self.max_batch_size)  # a size the warm-up planned (core.fft_cupy.batch_buckets)
            if padded > batch:
                images = cp.concatenate([images, cp.zeros((padded - batch, *images.shape[1:]), dtype=images.dtype)])
            x = images.reshape(-1, 3, height, width).astype(cp.float32) * self.scale + self.shift
            out = self.stage(x).reshape(padded, -1, 3, height, width)[:batch]
            if out.dtype != self.out_dtype:
                out = out.astype(self.out_dtype)
            return cp.ascontiguousarray(out)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if args.get("model_instance_kind", "GPU") != "GPU":
            raise ValueError(
                f"fft_stage runs CuPy on a GPU: set instance_group kind KIND_GPU "
                f"(got {args.get('model_instance_kind')})"
            )
        device_id = int(args.get("model_instance_device_id", 0))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.metadata = DetectorMetadata.load(version_dir)
        output = pb_utils.get_output_config_by_name(config, OUTPUT)
        out_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        self.math = MaskedViews(self.metadata, device_id, out_dtype, int(config["max_batch_size"]))
        self.cp = self.math.cp
        pb_utils.Logger.log_info(
            f"fft_stage ready on GPU {device_id}: IMAGE uint8 (B, {', '.join(map(str, self.math.shape))}) -> "
            f"{OUTPUT} {self.math.out_dtype.name} (B, {self.math.views}, 3, {', '.join(map(str, self.math.shape[1:]))})"
        )

    def _input(self, request):
        """The request's IMAGE as a GPU array (read in place when it is on the GPU)."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        with self.math.stage.device:
            images = self.cp.asarray(tensor.as_numpy()) if tensor.is_cpu() else self.cp.from_dlpack(tensor)
        if images.dtype != self.cp.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.math.shape:
            raise ValueError(
                f"{INPUT} must be uint8 (B, {', '.join(map(str, self.math.shape))}), got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        return images

    def execute(self, requests):
        cp = self.cp
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            try:
                arrays.append(self._input(request))
                good.append(i)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                )
        if not good:
            return responses
        try:
            with self.math.stage.device:
                batch = arrays[0] if len(arrays) == 1 else cp.concatenate(arrays)
                masked = self.math(batch)
        except Exception as exc:  # noqa: BLE001 - answer every request instead of failing the model
            pb_utils.Logger.log_error(f"fft_stage failed: {exc!r}")
            for i in good:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"fft stage failed: {exc}", pb_utils.TritonError.INTERNAL)
                )
            return responses
        start = 0
        for i, images in zip(good, arrays):
            end = start + len(images)
            # from_dlpack calls the array's __dlpack__ with Triton's stream and synchronises (no race); the backend then
            # copies it device to device into the response.
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack(OUTPUT, masked[start:end])]
            )
            start = end
        return responses
