"""ONNX -> TensorRT engine (TensorRT 10/11 Python API), with a metadata file to check before serving.

The network is strongly typed: precision comes from the ONNX graph (export with ``--precision fp16`` for an FP16
engine), never from the deprecated weakly typed ``BuilderFlag.FP16``. A plan only runs under the TensorRT version
that built it, on the GPU it was built for, so build it on the serving machine, e.g. inside NVIDIA's Triton
container whose TensorRT matches the server. ``model.plan`` gets ``model.engine.json`` beside it; the Triton
repository writer copies it along, and :func:`check_engine_compatible` compares it with the server's.

Example::

    python -m export engine --onnx model.onnx --out model.plan --opt-batch 16 --max-batch 64 \\
        --workspace 4 --timing-cache trt.cache
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from fmdetect.core.checksum import sha256_file
from fmdetect.core.engine import UNKNOWN, EngineMismatchError, check_engine_compatible  # noqa: F401 - re-exported
from fmdetect.core.names import IMAGE, MASKED, OUTPUTS

logger = logging.getLogger(__name__)

ENGINE_JSON_SUFFIX = ".engine.json"
METADATA_FORMAT = 1
BUILD_HINT = (
    "build the engine on a GPU machine with TensorRT, e.g. inside NVIDIA's Triton container whose "
    "TensorRT matches the server"
)


class TensorRTNotInstalledError(RuntimeError):
    """``import tensorrt`` failed; the message is one line."""


class EngineBuildError(RuntimeError):
    """The ONNX parser or the builder failed."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, imported on first use so that this module imports without it.

    Raises:
        TensorRTNotInstalledError: TensorRT (its Python bindings or libraries) cannot be imported.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TensorRTNotInstalledError(f"TensorRT is not installed here ({reason}); {BUILD_HINT}") from None
    return trt


@dataclass(frozen=True)
class EngineConfig:
    """What to build: the optimisation profile covers batch ``min_batch..max_batch`` of input ``IMAGE``."""

    onnx: Path
    out: Path
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64
    workspace_gib: float = 4.0
    timing_cache: Path | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if self.workspace_gib <= 0:
            raise ValueError(f"--workspace must be positive (GiB), got {self.workspace_gib}")

    @property
    def metadata_path(self) -> Path:
        """``model.plan`` -> ``model.engine.json``."""
        return engine_metadata_path(self.out)


def engine_metadata_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.stem + ENGINE_JSON_SUFFIX)


# The graph's single input: IMAGE uint8 (B, C, H, W), or MASKED float32 (B, K, C, H, W) for --fft-impl external.
INPUT_RANKS = {IMAGE: 4, MASKED: 5}


@dataclass(frozen=True)
class OnnxInputInfo:
    """What the builder needs from the ONNX file: the input, its static dims after the batch, and the precision and
    FFT form the exporter wrote."""

    name: str
    dims: tuple[int, ...]
    precision: str
    fft_impl: str

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.dims)


