"""The docs say only what is tested: every capability row names its tests, and nothing points outside the repo.

README's "What is inside" table has a "tested by" column; docs/*.md may add `Tested: tests/x.py::name` lines.
Every reference must name a test file that exists (and, with `::name`, a test function defined in it), so a
renamed or deleted test breaks this check instead of leaving a claim without evidence. The research notes
the project was built from are not part of a clone, so README, docs/ and the device profiles must not
point at them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
TEST_REF = re.compile(r"\btests/[\w/]+\.py(?:::\w+)?")
OUTSIDE = re.compile(r"\.\./shared|shared/reference|papers-and-anchors|/work/shared")


def _table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows) of the first Markdown table after `heading`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, separator, *body = rows
    assert all(set(c) <= set("-: ") for c in separator), f"{heading}: no table"
    return header, body


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def dangling(refs: list[str]) -> list[str]:
    """The references among `refs` whose file or function does not exist."""
    bad = []
    for ref in refs:
        file, _, name = ref.partition("::")
        path = ROOT / file
        if not path.is_file():
            bad.append(f"{ref} (no such file)")
        elif name and name not in _test_functions(path):
            bad.append(f"{ref} (no such function in {file})")
    return bad


def untested_rows(text: str) -> list[str]:
    """Rows of README's "What is inside" table whose "tested by" cell names no test."""
    header, body = _table(text, "## What is inside")
    assert "tested by" in header, "README's 'What is inside' table has no 'tested by' column"
    column = header.index("tested by")
    return [row[0] for row in body if len(row) <= column or not TEST_REF.findall(row[column])]


def test_every_readme_capability_row_names_its_tests() -> None:
    assert untested_rows(README.read_text(encoding="utf-8")) == []


def test_every_test_reference_in_readme_and_docs_exists() -> None:
    for path in [README, *DOCS]:
        refs = TEST_REF.findall(path.read_text(encoding="utf-8"))
        assert dangling(refs) == [], path.name


def test_checked_docs_pages_name_their_tests() -> None:
    """The docs pages whose capability claims issue 13 checked carry `Tested:` references."""
    for name in ("kernels.md", "device-sources.md", "planner.md"):
        text = (ROOT / "docs" / name).read_text(encoding="utf-8")
        assert re.search(r"Tested:\s*`?tests/", text), name


@pytest.mark.parametrize(
    "path", [README, *DOCS, *sorted((ROOT / "device_profiles").glob("*.toml"))], ids=lambda p: p.name
)
def test_nothing_points_outside_the_repository(path: Path) -> None:
    hits = [line for line in path.read_text(encoding="utf-8").splitlines() if OUTSIDE.search(line)]
    assert hits == []


CODE_DIRS = ("sdk", "exporters", "runtime_kernels", "device_profiles", "tests", "benchmarks", "examples")
NOTES = re.compile(OUTSIDE.pattern + r"|minicpm4-architecture\.md|gguf-llamacpp\.md|onnx-ortgenai\.md|reference doc")


def test_no_code_comment_or_data_path_points_at_the_research_notes() -> None:
    files = [p for d in CODE_DIRS for ext in ("py", "sh", "toml", "md") for p in (ROOT / d).rglob(f"*.{ext}")]
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in files
        if p.name != Path(__file__).name
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if NOTES.search(line)
    ]
    assert hits == []


def test_the_checks_fail_on_a_missing_or_dangling_reference() -> None:
    """The checks themselves can fail: a row without a test, a missing file, a missing function."""
    table = (
        "## What is inside\n\n| piece | what it does | docs | tested by |\n|---|---|---|---|\n"
        "| a | x | | `tests/test_config.py` |\n| b | y | | |\n"
    )
    assert untested_rows(table) == ["b"]
    assert dangling(["tests/test_config.py"]) == []
    assert dangling(["tests/test_no_such_file.py"]) == ["tests/test_no_such_file.py (no such file)"]
    assert dangling(["tests/test_config.py::test_no_such_function"]) == [
        "tests/test_config.py::test_no_such_function (no such function in tests/test_config.py)"
    ]
    with pytest.raises(AssertionError, match="tested by"):
        untested_rows(table.replace(" tested by |", " tests |"))
    assert OUTSIDE.search("see ../shared/reference/x.md") and NOTES.search("(reference doc §4.3)")
