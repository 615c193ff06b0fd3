"""Reading only part of a JPEG: lossless, MCU-aligned crops with libjpeg-turbo (``tjTransform``).

A lossless crop entropy-decodes the coefficients but skips the inverse DCT, colour conversion and upsampling of
everything outside the region, which is most of the cost of a full decode for a photo-sized JPEG when the
detector needs a 128 px window. Decoding the cropped JPEG gives the same pixels as decoding the whole image and
cutting the region out, once the region is widened by one MCU on each side (chroma upsampling looks at its
neighbours) and its origin is moved down to an MCU boundary (a lossless crop must start on one).

The binding is PyTurboJPEG 1.8 over the TurboJPEG 2 API; the library is Debian's ``libturbojpeg0``, which
``python -m core.jpeg install`` (part of ``make setup``) unpacks next to the virtual environment. Where either is
missing, ``region_reader()`` is None and callers decode the whole image with Pillow.

Example::

    python -m core.jpeg install        # once; prints the library path
    python -m core.jpeg                # which library the decoder uses, or why none
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_PACKAGE = "libturbojpeg0"
LIBRARY_NAME = "libturbojpeg.so.0"
LIBRARY_DIR = Path(sys.prefix) / "lib" / "turbojpeg"
LIBRARY_ENV = "FMDETECT_TURBOJPEG"  # an explicit path to libturbojpeg.so.0 wins over the others


def install(directory: Path = LIBRARY_DIR) -> Path:
    """Unpack Debian's libturbojpeg0 into ``directory`` (once) with ``apt-get download``; no root needed.

    Raises:
        RuntimeError: apt-get or dpkg-deb is missing, or the package has no library.
    """
    target = directory / LIBRARY_NAME
    if target.is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"apt-get and dpkg-deb are needed to fetch {DEBIAN_PACKAGE}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True, capture_output=True)
        found = sorted(Path(tmp, "root").rglob("libturbojpeg.so.0*"), key=lambda p: len(p.name))
        real = next((p for p in found if p.is_file() and not p.is_symlink()), None)
        if real is None:
            raise RuntimeError(f"{deb.name} holds no {LIBRARY_NAME}")
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real, target)
    logger.info("libturbojpeg installed at %s", target)
    return target


def library_path() -> Path | None:
    """The libturbojpeg this process loads: $FMDETECT_TURBOJPEG, the installed copy, or the system's."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        return Path(explicit)
    if (LIBRARY_DIR / LIBRARY_NAME).is_file():
        return LIBRARY_DIR / LIBRARY_NAME
    system = ctypes.util.find_library("turbojpeg")
    return Path(system) if system else None


@dataclass(frozen=True)
class Region:
    """A lossless crop of a JPEG and where the wanted box sits inside it (pixels, source orientation)."""

    jpeg: bytes
    offset_x: int
    offset_y: int


class RegionReader:
    """Lossless MCU-aligned crops of JPEG bytes; one instance per process (the handle is made per call)."""

    def __init__(self, path: Path) -> None:
        from turbojpeg import TurboJPEG

        class _Strict(TurboJPEG):
            # libjpeg-turbo reports a truncated or corrupt stream as a warning and returns a crop anyway; a region
            # read must then give up so that the full decode reports the error exactly as it always did.
            def _TurboJPEG__report_error(self, handle):  # noqa: N802 - overrides the binding's private hook
                raise OSError(self._TurboJPEG__get_error_string(handle))

        self.path = path
        self._turbo = _Strict(str(path))

    def header(self, data: bytes) -> tuple[int, int, int, int]:
        """(width, height, MCU width, MCU height) from the JPEG header."""
        from turbojpeg import tjMCUHeight, tjMCUWidth

        width, height, subsample, _ = self._turbo.decode_header(data)
        if not 0 <= subsample < len(tjMCUWidth):
            raise OSError(f"unknown chroma subsampling {subsample}")
        return width, height, tjMCUWidth[subsample], tjMCUHeight[subsample]

    def read(self, data: bytes, boxes: list[tuple[int, int, int, int]]) -> list[Region]:
        """One lossless crop per ``(left, top, right, bottom)`` box, each widened by an MCU of context, in one pass
        over the coefficients.

        Raises:
            OSError: the data is not a JPEG libjpeg-turbo reads cleanly (any warning counts).
        """
        width, height, mcu_w, mcu_h = self.header(data)
        crops, offsets = [], []
        for left, top, right, bottom in boxes:
            x0 = max(0, left - mcu_w) // mcu_w * mcu_w
            y0 = max(0, top - mcu_h) // mcu_h * mcu_h
            x1, y1 = min(width, right + mcu_w), min(height, bottom + mcu_h)
            crops.append((x0, y0, x1 - x0, y1 - y0))
            offsets.append((left - x0, top - y0))
        jpegs = self._turbo.crop_multiple(data, crops, copynone=True)  # markers (EXIF, ICC) are not needed
        return [Region(j, dx, dy) for j, (dx, dy) in zip(jpegs, offsets)]


@functools.cache
def region_reader() -> RegionReader | None:
    """The process's region reader, or None (logged once) when PyTurboJPEG or libturbojpeg is missing."""
    path = library_path()
    if path is None:
        logger.warning("libturbojpeg not found (run 'python -m core.jpeg install'): JPEGs are decoded whole")
        return None
    try:
        return RegionReader(path)
    except (ImportError, OSError, AttributeError) as exc:
        logger.warning("libturbojpeg at %s unusable (%s): JPEGs are decoded whole", path, exc)
        return None


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args == ["install"]:
        print(install())
        return 0
    if args:
        print("usage: python -m core.jpeg [install]", file=sys.stderr)
        return 2
    reader = region_reader()
    print(reader.path if reader is not None else "no libturbojpeg: JPEGs are decoded whole")
    return 0 if reader is not None else 1


if __name__ == "__main__":
    sys.exit(main())
