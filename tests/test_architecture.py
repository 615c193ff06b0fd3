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


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_is_in_the_table() -> None:
    allowed = _allowed()
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
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
