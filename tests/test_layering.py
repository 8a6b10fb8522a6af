"""The house rules of the code base, checked on the source: floors, no import cycles, a Ray-free library.

Floors (an arrow may only point down): ``vlm3r_core`` < ``datagen`` < ``jobs`` / ``serve_apps``.
Every import counts, also the ones inside functions (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm3r_core", "datagen", "serve_apps", "jobs")
FLOOR = {"vlm3r_core": 0, "datagen": 1, "serve_apps": 2, "jobs": 2}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (module level or inside functions)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # the longest known prefix: a module, not a name in it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _imports(name, path, set(modules)):
            # A package's __init__ re-exporting its own modules is not an arrow between rooms.
            if not (path.name == "__init__.py" and target.startswith(name + ".")):
                graph.add_edge(name, target)
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    cycles = [sorted(c) for c in nx.strongly_connected_components(_graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_only_point_down_the_floors():
    upward = [
        (a, b)
        for a, b in _graph().edges
        if FLOOR[a.split(".")[0]] < FLOOR[b.split(".")[0]]
        or {a.split(".")[0], b.split(".")[0]} == {"jobs", "serve_apps"}
    ]
    assert not upward, f"imports pointing up a floor: {upward}"


def test_the_library_never_imports_ray():
    offenders = []
    for name, path in _modules().items():
        if name.split(".")[0] not in ("vlm3r_core", "datagen"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            offenders += [(name, n) for n in names if n == "ray" or n.startswith("ray.")]
    assert not offenders, f"library modules importing Ray: {offenders}"


@pytest.mark.parametrize(
    "package", ["vlm3r_core", "datagen", "serve_apps", "serve_apps.openai_protocol", "serve_apps.args", "serve_apps.admission"]
)
def test_importing_a_library_package_loads_no_ray(package):
    code = f"import sys, {package}; assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))[:5]"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
