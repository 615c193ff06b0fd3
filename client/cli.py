"""Command line: classify image files and directories with the detector served by Triton.

Example::

    python -m client classify photos/ extra/suspect.png --url 127.0.0.1:8001 --json --concurrency 32

Directories are walked recursively for image files (by extension, case-insensitive); files named explicitly are
sent whatever their extension. One line per image on stdout: readable text, or with ``--json`` one JSON object
(``{"path", "prob_fake", "is_fake"}`` or ``{"path", "error"}``). Exit status: 0 when every image was classified,
1 when any failed (including missing or unreadable paths), 2 when the server cannot be reached or the model is
not ready (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TextIO

from fmdetect.client.detector_client import (
    ClientConfig,
    DetectorClient,
    DetectorClientError,
    InferenceError,
    InvalidImageError,
    ModelNotReadyError,
    Prediction,
    RequestTimeoutError,
    ServerUnavailableError,
)

PROG = "python -m client"
# The client installs without core: its own copy of core.preprocess.IMAGE_SUFFIXES (tests/test_contract.py checks).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_ERROR_PREFIXES: tuple[tuple[type[DetectorClientError], str], ...] = (
    (InvalidImageError, "invalid image"),
    (ModelNotReadyError, "model not ready"),
    (ServerUnavailableError, "server unavailable"),
    (RequestTimeoutError, "timed out"),
    (InferenceError, "inference failed"),
)


class ExitCode(IntEnum):
    """The CLI's exit statuses."""

    OK = 0
    SOME_FAILED = 1
    UNAVAILABLE = 2


@dataclass(frozen=True)
class InputFile:
    """One path to classify; ``error`` is set when it is known up front that it cannot be."""

    path: str
    error: str | None = None


def is_image_file(name: str) -> bool:
    """True when the file name has one of the image extensions (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(directory: str) -> Iterator[str]:
    """Image files under ``directory``, recursively, in a stable (sorted) order."""
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if is_image_file(name):
                yield os.path.join(root, name)


def collect_inputs(paths: Sequence[str]) -> list[InputFile]:
    """Expand the command line's paths: directories into their image files, everything else as given.

    A missing path stays in the list (reading it reports the error); a directory without image files becomes an
    error entry.
    """
    inputs: list[InputFile] = []
    for path in paths:
        if os.path.isdir(path):
            found = [InputFile(file) for file in iter_image_files(path)]
            inputs.extend(found or [InputFile(path, "no image files found in this directory")])
        else:
            inputs.append(InputFile(path))
    return inputs


def read_input(item: InputFile) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    if item.error is not None:
        return item.error
    try:
        with open(item.path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"


def describe_error(error: DetectorClientError) -> str:
    """One line saying what went wrong with one image."""
    message = " ".join(error.message.split())
    for cls, prefix in _ERROR_PREFIXES:
        if isinstance(error, cls):
            return f"{prefix}: {message}"
    return message


def format_result(path: str, outcome: Prediction | str, as_json: bool, served: dict[str, object] | None = None) -> str:
    """One output line for one image; ``outcome`` is its prediction or the reason it failed. ``served``: which
    detector answered (model, detector_sha256, threshold), added to every JSON row so a score can be traced."""
    if as_json:
        if isinstance(outcome, Prediction):
            record: dict[str, object] = {
                "path": path,
                "prob_fake": outcome.prob_fake,
                "is_fake": outcome.is_fake,
                "logit": outcome.logit,
                **(served or {}),
            }
        else:
            record = {"path": path, "error": outcome, **(served or {})}
        return json.dumps(record, ensure_ascii=False)
    if isinstance(outcome, Prediction):
        return f"{path}\t{outcome.prob_fake:.4f}\t{'FAKE' if outcome.is_fake else 'REAL'}"
    return f"{path}\tERROR\t{outcome}"


def _chunks(items: Sequence[InputFile], size: int) -> Iterator[Sequence[InputFile]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def served_fields(detector: DetectorClient) -> dict[str, object]:
    """The JSON rows' record of the detector that answers: model name, served artifact hash, threshold."""
    try:
        served = detector.served_detector()
    except DetectorClientError as exc:
        logging.getLogger(__name__).warning("cannot read the served detector's identity: %s", exc.message)
        served = {}
    threshold = served.get("threshold")
    return {
        "model": detector.config.model_name,
        "detector_sha256": served.get("detector_sha256"),
        "threshold": float(threshold) if threshold else None,
    }


