"""The layout of the Python package holds to the floors of its design (issue 16): no import
cycle between its files, no class over 400 lines and no function over 80, every module named
in docs/ARCHITECTURE.md; and the example in CheckpointChain's docstring runs."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "deltackpt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_extension(name: str) -> bool:
    """A compiled module of the package (``deltackpt._core``: its stub stands for it)."""
    parts = name.split(".")
    return parts[0] == PACKAGE.name and PACKAGE.parent.joinpath(*parts).with_suffix(".pyi").exists()


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, at any depth of its code (an import
    inside a function is still an edge: a cycle through it breaks on first call)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.level and node.module else node.module or base
            for alias in node.names:  # `from . import x` imports the module x, if it is one
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in modules or _is_extension(sub) else mod)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph`` as a path, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_files_of_the_package() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "deltackpt.chain.policy" in graph["deltackpt.chain.commit"]  # the parser sees edges
    assert "deltackpt.chain.inspect" in graph["deltackpt.chain.facade"]  # `from . import x`
    assert _cycle(graph) is None


def test_no_class_over_400_lines_and_no_function_over_80() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = 400 if isinstance(node, ast.ClassDef) else 80
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert too_long == []


def test_architecture_names_every_module_and_every_core_file() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    py = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")]
    rs = [
        p.relative_to(ROOT / "rust" / "src").as_posix()
        for p in (ROOT / "rust" / "src").rglob("*.rs")
    ]
    missing = [name for name in py + rs if name not in text]
    assert missing == []


def test_checkpoint_chain_docstring_example_runs() -> None:
    fsspec = pytest.importorskip("fsspec")
    from deltackpt.chain import facade

    memory = fsspec.filesystem("memory")
    if memory.exists("/doc-chain"):  # the example creates its chain afresh
        memory.rm("/doc-chain", recursive=True)
    finder = doctest.DocTestFinder()
    (test,) = [t for t in finder.find(facade, globs={}) if t.name.endswith("CheckpointChain")]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test)
    assert result.attempted > 0 and result.failed == 0
