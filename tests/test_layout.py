"""The floor plan of the package (docs/adding-a-method.md): no import cycles, small files,
method code inside its method's package, one lazy attribute (the top-level public API).

Imports are read with ``ast`` from every module, including imports inside functions (a
function-level import that hides a cycle is still a cycle); ``if TYPE_CHECKING:`` blocks
are left out. A module depends on the modules it names in ``import``/``from ... import``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import densessl
from densessl.methods.base import list_methods

PACKAGE = Path(densessl.__file__).resolve().parent
MAX_LINES = 420
MAX_TOP_LEVEL = 18


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_lazy_module_attributes_except_the_public_api():
    lazy = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
            lazy.append(name)
        assert "sys.modules[__name__].__class__" not in path.read_text(), name
    assert lazy == ["densessl"]


def test_small_files_and_few_top_level_entries():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
    entries = [p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= MAX_TOP_LEVEL, sorted(entries)


def test_method_code_lives_in_its_method_package():
    """Only a method's own package names it; everything else goes through the registry."""
    methods = list(list_methods())
    # The official DINO checkpoint *format* (key names, position resampling) is read for any
    # backbone, not only DINO runs: it belongs with the models. So do the released checkpoint
    # formats of the other papers (models/formats/: selfpatch.py, leopart.py, loca_flax.py, ...).
    formats = {
        PACKAGE / "models" / "dino_compat.py",
        *(PACKAGE / "models" / "formats").glob("*.py"),
    }
    outside = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.parent.parent != PACKAGE / "methods"
        and p not in formats
        and any(p.stem == m or p.stem.startswith(f"{m}_") for m in methods)
    ]
    assert outside == []
    for name, cls in list_methods().items():
        assert cls.__module__ == f"densessl.methods.{name}.method"
    for name, deps in _graph().items():
        own = name.split(".")[2] if name.startswith("densessl.methods.") else None
        named = {d.split(".")[2] for d in deps if d.startswith("densessl.methods.")}
        named -= {"base", "student_teacher", own, "dino"}
        assert named == set(), f"{name} imports the method packages {named}"
        if not name.startswith("densessl.methods"):
            assert not [d for d in deps if d.startswith("densessl.methods.dino")], name


def test_evaluation_and_ops_never_import_a_method():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(("densessl.evaluation", "densessl.ops", "densessl.models")):
            assert not [d for d in deps if d.startswith("densessl.methods")], name
