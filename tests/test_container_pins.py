"""The Triton container's pip lines install on its Python 3.10: every pinned package has a build for it.

NVIDIA's tritonserver 24.10 runs Python 3.10 on Ubuntu 22.04 (glibc 2.35, x86_64). The server image
(``deploy/kubernetes/docker/server.Dockerfile``) and the ``docker run`` lines of ``triton_repo/GPU.md`` pin
packages for it; a pin with no cp310 build stops the container at its first line. Each pin is looked up in the
package index (its PEP 691 JSON page, the index pip uses here): a wheel whose tags that interpreter accepts, or,
for the pure-Python packages named below, a source archive whose ``Requires-Python`` admits 3.10.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "kubernetes" / "docker" / "server.Dockerfile"
GPU_GUIDE = REPO / "triton_repo" / "GPU.md"
INDEX = "https://pypi.org/simple"
CONTAINER_PYTHON = "3.10"
# glibc 2.35 (Ubuntu 22.04): every manylinux tag up to 2_35, and the legacy aliases.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + [
    "manylinux2014_x86_64",
    "linux_x86_64",
]
# Pure Python, published as a source archive only: pip builds it anywhere.
SOURCE_ONLY = {"pyturbojpeg"}
# Installed from NVIDIA's index, at the container's own TensorRT release (GPU.md says how to check it); not on
# the public index, so not checked here.
NOT_ON_THE_INDEX = {"tensorrt-cu12"}
PIN = re.compile(r'"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^"\s]*)"')


def container_pins() -> dict[str, set[str]]:
    """Every ``"name==version"`` in a pip line of the server image or of a docker line of the GPU guide."""
    pins: dict[str, set[str]] = {}
    for path in (DOCKERFILE, GPU_GUIDE):
        for line in path.read_text().splitlines():
            if "pip install" not in line and not line.strip().startswith('"'):
                continue
            for name, version in PIN.findall(line):
                pins.setdefault(canonicalize_name(name), set()).add(version)
    return pins


def accepted_tags() -> set[Tag]:
    version = tuple(int(p) for p in CONTAINER_PYTHON.split("."))
    return set(cpython_tags(version, platforms=PLATFORMS)) | set(compatible_tags(version, platforms=PLATFORMS))


def release_files(name: str, version: str) -> list[dict]:
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wanted = Version(version)
    out = []
    for f in files:
        filename = f["filename"]
        try:
            if filename.endswith(".whl"):
                _, file_version, _, _ = parse_wheel_filename(filename)
            elif filename.endswith((".tar.gz", ".zip")):
                _, file_version = parse_sdist_filename(filename)
            else:
                continue
        except ValueError:
            continue
        if file_version == wanted:
            out.append(f)
    return out


def installable(name: str, version: str, tags: set[Tag]) -> tuple[bool, str]:
    """Whether pip on the container's Python finds a distribution of ``name==version``, and what it saw."""
    files = release_files(name, version)
    if not files:
        return False, f"{name}=={version}: no such release on the index"
    python = Version(CONTAINER_PYTHON + ".0")
    for f in files:
        requires = f.get("requires-python")
        if requires and python not in SpecifierSet(requires):
            continue
        filename = f["filename"]
        if filename.endswith(".whl"):
            if tags & set(parse_wheel_filename(filename)[3]):
                return True, filename
        elif name in SOURCE_ONLY:
            return True, filename
    seen = sorted(f"{f['filename']} (Requires-Python {f.get('requires-python')})" for f in files)[:6]
    return False, f"{name}=={version}: nothing for cp310 manylinux x86_64 among {seen}"


def test_the_pip_lines_are_found():
    pins = container_pins()
    # The pins the image and the guide are known to need; a refactor that drops them would pass vacuously.
    for name in ("numpy", "pillow", "onnxruntime", "pyturbojpeg", "cupy-cuda12x", "onnx"):
        assert name in pins, f"no pin of {name} found in {DOCKERFILE.name} or {GPU_GUIDE.name}"
    assert all(len(versions) == 1 for versions in pins.values()), f"one version per package: {pins}"


@pytest.mark.parametrize("name", sorted(set(container_pins()) - NOT_ON_THE_INDEX))
def test_every_container_pin_has_a_build_for_python_310(name):
    tags = accepted_tags()
    for version in container_pins()[name]:
        ok, detail = installable(name, version, tags)
        assert ok, detail


def test_a_pin_without_a_python_310_build_is_refused():
    """The check can fail: pillow 13.0.0 (Requires-Python >= 3.11) has nothing for the container."""
    ok, detail = installable("pillow", "13.0.0", accepted_tags())
    assert not ok and "pillow==13.0.0" in detail


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_requires_python_is_true_for_the_client_install():
    """``requires-python`` admits 3.10: the base install (the client) has a cp310 build of each dependency at the
    versions the light-client test installs today."""
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    assert Version("3.10") in SpecifierSet(project["requires-python"])
    tags = accepted_tags()
    known_good = {"numpy": "1.26.4", "tritonclient": "2.73.0"}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        version = known_good[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (line, version)
        ok, detail = installable(canonicalize_name(requirement.name), version, tags)
        assert ok, detail


def test_full_pins_without_a_python_310_build_are_named_in_pyproject():
    """The ``full`` extra needs 3.11; pyproject.toml names each pin that has no 3.10 build, so the claim stays
    true as pins move."""
    from packaging.requirements import Requirement

    text = (REPO / "pyproject.toml").read_text()
    tags = accepted_tags()
    missing = []
    for line in _pyproject()["project"]["optional-dependencies"]["full"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        ok, _ = installable(name, str(requirement.specifier).removeprefix("=="), tags)
        if not ok:
            missing.append(name)
    assert missing, "every full pin has a 3.10 build: requires-python could say so"
    for name in missing:
        assert name in text.split("[project.optional-dependencies]")[1].split("full = [")[0], name
