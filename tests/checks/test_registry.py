"""The registry: checks come from the mailwarden.checks entry points, third-party packages included."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from checks.registry import RegistryError, Result, load_checks, per_subject
from scanner.model import Domain, Scope, Severity, Status

EXTERNAL = '''
from checks.registry import Result, check
from scanner.model import Scope, Severity

@check(id="acme.custom_rule", title="Custom rule", severity=Severity.LOW, scope=Scope.DOMAIN,
       rationale="A third-party check.")
def custom_rule(domain, ctx):
    return Result.passed()

def not_a_check(domain, ctx):
    return None
'''


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str, dist: str = "acme_checks") -> None:
    """Install a distribution the way pip would leave it: a module and a .dist-info with entry points."""
    (tmp_path / "acme_checks_mod.py").write_text(EXTERNAL)
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mailwarden.checks]\n" + textwrap.dedent(entries))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_checks_mod", raising=False)


def test_builtin_checks_are_loaded_from_entry_points() -> None:
    ids = [c.meta.id for c in load_checks()]
    assert "dmarc.missing" in ids and "forwarding.external" in ids
    assert ids == sorted(ids)


def test_external_package_adds_a_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, 'acme.custom_rule = acme_checks_mod:custom_rule\n')
    loaded = {c.meta.id: c for c in load_checks()}
    assert loaded["acme.custom_rule"].meta.severity is Severity.LOW
    assert loaded["acme.custom_rule"].meta.scope is Scope.DOMAIN
    assert "dmarc.missing" in loaded


def test_import_failure_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, 'acme.broken = acme_no_such_module:thing\n')
    with pytest.raises(RegistryError, match=r"check 'acme.broken' from package 'acme_checks' cannot be loaded"):
        load_checks()


def test_object_without_metadata_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, 'acme.plain = acme_checks_mod:not_a_check\n')
    with pytest.raises(RegistryError, match=r"'acme.plain' from package 'acme_checks' .* is not declared with @check"):
        load_checks()


def test_name_must_match_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, 'acme.other_name = acme_checks_mod:custom_rule\n')
    with pytest.raises(RegistryError, match=r"names a check whose id is 'acme.custom_rule'"):
        load_checks()


def test_duplicate_id_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, 'dmarc.missing = checks.dmarc:dmarc_missing\n', dist="acme_dupe")
    with pytest.raises(RegistryError, match=r"'dmarc.missing' is registered twice: by package .* and by package"):
        load_checks()


def test_bad_id_is_refused_at_declaration() -> None:
    from checks.registry import check

    with pytest.raises(RegistryError, match="is not of the form"):
        check(id="NoArea", title="x", severity=Severity.LOW, scope=Scope.DOMAIN, rationale="x")


def test_per_subject_works_out_once_per_subject_by_identity() -> None:
    calls: list[str] = []

    @per_subject
    def derive(domain: Domain) -> tuple[str, int]:
        calls.append(domain.name)
        return (domain.name, len(calls))

    a, b = Domain("a.example", "acme"), Domain("b.example", "acme")
    assert derive(a) == derive(a) == ("a.example", 1)
    assert derive(b) == ("b.example", 2)
    assert derive(a) == ("a.example", 3)  # one result held: the last subject's
    assert derive(Domain("a.example", "acme")) == ("a.example", 4)  # equal is not the same object
    assert calls == ["a.example", "b.example", "a.example", "a.example"]


def test_results_made_by_their_constructors_are_the_dataclass_they_describe() -> None:
    # The constructors fill Result slot by slot (the path of every finding): the same value, equal and hashable
    # alike, as the dataclass's own __init__ makes; a subclass is made by its own __init__.
    made = [Result.passed(item="a", spf="ok"), Result.failed(blocks=False, dmarc="none"), Result.error("timed out"),
            Result.unsupported("no API", item="b")]
    expected = [Result(Status.PASS, {"spf": "ok"}, "a"), Result(Status.FAIL, {"dmarc": "none"}, blocks=False),
                Result(Status.ERROR, {}, "", "timed out"), Result(Status.UNSUPPORTED, {}, "b", "no API")]
    assert made == expected and [repr(r) for r in made] == [repr(r) for r in expected]
    assert all(type(r) is Result for r in made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].status = Status.FAIL  # type: ignore[misc]

    @dataclasses.dataclass(frozen=True, slots=True)
    class Noted(Result):
        note: str = "checked"

    assert Noted.passed(x=1) == Noted(Status.PASS, {"x": 1}) and Noted.passed().note == "checked"
