"""The library's shape: stages in their own subpackages, no import cycles, the doors imported by nobody."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "SculptorGANLib"
DOORS = ("SculptorGANLib.cli", "SculptorGANLib.batch", "SculptorGANLib.slicer_worker", "SculptorGANLib.demo",
         "SculptorGANLib.__main__")
MAX_LINES = 450


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Library modules ``path`` imports (relative imports resolved; function-level imports included)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    modules = {_module(p) for p in LIB.rglob("*.py")}
    return {name for name in found if name in modules and name != module}


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in LIB.rglob("*.py")}


def _is_door(module: str) -> bool:
    return any(module == d or module.startswith(d + ".") for d in DOORS)


def test_no_import_cycles_between_modules():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph and (nxt == node.rpartition(".")[0]):
                continue  # a module importing its own package's __init__ is not a cycle of modules
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_nothing_outside_the_doors_imports_them():
    offenders = {m: sorted(i for i in deps if _is_door(i)) for m, deps in _graph().items() if not _is_door(m)}
    assert not {m: d for m, d in offenders.items() if d}


def test_stages_live_in_their_own_subpackages():
    for package in ("core", "io", "interpolate", "segment", "surfaces", "measure", "nn", "outputs", "synthetic"):
        assert (LIB / package / "__init__.py").is_file(), package
    top = {p.stem for p in LIB.glob("*.py")}
    assert top <= {"__init__", "__main__", "pipeline", "phantom", "slicer_worker", "demo"}, top


def test_no_python_file_over_the_size_limit():
    roots = [LIB, ROOT / "SculptorGAN", ROOT / "training", ROOT / "benchmarks"]
    long = {str(p.relative_to(ROOT)): n for r in roots for p in r.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
