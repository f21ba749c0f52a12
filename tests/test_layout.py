"""The package's layers import one way: no module imports a higher layer, and no
import cycle exists, counting imports inside functions too (a lazy import that
dodges a cycle is still a dependency). The one exception is named: a class that
declares a `@provided` method (implemented a layer above, `_provide.py`) may
import that method's result type for type checkers only, under `if TYPE_CHECKING:`,
which never runs. The front end's functions stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import llm_widgets

PACKAGE = Path(llm_widgets.__file__).parent
# bottom to top; a module may import its own layer and those below it (ARCHITECTURE.md)
LAYERS = {
    "llm_widgets._version": 0,
    "llm_widgets._provide": 0,
    "llm_widgets.errors": 0,
    "llm_widgets.checks": 0,
    "llm_widgets.text": 0,
    "llm_widgets.models": 1,
    "llm_widgets.trace": 2,
    "llm_widgets.analysis": 3,
    "llm_widgets.training": 3,
    "llm_widgets.debug": 3,
    "llm_widgets.export": 4,
    "llm_widgets.widgets": 5,
    "llm_widgets": 6,  # the package root: the public names
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The deepest module of ours that `name` (a dotted import target) refers to."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import statements inside `if TYPE_CHECKING:` blocks."""
    return {
        node
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for node in ast.walk(stmt)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }


def _imports(module: str, path: Path, known: dict[str, Path], *, typing_only: bool = False) -> set[str]:
    """Every module of ours that `module` imports anywhere in its file (run-time imports; or,
    with `typing_only`, those for type checkers only)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for_types = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or (node in for_types) != typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names]
            if not all(f"{stem}.{alias.name}" in known for alias in node.names):  # names from the stem itself
                targets.append(stem)
        for target in targets:
            if target.split(".")[0] == "llm_widgets":
                resolved = _resolve(target, known)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


def _layer(module: str) -> tuple[str, int]:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return best, LAYERS[best]


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_every_module_belongs_to_a_layer():
    for module in _modules():
        assert _layer(module), module


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, targets in _graph().items():
        name, rank = _layer(module)
        for target in targets:
            target_name, target_rank = _layer(target)
            if target_rank > rank:
                upward.append(f"{module} ({name}) imports {target} ({target_name})")
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_type_only_imports_serve_provided_methods():
    """An import for type checkers only, upward, is the result type of a method the module
    declares @provided (and implemented above); nothing else."""
    known = _modules()
    for module, path in known.items():
        targets = {t for t in _imports(module, path, known, typing_only=True) if _layer(t)[1] > _layer(module)[1]}
        if targets:
            assert "@provided" in path.read_text(), (
                f"{module} imports {targets} for type checkers but declares no @provided method"
            )


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_our_errors_are_one_family():
    import llm_widgets as lw

    assert issubclass(lw.InputError, lw.LLMWidgetsError) and issubclass(lw.InputError, ValueError)
    assert issubclass(lw.WrongTypeError, TypeError) and issubclass(lw.ModelBusyError, TimeoutError)
    sources = "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "raise ValueError(" not in sources and "raise TypeError(" not in sources


def _ts_functions(text: str) -> list[tuple[str, int]]:
    """(name, lines) of each `function name(...) {...}` in TypeScript source, by brace matching."""
    found = []
    for match in re.finditer(r"^\s*(?:export\s+)?(?:async\s+)?function\s+(\w+)", text, re.M):
        depth, i = 0, text.index("{", text.index(")", match.end()))
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        found.append((match.group(1), text.count("\n", match.start(), i) + 1))
    return found


def test_front_end_functions_stay_small():
    """A reader should see a part's shape on one screen or two: no front-end function over 100 lines."""
    js = PACKAGE.parent / "js"
    long = [
        (str(path.relative_to(js)), name, n)
        for path in sorted(js.rglob("*.ts"))
        for name, n in _ts_functions(path.read_text())
        if n > 100
    ]
    assert long == [], f"split these: {long}"


def test_python_functions_fit_a_screen():
    """No function of the package over 60 lines (its signature and docstring included)."""
    long = [
        (str(path.relative_to(PACKAGE)), node.name, node.end_lineno - node.lineno + 1)
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == [], f"split these: {long}"
