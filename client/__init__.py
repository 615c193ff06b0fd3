"""gRPC client (library and CLI) for the deepfake-image detector served by Triton; no torch needed."""

from fmdetect.client.detector_client import (
    AsyncDetectorClient,
    ClientConfig,
    DetectorClient,
    DetectorClientError,
    InferenceError,
    InvalidImageError,
    ModelNotReadyError,
    Prediction,
    RequestTimeoutError,
    ServerUnavailableError,
    error_from_triton,
)

__all__ = [
    "AsyncDetectorClient",
    "ClientConfig",
    "DetectorClient",
    "DetectorClientError",
    "InferenceError",
    "InvalidImageError",
    "ModelNotReadyError",
    "Prediction",
    "RequestTimeoutError",
    "ServerUnavailableError",
    "error_from_triton",
]
