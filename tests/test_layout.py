"""The shape of the package (issue 12): no import cycle between its parts, no plotting backend chosen on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import emdlib

PACKAGE = Path(emdlib.__file__).resolve().parent


def part(module: str) -> str:
    """``emdlib.data.forge`` → ``data``; ``emdlib.train`` → ``train``."""
    return module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    """Which part of emdlib imports which, counting imports inside functions too (they hide cycles otherwise)."""
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    graph: dict[str, set[str]] = {p: set() for p in parts}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("emdlib.") and part(name) in parts and part(name) != src:
                    graph[src].add(part(name))
    return graph


def test_no_import_cycle_between_the_parts_of_emdlib():
    graph = import_graph()
    assert {"data", "models", "baselines", "study", "figures", "registry", "train"} <= set(graph)
    # depth-first search for a cycle; report it as a path
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    # the layers the issue asks for: models and baselines below the registry, the study above them, figures above
    # the study, and nothing below reaches up
    assert "registry" not in graph["models"] | graph["baselines"] and "baselines" not in graph["models"]
    assert not graph["data"] & {"models", "baselines", "study", "figures", "train"}
    assert not graph["study"] & {"figures", "tables", "report", "stats"}


def test_importing_emdlib_chooses_no_plotting_backend():
    code = ("import importlib, pkgutil, sys, matplotlib, emdlib\n"
            "for m in pkgutil.walk_packages(emdlib.__path__, 'emdlib.'): importlib.import_module(m.name)\n"
            "assert matplotlib.rcParams._get_backend_or_none() is None, matplotlib.get_backend()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
