"""SHA-256 of artifacts, and the ``<artifact>.sha256`` sidecar written beside a served model and checked before it
loads (``sha256sum`` format: ``<hex digest>  <file name>``)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SIDECAR_SUFFIX = ".sha256"
_DIGEST = re.compile(r"^([0-9a-fA-F]{64})\b")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(artifact: str | Path) -> Path:
    return Path(str(artifact) + SIDECAR_SUFFIX)


def write_sidecar(artifact: str | Path) -> str:
    """Write ``<artifact>.sha256`` for the file as it is now; returns its digest."""
    digest = sha256_file(artifact)
    sidecar_path(artifact).write_text(f"{digest}  {Path(artifact).name}\n")
    return digest


def read_sidecar(artifact: str | Path) -> str:
    """The digest recorded in ``<artifact>.sha256``.

    Raises:
        FileNotFoundError: there is no sidecar.
        ValueError: it does not start with a SHA-256 hex digest.
    """
    match = _DIGEST.match(sidecar_path(artifact).read_text().strip())
    if match is None:
        raise ValueError(f"{sidecar_path(artifact)} does not start with a SHA-256 hex digest")
    return match.group(1).lower()
