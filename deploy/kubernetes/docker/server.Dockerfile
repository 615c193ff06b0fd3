# NVIDIA's Triton 24.10 (server 2.51, TensorRT 10.5, Python 3.10) plus what the repository's python models import:
# the project's framework-light core package, numpy<2 (the python backend stub crashes on BYTES under numpy 2),
# pillow, libturbojpeg + PyTurboJPEG (crop-first JPEG decoding), and onnxruntime for the cpu target's detector.
# Every pin has a build for the container's Python 3.10 (the pipeline's own pins in pyproject.toml are for 3.11;
# tests/test_container_pins.py resolves these for cp310 against the registry).
# Build from the repository root:
#   docker build -f deploy/kubernetes/docker/server.Dockerfile \
#     -t registry.example.com/fmdetect/tritonserver:24.10-py3-fmdetect-0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# fmdetect.core without installing the rest: fmdetect/__init__.py reaches core/ beside it (as in a checkout).
COPY fmdetect/__init__.py /opt/fmdetect/fmdetect/__init__.py
COPY core /opt/fmdetect/core
# serving/engine_check.py: the GPU overlay's check of the TensorRT plans before tritonserver starts (core only).
COPY serving/__init__.py serving/engine_check.py /opt/fmdetect/serving/
ENV PYTHONPATH=/opt/fmdetect
RUN apt-get update && apt-get install -y --no-install-recommends libturbojpeg && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "numpy==1.26.4" "pillow==12.3.0" "pyturbojpeg==1.8.3" "onnxruntime==1.23.2" \
    && python3 -c "import fmdetect.core.preprocess, fmdetect.serving.engine_check, fmdetect.core.jpeg as jpeg, numpy, PIL, onnxruntime; assert jpeg.region_reader(); assert numpy.__version__ < '2'"
