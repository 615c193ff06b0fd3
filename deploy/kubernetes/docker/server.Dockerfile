# NVIDIA's Triton 24.10 (server 2.51, TensorRT 10.5, Python 3.10) plus what the repository's python models import:
# the project's framework-light core package, numpy<2 (the python backend stub crashes on BYTES under numpy 2),
# pillow, libturbojpeg + PyTurboJPEG (crop-first JPEG decoding), and onnxruntime for the cpu target's detector.
# Build from the repository root:
#   docker build -f deploy/kubernetes/docker/server.Dockerfile \
#     -t registry.example.com/fmdetect/tritonserver:24.10-py3-fmdetect-0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY pyproject.toml /src/pyproject.toml
COPY core /src/core
RUN apt-get update && apt-get install -y --no-install-recommends libturbojpeg && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "numpy==1.26.4" "pillow==13.0.0" "pyturbojpeg==1.8.3" "onnxruntime==1.32.0" \
    && pip install --no-cache-dir --no-deps /src \
    && rm -rf /src \
    && python3 -c "import core.preprocess, core.jpeg, numpy, PIL, onnxruntime; assert core.jpeg.region_reader(); assert numpy.__version__ < '2'"
