"""Check an exported ONNX graph against TensorRT's supported-operator list for a TensorRT version, offline.

The lists live in ``export/data/trt_ops_<version>.txt`` (one operator per line; the header names the source: the
onnx-tensorrt ``docs/operators.md`` of the matching release). A requested version uses the newest list of the
same major version that is not newer than it; ops added in between are then reported as unsupported, never the
other way round.

Examples::

    python -m export trt-ops --onnx model.onnx --tensorrt-version 10.8     # exit 0: all supported
    python -m export trt-ops --onnx dft.onnx --tensorrt-version 10.8       # exit 1: DFT unsupported
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
LIST_PATTERN = re.compile(r"^trt_ops_(\d+(?:\.\d+)*)\.txt$")
DEFAULT_DOMAINS = ("", "ai.onnx")

Version = tuple[int, ...]


class ExitCode(IntEnum):
    SUPPORTED = 0
    UNSUPPORTED = 1
    NO_LIST = 2  # no list for the version (or no readable graph)


class UnknownTensorRTVersion(ValueError):
    """No shipped operator list applies to the requested TensorRT version."""

    def __init__(self, requested: str, available: list[str]) -> None:
        super().__init__(
            f"no TensorRT operator list for version {requested}; lists exist for: {', '.join(available)} "
            f"(a version uses the newest list of its major version not newer than it)"
        )
        self.requested = requested
        self.available = available


@dataclass(frozen=True)
class ConstantInputRule:
    """An input the operator table says must be a build-time constant (initializer or ``Constant`` output)."""

    ops: tuple[str, ...]
    index: int
    name: str
    since: Version  # first list version whose table states the restriction
    until: Version | None = None  # first list version that no longer states it


_REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
)

# Restrictions from the operator tables that an exported detector could trip on (all lists start at 10.0).
CONSTANT_INPUT_RULES = (
    ConstantInputRule(_REDUCE_OPS, 1, "axes", since=(10, 0)),  # "`axes` must be an initializer"
    ConstantInputRule(("Slice",), 3, "axes", since=(10, 0), until=(10, 14)),  # "`axes` must be an initializer"
    ConstantInputRule(("Squeeze", "Unsqueeze"), 1, "axes", since=(10, 0), until=(10, 14)),  # initializer/constant
)

# Notes printed when a graph uses the op (from the release notes / operator tables of the list's version).
OP_NOTES = {
    "DFT": "DFT is imported through TensorRT's cuFFT FFTPlugin (TensorRT >= 11.2: forward and inverse C2C, R2C and "
    "C2R); cuFFT computes half precision only for power-of-two lengths, so keep the DFT in FP32",
}

UNSUPPORTED_HINTS = {
    "DFT": "export with --fft-impl matmul (the DFT as MatMul, any TensorRT) or serve with TensorRT >= 11.2",
}


def parse_version(text: str) -> Version:
    """``"10.8"`` / ``"10.8.0.43"`` -> ``(10, 8)`` / ``(10, 8, 0, 43)``."""
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise ValueError(f"not a TensorRT version: {text!r} (expected e.g. 10.8 or 11.2)")
    return tuple(int(part) for part in text.strip().split("."))


def format_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


def available_lists(data_dir: Path = DATA_DIR) -> dict[Version, Path]:
    """Shipped operator lists by TensorRT version, oldest first."""
    found = {}
    for path in data_dir.glob("trt_ops_*.txt"):
        match = LIST_PATTERN.match(path.name)
        if match:
            found[parse_version(match.group(1))] = path
    return dict(sorted(found.items()))


def resolve_list(requested: str | Version, data_dir: Path = DATA_DIR) -> tuple[Version, Path]:
    """The newest list of the same major version that is not newer than ``requested``.

    Raises:
        UnknownTensorRTVersion: no such list.
    """
    wanted = parse_version(requested) if isinstance(requested, str) else tuple(requested)
    lists = available_lists(data_dir)
    candidates = [v for v in lists if v[0] == wanted[0] and v <= wanted]
    if not candidates:
        raise UnknownTensorRTVersion(format_version(wanted), [format_version(v) for v in lists])
    return candidates[-1], lists[candidates[-1]]


def read_op_list(path: Path) -> frozenset[str]:
    """Operator names of one list file (``#`` starts a comment)."""
    ops = set()
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            ops.add(name)
    return frozenset(ops)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def _walk(graph: onnx.GraphProto, functions: dict[tuple[str, str], onnx.FunctionProto], seen: set) -> list:
    """All nodes of ``graph``, its subgraphs (If/Loop/Scan bodies) and the bodies of model-local functions."""
    nodes = []
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in functions:  # a model-local function: the parser inlines its body
            if key not in seen:
                seen.add(key)
                body = onnx.GraphProto(node=functions[key].node)
                nodes.extend(_walk(body, functions, seen))
            continue
        nodes.append(node)
        for sub in _subgraphs(node):
            nodes.extend(_walk(sub, functions, seen))
    return nodes


def graph_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node TensorRT would import, recursively through subgraphs and local functions."""
    functions = {(f.domain, f.name): f for f in model.functions}
    return _walk(model.graph, functions, set())


def graph_ops(model: onnx.ModelProto) -> set[str]:
    """Operator types of the graph; ops outside the default ONNX domain come as ``domain::op_type``."""
    return {
        node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        for node in graph_nodes(model)
    }


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    for node in graph_nodes(model):
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            names.update(node.output)
        for sub in _subgraphs(node):
            names.update(init.name for init in sub.initializer)
    return names


def check_constraints(model: onnx.ModelProto, list_version: Version) -> list[str]:
    """Nodes breaking a per-op restriction stated in the operator table of ``list_version``."""
    constants = _constant_names(model)
    problems = []
    for rule in CONSTANT_INPUT_RULES:
        if list_version < rule.since or (rule.until is not None and list_version >= rule.until):
            continue
        for node in graph_nodes(model):
            if node.domain not in DEFAULT_DOMAINS or node.op_type not in rule.ops:
                continue
            if len(node.input) > rule.index and node.input[rule.index] and node.input[rule.index] not in constants:
                problems.append(
                    f"{node.op_type} node {node.name or '?'}: input '{rule.name}' must be an initializer or "
                    f"Constant for TensorRT {format_version(list_version)}"
                )
    return problems


@dataclass(frozen=True)
class OpsReport:
    """Result of checking one graph against one operator list."""

    requested: str
    used_version: str
    list_path: Path
    ops: list[str]
    unsupported: list[str]
    violations: list[str]

    @property
    def supported(self) -> bool:
        return not self.unsupported and not self.violations

    @property
    def notes(self) -> list[str]:
        return [OP_NOTES[op] for op in self.ops if op in OP_NOTES and op not in self.unsupported]


def analyse(onnx_path: str | Path, version: str) -> OpsReport:
    """Check every operator of ``onnx_path`` (and the per-op restrictions) against the list for ``version``.

    Raises:
        UnknownTensorRTVersion: no list applies to ``version``.
        FileNotFoundError: no such ONNX file.
    """
    used, list_path = resolve_list(version)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found")
    model = onnx.load(str(onnx_path), load_external_data=False)
    supported_ops = read_op_list(list_path)
    ops = sorted(graph_ops(model), key=str.lower)
    unsupported = [op for op in ops if op not in supported_ops]
    report = OpsReport(
        requested=version,
        used_version=format_version(used),
        list_path=list_path,
        ops=ops,
        unsupported=unsupported,
        violations=check_constraints(model, used),
    )
    logger.debug("%s against %s: %d ops, unsupported %s", onnx_path, list_path.name, len(ops), unsupported)
    return report


def check_onnx(onnx_path: str | Path, version: str) -> tuple[str, list[str], list[str]]:
    """Op-level check of an ONNX graph against TensorRT's supported-operator list.

    Returns:
        ``(used_version, ops, unsupported)``: the list version used, the sorted op types of the graph and those
        missing from the list.
    """
    report = analyse(onnx_path, version)
    return report.used_version, report.ops, report.unsupported


def add_trt_ops_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--onnx", required=True, type=Path, help="exported ONNX graph to check")
    parser.add_argument(
        "--tensorrt-version",
        required=True,
        help="TensorRT version of the server that will build/run the engine, e.g. 10.8 or 11.2",
    )
    return parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export trt-ops", description=__doc__.splitlines()[0])
    return add_trt_ops_args(parser)


def run_trt_ops(args: argparse.Namespace) -> int:
    """CLI body: print the verdict; exit 0 (all supported), 1 (unsupported ops) or 2 (no list for the version)."""
    try:
        report = analyse(args.onnx, args.tensorrt_version)
    except (ValueError, FileNotFoundError, DecodeError) as exc:  # unknown/bad version, missing or broken file
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.NO_LIST
    line = (
        f"TensorRT {report.requested}: checked against the TensorRT {report.used_version} operator list "
        f"({report.list_path.name})"
    )
    if parse_version(report.used_version)[:2] != parse_version(report.requested)[:2]:
        line += f"; no list for {report.requested}, so ops added after {report.used_version} count as unsupported"
    print(line)
    print(f"ops ({len(report.ops)}): {', '.join(report.ops)}")
    for note in report.notes:
        print(f"note: {note}")
    if report.supported:
        print("all supported")
        return ExitCode.SUPPORTED
    if report.unsupported:
        print(f"unsupported by TensorRT {report.used_version}: {', '.join(report.unsupported)}")
        for op in report.unsupported:
            if op in UNSUPPORTED_HINTS:
                print(f"hint: {op}: {UNSUPPORTED_HINTS[op]}")
    for violation in report.violations:
        print(f"restriction: {violation}")
    return ExitCode.UNSUPPORTED


def main(argv: list[str] | None = None) -> int:
    return int(run_trt_ops(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
