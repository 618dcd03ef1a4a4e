"""The code base's size and layering rules, checked on the source text (no torch: seconds).

- no module of `llmkit/` over 400 lines, no function over 60 lines;
- no block of code repeated: the same 6 statement lines in two function bodies;
- nothing outside `llmkit/tasks/` names a task: no string literal equal to a registered task's name (the
  pipeline, the CLI and the rest ask the task object instead);
- `llmkit --help` imports no torch/transformers/datasets: `tests/test_cli.py::test_help_imports_no_heavy_library`.

Each test lists every violation it finds, with file and line, so one run shows all there is to fix.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "llmkit"
TASKS_DIR = PACKAGE / "tasks"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: consecutive statement lines (stripped, blank and comment lines left out) that make a repeated block
REPEATED_LINES = 6


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def shown(path: Path) -> str:
    return str(path.relative_to(REPO))


def parsed(path: Path, found: list[str]) -> ast.Module:
    """The module's syntax tree; one that does not parse is a finding (and an empty tree), so the other
    modules are still checked."""
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        found.append(f"{shown(path)}:{err.lineno}: cannot be parsed ({err.msg})")
        return ast.Module(body=[], type_ignores=[])


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_module_is_over_400_lines() -> None:
    found = []
    for path in modules():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_MODULE_LINES:
            found.append(f"{shown(path)}: {count} lines")
    assert not found, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(found)


def test_no_function_is_over_60_lines() -> None:
    found = []
    for path in modules():
        for function in functions(parsed(path, found)):
            length = (function.end_lineno or function.lineno) - function.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{shown(path)}:{function.lineno}: {function.name}() is {length} lines")
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


def body_lines(path: Path, found: list[str]) -> list[tuple[int, str]]:
    """The stripped code lines of every function body (signatures and docstrings left out), in file order."""
    text = path.read_text(encoding="utf-8").splitlines()
    numbers: set[int] = set()
    for function in functions(parsed(path, found)):
        body = function.body
        if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            body = body[1:]  # the docstring
        if body:
            numbers.update(range(body[0].lineno, (body[-1].end_lineno or body[-1].lineno) + 1))
    lines = [(number, text[number - 1].strip()) for number in sorted(numbers)]
    return [(number, line) for number, line in lines if line and not line.startswith("#")]


def test_no_block_of_code_is_repeated() -> None:
    places: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    found: list[str] = []
    for path in modules():
        lines = body_lines(path, found)
        for start in range(len(lines) - REPEATED_LINES + 1):
            window = lines[start : start + REPEATED_LINES]
            places[tuple(line for _, line in window)].append((path, window[0][0]))
    reported: set[tuple[Path, int]] = set()
    for block, where in places.items():
        if len(where) < 2 or set(where) <= reported:
            continue
        reported.update((path, line + offset) for path, line in where for offset in range(REPEATED_LINES * 2))
        listed = " and ".join(f"{shown(path)}:{line}" for path, line in where)
        found.append(f"{listed}: {block[0][:80]}")
    assert not found, f"blocks of {REPEATED_LINES}+ lines repeated (make them one function):\n" + "\n".join(found)


def test_nothing_outside_the_tasks_names_a_task() -> None:
    from llmkit.tasks import TASKS

    names = set(TASKS)
    found = []
    for path in modules():
        if path.is_relative_to(TASKS_DIR):
            continue
        for node in ast.walk(parsed(path, found)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{shown(path)}:{node.lineno}: {node.value!r}")
    assert not found, "task names outside llmkit/tasks/ (ask the task object instead):\n" + "\n".join(found)
