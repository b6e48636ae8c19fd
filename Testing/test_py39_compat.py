"""Slicer 5.8 runs the module and the worker in Python 3.9: no 3.10+ syntax or API anywhere in them.

``python3.9 -m py_compile`` (run by .ci/run) catches 3.10+ *syntax*; this test catches what compiles
on 3.9 but fails when it runs there — read from the AST, so it runs on any Python: ``X | Y`` of types
outside annotations, ``zip(strict=)``, ``dataclass(slots=/kw_only=)`` and library names added after 3.9.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
#: What Slicer 5.8's Python runs: the module, its helpers and the library (the worker's code).
FILES = sorted(p for folder in ("SculptorGAN", "SculptorGANLib") for p in (REPO / folder).rglob("*.py"))
TYPE_NAMES = {"None", "int", "float", "str", "bool", "bytes", "list", "dict", "tuple", "set", "object", "type"}
#: (module, attribute) pairs that do not exist in Python 3.9.
NEW_API = {("itertools", "pairwise"), ("typing", "TypeAlias"), ("typing", "ParamSpec"), ("typing", "Concatenate"),
           ("typing", "TypeGuard"), ("typing", "Self"), ("typing", "Never"), ("typing", "LiteralString"),
           ("typing", "assert_never"), ("typing", "reveal_type"), ("types", "NoneType"), ("types", "UnionType"),
           ("types", "EllipsisType"), ("sys", "stdlib_module_names"), ("datetime", "UTC"), ("enum", "StrEnum"),
           ("contextlib", "chdir"), ("contextlib", "aclosing"), ("asyncio", "timeout"), ("asyncio", "TaskGroup"),
           ("inspect", "get_annotations"), ("dataclasses", "KW_ONLY"), ("math", "cbrt"), ("math", "exp2")}
NEW_MODULES = {"tomllib"}
NEW_BUILTINS = {"aiter", "anext", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}


def _annotation_nodes(tree: ast.AST) -> set:
    """ids of every node inside an annotation (those are strings under ``from __future__ import annotations``)."""
    inside = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                   args.vararg, args.kwarg] if a is not None and a.annotation]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for annotation in annotations:
            if annotation is not None:
                inside |= {id(n) for n in ast.walk(annotation)}
    return inside


def _is_type_operand(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name) and node.id in TYPE_NAMES:
        return True
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and (
        _is_type_operand(node.left) or _is_type_operand(node.right))


def problems(path: pathlib.Path) -> list:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    in_annotation = _annotation_nodes(tree) if future else set()
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Match if hasattr(ast, "Match") else ()):
            found.append(f"{where}: match statement")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in in_annotation and (
                _is_type_operand(node.left) or _is_type_operand(node.right)):
            found.append(f"{where}: 'X | Y' of types evaluated at run time")
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            keywords = {k.arg for k in node.keywords}
            if name == "zip" and "strict" in keywords:
                found.append(f"{where}: zip(strict=)")
            if name == "dataclass" and keywords & {"slots", "kw_only", "match_args"}:
                found.append(f"{where}: dataclass({', '.join(sorted(keywords & {'slots', 'kw_only', 'match_args'}))}=)")
            if name in ("bisect", "bisect_left", "bisect_right", "insort") and "key" in keywords:
                found.append(f"{where}: bisect key=")
            if name in NEW_BUILTINS and isinstance(node.func, ast.Name):
                found.append(f"{where}: {name}()")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                node.value.id, node.attr) in NEW_API:
            found.append(f"{where}: {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module and any(
                (node.module, a.name) in NEW_API for a in node.names):
            found.append(f"{where}: from {node.module} import (3.10+ names)")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in NEW_MODULES for n in names):
                found.append(f"{where}: module new in 3.11")
        if isinstance(node, ast.With) and len(node.items) > 1 and source.splitlines()[node.lineno - 1].rstrip(
                ).endswith("with ("):
            found.append(f"{where}: parenthesized context managers")
    if not future:
        for node in ast.walk(tree):
            for annotation in ([node.annotation] if isinstance(node, ast.AnnAssign) else
                               [node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []):
                if annotation is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                                  for n in ast.walk(annotation)):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: 'X | Y' annotation without "
                                 "'from __future__ import annotations'")
    return found


def test_files_found():
    assert any(p.name == "SculptorGAN.py" for p in FILES) and any(p.name == "slicer_worker.py" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_python310_constructs(path):
    assert not problems(path), "\n".join(problems(path))


def test_the_check_finds_each_construct(tmp_path, monkeypatch):
    """The scan is not vacuous: each construct in a sample file is reported."""
    sample = REPO / "SculptorGANLib" / "_py39_sample_does_not_exist.py"
    code = ("from __future__ import annotations\nimport itertools\nfrom dataclasses import dataclass\n"
            "def f(x: int | None) -> str | None:\n    return isinstance(x, int | None)\n"
            "@dataclass(slots=True)\nclass A:\n    a: int | None = None\n"
            "list(zip([1], [2], strict=True))\nitertools.pairwise([1, 2])\nimport tomllib\n")
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, encoding=None: code)
    found = problems(sample)
    assert len(found) == 5, found
    assert not any(":4:" in f for f in found)  # annotations are strings under the __future__ import
