"""The package's import rules, read from the source with ``ast`` (nothing is imported).

1. Only the command line (``neoxcli/commands/`` and ``neoxcli/cli.py``) imports
   ``neoxcli.commands``: the library never depends on its command-line front end.
2. No two modules import each other, directly or around a loop.

The graph has one arrow per import statement that runs: module level and
inside functions (lazy imports count; they run when the function does), but
not under ``if TYPE_CHECKING:``. ``from pkg import name`` points at ``pkg`` and,
when ``name`` is a submodule, at ``pkg.name`` too. Importing ``a.b.c`` also
runs ``a/b/__init__.py``; those implied arrows are left out, since a module
that imports a sibling by its full name would otherwise loop through its own
package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neoxcli"

# Known exceptions, each being removed by work in progress elsewhere. When that work lands, the
# test fails until the entry is deleted here, so a fixed problem cannot silently come back.
KNOWN_CYCLES: list[set[str]] = []
KNOWN_COMMAND_IMPORTS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (any depth), skipping ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the neoxcli modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name]  # every module is a node, importing or not
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            graph[name].update(t for t in targets if t in modules and t != name)
    return dict(graph)


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _is_command_line(module: str) -> bool:
    return module == "neoxcli.cli" or module == "neoxcli.commands" or module.startswith("neoxcli.commands.")


def test_the_graph_sees_lazy_relative_and_from_imports() -> None:
    graph = import_graph()
    assert "neoxcli.commands.config" in graph["neoxcli.cli"]  # from neoxcli.commands import config
    assert "neoxcli.config.loader" in graph["neoxcli.config"]  # module level, package __init__
    assert "neoxcli.model.coord_check" in graph["neoxcli.commands.mup"]  # inside a function
    assert "neoxcli.config.schema" not in graph["neoxcli.launchers.base"]  # under TYPE_CHECKING only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_only_the_command_line_imports_commands() -> None:
    arrows = {
        (module, target)
        for module, targets in import_graph().items()
        if not _is_command_line(module)
        for target in targets
        if _is_command_line(target) and target != "neoxcli.cli"
    }
    assert arrows - KNOWN_COMMAND_IMPORTS == set(), "library modules must not import neoxcli.commands"
    assert KNOWN_COMMAND_IMPORTS <= arrows, "a known import is gone: remove it from KNOWN_COMMAND_IMPORTS"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert new == [], "modules that import each other (move what both need into a third module)"
    gone = [sorted(k) for k in KNOWN_CYCLES if not any(c == k for c in found)]
    assert gone == [], "a known cycle changed or is gone: update KNOWN_CYCLES"


def test_every_library_module_says_its_job() -> None:
    missing = [
        name
        for name, path in _modules().items()
        if not _is_command_line(name)
        and ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) is None
    ]
    assert missing == []