def classify_inputs(detector: DetectorClient, inputs: Sequence[InputFile], as_json: bool, out: TextIO) -> int:
    """Classify ``inputs`` in bounded chunks (so memory stays flat), writing one line each; returns failures."""
    failures = 0
    served = served_fields(detector) if as_json else None
    chunk_size = max(64, 4 * detector.config.max_in_flight * detector.config.batch_size)
    for chunk in _chunks(inputs, chunk_size):
        payloads = [read_input(item) for item in chunk]
        to_send = [payload for payload in payloads if isinstance(payload, bytes)]
        answers = iter(detector.classify_many(to_send))
        for item, payload in zip(chunk, payloads):
            outcome: Prediction | str
            if isinstance(payload, bytes):
                answer = next(answers)
                outcome = answer if isinstance(answer, Prediction) else describe_error(answer)
            else:
                outcome = payload
            failures += not isinstance(outcome, Prediction)
            out.write(format_result(item.path, outcome, as_json, served) + "\n")
        out.flush()
    return failures


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m client`` argument parser."""
    defaults = ClientConfig()
    # `fmdetect-client` once installed; `python -m client` (or `-m fmdetect.client`) from a checkout.
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = invoked if invoked and invoked != "__main__.py" else PROG
    parser = argparse.ArgumentParser(prog=prog, description="Client of the deepfake-image detector served by Triton.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classify = commands.add_parser(
        "classify",
        help="classify image files and directories",
        description="Classify images: one line per image on stdout. Exit status 0: all classified; "
        "1: some failed; 2: server unreachable or model not ready.",
    )
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image files, or directories to walk recursively")
    classify.add_argument(
        "--url",
        default=defaults.url,
        help="gRPC endpoint: HOST, HOST:PORT or grpc://HOST:PORT; port 8001 unless given (default: %(default)s)",
    )
    classify.add_argument("--model", default=defaults.model_name, help="served model name (default: %(default)s)")
    classify.add_argument(
        "--timeout",
        type=_positive_float,
        default=defaults.timeout_s,
        metavar="S",
        help="limit of each request, seconds (default: %(default)s)",
    )
    classify.add_argument(
        "--wait",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the server and model to become ready (default: check once)",
    )
    classify.add_argument(
        "--concurrency",
        type=_positive_int,
        default=defaults.max_in_flight,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    classify.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.batch_size,
        metavar="N",
        help="images per request, at most 64; a request holding a bad image is retried image by image "
        "(default: %(default)s)",
    )
    classify.add_argument(
        "--retries",
        type=_non_negative_int,
        default=defaults.retries,
        metavar="N",
        help="retries of a request the server answers UNAVAILABLE (default: %(default)s)",
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    classify.add_argument("--ssl", action="store_true", help="use a TLS channel (implied by the certificate options)")
    classify.add_argument("--root-certificates", metavar="FILE", help="PEM root certificates (with --ssl)")
    classify.add_argument("--private-key", metavar="FILE", help="PEM client private key, for mutual TLS")
    classify.add_argument("--certificate-chain", metavar="FILE", help="PEM client certificate chain, for mutual TLS")
    classify.add_argument("--verbose", action="store_true", help="log retries and progress on stderr")
    return parser


def _config_from_args(args: argparse.Namespace) -> ClientConfig:
    tls_files = (args.root_certificates, args.private_key, args.certificate_chain)
    return ClientConfig(
        url=args.url,
        model_name=args.model,
        timeout_s=args.timeout,
        retries=args.retries,
        max_in_flight=args.concurrency,
        batch_size=args.batch_size,
        ssl=args.ssl or any(path is not None for path in tls_files),
        root_certificates=args.root_certificates,
        private_key=args.private_key,
        certificate_chain=args.certificate_chain,
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    return int(ExitCode.UNAVAILABLE)


def run_classify(args: argparse.Namespace) -> int:
    """The ``classify`` command; returns the exit status."""
    try:
        config = _config_from_args(args)
    except ValueError as exc:
        return _fail(str(exc))
    inputs = collect_inputs(args.paths)
    try:
        detector = DetectorClient(config)
    except OSError as exc:
        return _fail(f"cannot read a TLS file: {exc}")
    with detector:
        try:
            detector.wait_until_ready(timeout_s=args.wait)
        except DetectorClientError as exc:  # unreachable, not ready, or a health probe failing otherwise
            return _fail(exc.message)
        failures = classify_inputs(detector, inputs, args.json, sys.stdout)
    if failures:
        logging.getLogger(__name__).info("%d of %d images failed", failures, len(inputs))
    return int(ExitCode.SOME_FAILED if failures else ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; returns the exit status."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run_classify(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # stdout closed early (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.SOME_FAILED)
