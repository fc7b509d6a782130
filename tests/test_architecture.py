"""The package's shape, read from the source with ``ast`` (nothing is imported): no import cycle between modules,
nothing but ``__main__`` imports the CLI, no module over ``MAX_LINES`` lines, typer and rich where they belong.

Every import counts: module level, inside functions (the lazy torch/transformers paths) and under
``TYPE_CHECKING``, since a cycle through any of them is a cycle a reader has to untangle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scissor_cli"
MAX_LINES = 800
CLI_LAYER = {"scissor_cli.cli", "scissor_cli.cli_flags", "scissor_cli.cli_process"}  # the only typer users
ONLY_IMPORTER = {"typer": CLI_LAYER, "click": CLI_LAYER, "rich": {"scissor_cli.render"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every name ``path`` imports, anywhere in the file: ``import a.b`` gives ``a.b``, ``from a import b`` gives
    ``a.b`` (a module, or a name in module ``a``); relative imports are resolved against ``name``."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def internal_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports: ``from scissor_cli import video`` and ``from scissor_cli.video
    import probe`` both give ``scissor_cli.video`` (the longest prefix that is a module)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imported in imported_names(path, name):
            while imported and imported not in mods:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_lazy_and_type_checking_imports():
    """The rules below are only as good as the walk: it must see imports inside functions and under TYPE_CHECKING."""
    graph = internal_graph()
    assert "scissor_cli.model" in graph["scissor_cli.cli"], "cli imports the model inside its commands"
    assert "scissor_cli.jobs" in graph["scissor_cli.scoring"], "scoring imports Job under TYPE_CHECKING"
    assert "scissor_cli.batch.runner" in graph["scissor_cli.batch"], "the batch package re-exports run_batch"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(internal_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or ())}"


def test_only_main_imports_the_cli():
    importers = sorted(m for m, targets in internal_graph().items() if "scissor_cli.cli" in targets)
    assert importers == ["scissor_cli.__main__"], f"{importers} import scissor_cli.cli (the Typer app)"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_the_line_limit(name):
    n_lines = len(modules()[name].read_text().splitlines())
    assert n_lines <= MAX_LINES, f"{name} has {n_lines} lines (limit {MAX_LINES}): split it by what it holds"


@pytest.mark.parametrize("library", sorted(ONLY_IMPORTER))
def test_terminal_libraries_stay_in_their_modules(library):
    users = sorted(
        name
        for name, path in modules().items()
        if any(i == library or i.startswith(f"{library}.") for i in imported_names(path, name))
    )
    assert set(users) <= ONLY_IMPORTER[library], f"{library} is imported by {users}"
