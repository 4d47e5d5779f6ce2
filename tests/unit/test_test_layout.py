"""The test tree's shape: every test file in exactly one lane folder, helpers in tests/support,
and no test module importing another (what two test modules share is a helper)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
LANES = ("unit", "trio", "system")


@cache
def python_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


def is_test_module(name: str) -> bool:
    """`tests.unit.test_x` or `tests.conftest`: a module pytest collects, not a helper."""
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


@cache
def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_every_test_file_is_in_exactly_one_lane() -> None:
    misfiled = []
    for path in python_files():
        if not path.name.startswith("test_"):
            continue
        parts = path.relative_to(TESTS).parts
        if len(parts) != 2 or parts[0] not in LANES:
            misfiled.append(str(path.relative_to(TESTS.parent)))
    assert misfiled == [], "file these under tests/unit, tests/trio or tests/system"
    for lane in LANES:
        assert list((TESTS / lane).glob("test_*.py")), f"tests/{lane} is empty"


def test_no_module_imports_a_test_module() -> None:
    offending = [
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in python_files()
        for module in imported_modules(path)
        if module.startswith("tests.") and is_test_module(module)
    ]
    assert offending == [], "move what they share to tests/support"


def test_helpers_do_not_import_the_lanes() -> None:
    offending = [
        f"{path.relative_to(TESTS.parent)} imports {module}"
        for path in sorted((TESTS / "support").glob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[:2] in (["tests", lane] for lane in LANES)
    ]
    assert offending == []


def test_the_import_check_sees_what_it_must() -> None:
    """The checks above would pass on an empty answer; they must see these imports."""
    sample = TESTS / "support" / "serving.py"
    assert "trio_gateway.gateway.Gateway" in imported_modules(sample)
    assert is_test_module("tests.system.test_real_sockets")
    assert is_test_module("tests.conftest")
    assert not is_test_module("tests.support.asgi_client")
    assert imported_modules(TESTS / "unit" / "conftest.py") == [
        "__future__",
        "__future__.annotations",
        "collections.abc",
        "collections.abc.Iterator",
        "pytest",
        "trio",
        "tests.support.lane_guard",
        "tests.support.lane_guard.LaneGuard",
        "tests.support.lane_guard.refuse_async",
    ]
