# A model repository as an image, copied into each pod by the Deployment's init container. One tag per target
# and model version (the repository and its configs are the deployable unit). Build from the repository root:
#   python -m export repo --checkpoint CKPT --target cpu --out artifacts/repository/cpu
#   docker build -f deploy/kubernetes/docker/repository.Dockerfile --build-arg REPOSITORY=artifacts/repository/cpu \
#     -t registry.example.com/fmdetect/model-repository:cpu-0.1.0 .
# For gpu-trt, build the engine inside nvcr.io/nvidia/tritonserver:24.10-py3 (or the TensorRT 24.10 container) on
# the GPU model that will serve it: a TensorRT engine loads only with the TensorRT version and GPU it was built for.
FROM busybox:1.36
ARG REPOSITORY
COPY ${REPOSITORY} /repository
