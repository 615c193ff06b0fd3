"""The contract's names: the served models and the tensors between them (``../DESIGN.md``'s contract).

Every stage spells them from here; the stand-alone client keeps its own copy of the wire names
(``client.detector_client``), checked against these by ``tests/test_contract.py``.
"""

from __future__ import annotations

# Models of the Triton ensemble.
ENSEMBLE = "deepfake_detector"  # what clients call
PREPROCESS = "preprocess"  # encoded bytes -> uint8 crop
FFT_STAGE = "fft_stage"  # the CuPy FFT stage (gpu-cupy target only)
VALIDATE = "validate"  # GPU decoding (--decode dali): checks the encoded bytes on the CPU, per request
DECODE = "decode"  # GPU decoding: encoded bytes -> uint8 crop, a DALI pipeline (nvJPEG)
DETECTOR = "detector"  # crop (or masked views) -> logit, probability, decision

# Tensors.
IMAGE_BYTES = "IMAGE_BYTES"  # the ensemble's input: one encoded image per row, BYTES
IMAGE = "IMAGE"  # preprocess (or decode) -> detector: uint8 (B, 3, H, W)
ENCODED = "ENCODED"  # validate -> decode: the checked bytes as uint8 (B, L), zero-padded to the longest
MASKED = "MASKED"  # fft_stage -> detector, and the input of an engine exported without the FFT stage
LOGIT = "LOGIT"
PROB_FAKE = "PROB_FAKE"
IS_FAKE = "IS_FAKE"
OUTPUTS = (LOGIT, PROB_FAKE, IS_FAKE)  # the detector's and the ensemble's outputs, in this order

# Every name above by its constant's name: the fields the repository's config templates fill in
# (``name: "${IMAGE_BYTES}"`` in ``triton_repo/configs/*.pbtxt``), so that no config spells a name itself.
BY_CONSTANT = {key: value for key, value in dict(globals()).items() if key.isupper() and isinstance(value, str)}
