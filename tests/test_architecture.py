"""The import direction of ``docs/architecture.md``: every project import of every package, parsed from the AST
(also imports inside functions), is one the table allows, so no import circle can form between packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _allowed() -> dict[str, set[str]]:
    """package -> the packages it may import, read from the document's table."""
    allowed = {}
    for package, imports in re.findall(r"^\| `(\w+)/` \| [^|]+ \| ([^|]+) \|$", DOC.read_text(), re.M):
        allowed[package] = set(re.findall(r"`(\w+)`", imports))
        if imports.startswith("any package"):
            allowed[package] = {"*"}
    return allowed


def _modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    """The project packages ``path`` imports: ``fmdetect.core.x`` -> ``core``."""
    return {m.split(".")[1] for m in _modules(path) if m.startswith("fmdetect.")}


def test_project_imports_go_through_the_one_installed_name() -> None:
    """``from core.x import`` would load a second copy of ``fmdetect.core.x`` in a checkout and fail installed:
    every project import spells ``fmdetect.``."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"fmdetect", "tests"}
    files = [*ROOT.glob("*.py"), *(f for package in packages | {"tests"} for f in (ROOT / package).rglob("*.py"))]
    bare = [f"{f.relative_to(ROOT)}: {m}" for f in files for m in _modules(f) if m.split(".")[0] in packages]
    assert not bare, bare


def test_every_package_is_in_the_table() -> None:
    allowed = _allowed()
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert set(allowed) == packages, (sorted(allowed), sorted(packages))


def test_imports_point_only_where_the_table_allows() -> None:
    allowed = _allowed()
    wrong = []
    for package, may in allowed.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in _imports(path) & set(allowed) - {package}:
                if "*" not in may and target not in may:
                    wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_the_table_has_no_circle() -> None:
    allowed = {p: (set() if "*" in may else may) for p, may in _allowed().items()}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in allowed.get(start, ()))

    assert not [p for p in allowed if reaches(p, p)]


def _module_graph() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports (anywhere in it, ``TYPE_CHECKING`` blocks aside)."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "fmdetect"}
    files = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(("fmdetect", *parts)).removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        targets = set()
        tree = ast.parse(path.read_text(), str(path))
        for top in tree.body:
            if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test):
                continue
            for node in ast.walk(top):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    """Module by module, not only package by package: no import circle (e.g. the watchdog and the server, the
    masking profile and the training script)."""
    graph = _module_graph()
    assert "fmdetect.serving.watchdog" in graph and graph["fmdetect.serving.watchdog"]  # the graph is read
    state: dict[str, int] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
