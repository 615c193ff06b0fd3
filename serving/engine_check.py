"""Before tritonserver starts: every TensorRT plan of a model repository against this machine's TensorRT release and
GPUs (``core.engine.check_engine_compatible`` on each ``*.engine.json`` beside a plan). A plan that does not fit
fails here, with the reason and the fix, instead of failing the model load inside the server.

    python -m fmdetect.serving.engine_check /models && exec tritonserver --model-repository=/models ...

Needs no TensorRT Python module: the release is read from the container's ``libnvinfer.so.X.Y.Z``, the GPUs from
``nvidia-smi``. ``--tensorrt-version`` / ``--gpu`` give them where neither is available.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from fmdetect.core.engine import EngineMismatchError, check_engine_compatible

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib", "/usr/lib64")
_LIBNVINFER = re.compile(r"libnvinfer\.so\.(\d+\.\d+\.\d+)$")


def tensorrt_version() -> str:
    """The serving TensorRT release: the Python module's version, else the newest ``libnvinfer.so.X.Y.Z`` on the
    library path (``LD_LIBRARY_PATH``, then the system's directories)."""
    try:
        import tensorrt

        return tensorrt.__version__
    except ImportError:
        pass
    directories = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(LIBRARY_DIRS)
    for directory in directories:
        found = sorted(
            (tuple(int(x) for x in m[1].split(".")), m[1])
            for path in Path(directory).glob("libnvinfer.so.*")
            if (m := _LIBNVINFER.match(path.name))
        )
        if found:
            return found[-1][1]
    raise RuntimeError(
        f"no TensorRT found (no tensorrt module, no libnvinfer.so.X.Y.Z in {', '.join(directories)}): "
        "pass --tensorrt-version"
    )


def visible_gpus() -> list[tuple[str, str]]:
    """(name, compute capability) of each GPU this process sees, from ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is None:
        raise RuntimeError("nvidia-smi not found: pass --gpu NAME[,COMPUTE_CAPABILITY]")
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    gpus = [tuple(part.strip() for part in line.split(",", 1)) for line in out.splitlines() if line.strip()]
    if not gpus:
        raise RuntimeError("nvidia-smi lists no GPU")
    return [(g[0], g[1] if len(g) > 1 else "") for g in gpus]


def check_repository(repository: Path, runtime: str, gpus: list[tuple[str, str]]) -> list[str]:
    """Check every plan's metadata in ``repository`` against ``runtime`` and each of ``gpus``.

    Returns:
        One line per plan checked (none for a repository without TensorRT plans).

    Raises:
        EngineMismatchError: a plan that does not fit, named with its path.
    """
    checked = []
    for side in sorted(Path(repository).glob("*/*/*.engine.json")):
        for name, capability in gpus:
            try:
                metadata = check_engine_compatible(side, runtime, name, capability or None)
            except EngineMismatchError as exc:
                raise EngineMismatchError(f"{side.relative_to(repository)}: {exc}") from None
        built = metadata.get("gpu", {}).get("name", "?")
        checked.append(f"{side.relative_to(repository)}: TensorRT {metadata.get('tensorrt_version')}, GPU {built}")
    return checked


def _gpu(value: str) -> tuple[str, str]:
    name, _, capability = value.partition(",")
    return name.strip(), capability.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("repository", type=Path, help="the Triton model repository to check")
    parser.add_argument("--tensorrt-version", default=None, help="the serving TensorRT (default: found here)")
    parser.add_argument(
        "--gpu", type=_gpu, action="append", default=None, help="NAME[,COMPUTE_CAPABILITY] (default: nvidia-smi)"
    )
    args = parser.parse_args(argv)
    if not args.repository.is_dir():
        print(f"engine check: {args.repository} is not a directory", file=sys.stderr)
        return 2
    for plan in sorted(args.repository.glob("*/*/*.plan")):
        if not plan.with_name(plan.stem + ".engine.json").is_file():
            print(
                f"engine check: {plan.relative_to(args.repository)} has no {plan.stem}.engine.json (built with "
                "trtexec?): cannot check it; tritonserver will refuse it if it does not fit",
                file=sys.stderr,
            )
    if not any(args.repository.glob("*/*/*.engine.json")):
        print(f"engine check: no TensorRT plan metadata in {args.repository}: nothing to check")
        return 0
    try:
        runtime = args.tensorrt_version or tensorrt_version()
        gpus = args.gpu or visible_gpus()
        for line in check_repository(args.repository, runtime, gpus):
            print(f"engine check: {line}: fits TensorRT {runtime} on {', '.join(name for name, _ in gpus)}")
    except (EngineMismatchError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"engine check failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
