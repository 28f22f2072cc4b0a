"""Meta-tests over the loaded catalogue: unique ids, complete metadata, every built-in check tested."""

from __future__ import annotations

from pathlib import Path

from checks.registry import load_checks

TESTS = Path(__file__).resolve().parent


def test_metadata_is_complete() -> None:
    for check in load_checks():
        meta = check.meta
        assert meta.title and meta.rationale, meta.id
        area, module = meta.id.split(".")[0], check.__module__.rpartition(".")[2]
        if check.__module__.startswith("checks."):
            assert module in (area, area + "s"), f"{meta.id} should live in checks/{area}.py"
        assert check.__doc__, f"{meta.id} has no docstring"


def test_every_builtin_check_has_tests() -> None:
    """Each built-in check is exercised by the test module that mirrors its module."""
    untested = []
    for check in load_checks():
        if not check.__module__.startswith("checks."):
            continue
        tests = TESTS / f"test_{check.__module__.rpartition('.')[2]}.py"
        if not tests.is_file() or check.__name__ not in tests.read_text(encoding="utf-8"):
            untested.append(check.meta.id)
    assert untested == []