def read_onnx_input(path: str | Path) -> OnnxInputInfo:
    """The input (``IMAGE`` or ``MASKED``) with its static dims after the batch, and the ``precision`` /
    ``fft_impl`` metadata of an exported graph."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    model = onnx.load(str(path), load_external_data=False)
    inputs = {value.name: value for value in model.graph.input}
    if len(inputs) != 1 or not set(inputs) <= set(INPUT_RANKS):
        raise ValueError(f"{path} has no input {IMAGE} (or {MASKED} alone) (inputs: {', '.join(inputs) or 'none'})")
    (name,) = inputs
    dims = inputs[name].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(static) != INPUT_RANKS[name] or None in static[1:]:
        layout = "C, H, W" if name == IMAGE else "K, C, H, W"
        raise ValueError(
            f"{name} of {path} must be (batch, {layout}) with static {layout}, got "
            f"{[d.dim_param or d.dim_value for d in dims]}"
        )
    props = {prop.key: prop.value for prop in model.metadata_props}
    precision = props.get("precision", UNKNOWN)
    if precision == UNKNOWN:
        logger.warning("%s carries no 'precision' metadata: not exported by 'python -m export onnx'?", path)
    return OnnxInputInfo(name, tuple(static[1:]), precision, props.get("fft_impl", UNKNOWN))


@dataclass(frozen=True)
class GpuInfo:
    name: str = UNKNOWN
    compute_capability: str = UNKNOWN


def detect_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA device, from torch.cuda or cuda-python; ``unknown`` without them."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")
    except Exception as exc:  # noqa: BLE001 - detection is best effort
        logger.debug("torch.cuda device query failed: %s", exc)
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")
    except Exception as exc:  # noqa: BLE001
        logger.debug("cuda-python device query failed: %s", exc)
    return GpuInfo()


def _triton_max_batch() -> int | None:
    """``max_batch_size`` of the gpu-trt Triton config: the profile must reach it."""
    try:
        from fmdetect.triton_repo.layout import CONFIGS

        match = re.search(r"max_batch_size:\s*(\d+)", (CONFIGS / "detector.gpu-trt.pbtxt").read_text())
        return int(match.group(1)) if match else None
    except (ImportError, OSError):
        return None


@dataclass(frozen=True)
class EngineBuildResult:
    plan: Path
    metadata_path: Path
    metadata: dict[str, Any]


class EngineBuilder:
    """Strongly typed TensorRT build of an exported detector (after NVIDIA's ``samples/python`` builders).

    ``create_network`` parses the ONNX (logging every parser error before raising), ``create_config`` sets the
    explicit optimisation profile, the workspace limit and the timing cache, and ``build`` serialises the engine
    and writes the plan, the timing cache and ``model.engine.json``.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.trt = import_tensorrt()
        self.trt_logger = _forwarding_logger(self.trt, config.verbose)
        self.trt.init_libnvinfer_plugins(self.trt_logger, "")  # e.g. the FFT plugin behind DFT (TensorRT 11.2)
        self.builder = self.trt.Builder(self.trt_logger)
        self.network = None
        self.parser = None
        self.input_info: OnnxInputInfo | None = None

    def create_network(self) -> None:
        """Parse the ONNX file into a strongly typed network.

        Raises:
            EngineBuildError: the parser rejected the graph (each error is logged first).
        """
        trt, path = self.trt, self.config.onnx
        self.input_info = read_onnx_input(path)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.network = self.builder.create_network(flags)
        self.parser = trt.OnnxParser(self.network, self.trt_logger)
        if not self.parser.parse_from_file(str(path.resolve())):
            for i in range(self.parser.num_errors):
                logger.error("ONNX parser: %s", self.parser.get_error(i))
            raise EngineBuildError(
                f"TensorRT {trt.__version__} could not parse {path} "
                f"({self.parser.num_errors} parser errors logged above)"
            )
        names = [self.network.get_input(i).name for i in range(self.network.num_inputs)]
        if names != [self.input_info.name]:
            raise EngineBuildError(f"expected the single input {self.input_info.name}, the network has {names}")
        outputs = [self.network.get_output(i).name for i in range(self.network.num_outputs)]
        if sorted(outputs) != sorted(OUTPUTS):
            raise EngineBuildError(f"expected outputs {list(OUTPUTS)}, the network has {outputs}")
        logger.info(
            "parsed %s: %d layers, precision %s (strongly typed)",
            path,
            self.network.num_layers,
            self.input_info.precision,
        )
        if self.input_info.precision != "fp16":
            logger.info(
                "the engine keeps the graph's %s precision; export with --precision fp16 for an FP16 engine",
                self.input_info.precision,
            )

    def profile_shapes(self) -> dict[str, list[int]]:
        assert self.input_info is not None, "create_network first"
        c = self.config
        return {
            name: list(self.input_info.shape(batch))
            for name, batch in (("min", c.min_batch), ("opt", c.opt_batch), ("max", c.max_batch))
        }

    def create_config(self):  # -> trt.IBuilderConfig
        """Builder config: workspace limit, one explicit optimisation profile, timing cache."""
        trt, c = self.trt, self.config
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(c.workspace_gib * (1 << 30)))
        shapes = self.profile_shapes()
        profile = self.builder.create_optimization_profile()
        profile.set_shape(self.input_info.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        triton_max = _triton_max_batch()
        if triton_max is not None and c.max_batch < triton_max:
            logger.warning(
                "--max-batch %d is below the Triton config's max_batch_size %d: Triton will refuse "
                "the engine unless the config is lowered",
                c.max_batch,
                triton_max,
            )
        cache_bytes = b""
        if c.timing_cache is not None and c.timing_cache.is_file():
            cache_bytes = c.timing_cache.read_bytes()
            logger.info("timing cache: loaded %s (%d bytes)", c.timing_cache, len(cache_bytes))
        cache = config.create_timing_cache(cache_bytes)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            logger.warning("timing cache %s does not match this GPU/TensorRT: starting an empty one", c.timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return config

    def build(self) -> EngineBuildResult:
        """Build, then write the plan, the timing cache and ``model.engine.json``.

        Raises:
            EngineBuildError: ``build_serialized_network`` returned None.
        """
        trt, c = self.trt, self.config
        if self.network is None:
            self.create_network()
        config = self.create_config()
        logger.info(
            "building TensorRT %s engine for %s, batch %d/%d/%d (min/opt/max)",
            trt.__version__,
            self.input_info.name,
            c.min_batch,
            c.opt_batch,
            c.max_batch,
        )
        start = time.perf_counter()
        serialized = self.builder.build_serialized_network(self.network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise EngineBuildError(
                f"TensorRT {trt.__version__} failed to build an engine from {c.onnx} "
                "(see the TensorRT errors logged above)"
            )
        data = memoryview(serialized)
        c.out.parent.mkdir(parents=True, exist_ok=True)
        staging = c.out.with_name(c.out.name + ".writing")
        staging.write_bytes(data)
        staging.replace(c.out)
        if c.timing_cache is not None:
            c.timing_cache.parent.mkdir(parents=True, exist_ok=True)
            c.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
            logger.info("timing cache: saved %s", c.timing_cache)
        metadata = self._metadata(hashlib.sha256(data).hexdigest(), data.nbytes, seconds)
        c.metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
        logger.info(
            "wrote %s (%.1f MiB, built in %.1f s) and %s", c.out, data.nbytes / (1 << 20), seconds, c.metadata_path
        )
        return EngineBuildResult(c.out, c.metadata_path, metadata)

    def _metadata(self, plan_sha256: str, plan_bytes: int, seconds: float) -> dict[str, Any]:
        c, info = self.config, self.input_info
        return {
            "format": METADATA_FORMAT,
            "tensorrt_version": self.trt.__version__,
            "gpu": asdict(detect_gpu()),
            "precision": info.precision,
            "fft_impl": info.fft_impl,
            "strongly_typed": True,
            "input": info.name,
            "outputs": list(OUTPUTS),
            "profile": {info.name: self.profile_shapes()},
            "workspace_gib": c.workspace_gib,
            "onnx": {"file": c.onnx.name, "sha256": sha256_file(c.onnx)},
            "plan": {"file": c.out.name, "sha256": plan_sha256, "bytes": plan_bytes},
            "build_seconds": round(seconds, 3),
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }


def _forwarding_logger(trt: ModuleType, verbose: bool):
    """A ``trt.ILogger`` that forwards TensorRT's messages to ``logging`` (INFO shown only when verbose)."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO if verbose else logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }
    trt_log = logging.getLogger(__name__ + ".trt")

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev, msg: str) -> None:  # called by TensorRT; must not raise
            try:
                trt_log.log(levels.get(sev, logging.INFO), "%s", msg)
            except Exception:  # noqa: BLE001
                pass

    return ForwardingLogger()


def build_engine(config: EngineConfig) -> EngineBuildResult:
    """Build ``config.onnx`` into ``config.out`` (+ ``model.engine.json``); see :class:`EngineBuilder`."""
    builder = EngineBuilder(config)  # imports TensorRT first: without it, fail before doing anything else
    builder.create_network()
    return builder.build()


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--onnx", required=True, type=Path, help="exported ONNX graph (python -m export onnx)")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="engine plan to write, e.g. model.plan (model.engine.json is written beside it)",
    )
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch of the optimisation profile")
    parser.add_argument("--opt-batch", type=int, default=16, help="batch size TensorRT tunes kernels for")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="largest batch of the profile (>= max_batch_size of the Triton config)",
    )
    parser.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="timing cache file: loaded when it exists, saved after the build",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorRT's INFO messages")
    return parser


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        onnx=args.onnx,
        out=args.out,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        verbose=args.verbose,
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export engine", description=__doc__.splitlines()[0])
    return add_engine_args(parser)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = build_engine(engine_config_from_args(args))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.plan} and {result.metadata_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
