"""The control catalogue: bundled frameworks, one source of references, plug-in mappings, broken files refused."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from checks.controls import GROUP, UnknownFramework, bundled_files, load_catalogue, references
from checks.registry import RegistryError, load_checks

FRAMEWORK_PREFIXES = ("SCuBA", "CIS ", "NIST SP 800-53", "CISA BOD")


@pytest.fixture(scope="module")
def check_ids() -> list[str]:
    return [c.meta.id for c in load_checks()]


def test_bundled_catalogue_names_only_registered_checks(check_ids: list[str]) -> None:
    catalogue = load_catalogue(known_checks=check_ids)
    assert {f.id for f in catalogue.frameworks} == {
        "scuba-exo", "scuba-gmail", "cis-m365-v6", "cis-m365-v7", "cis-gws-v1.3", "nist-800-53", "bod-18-01"}
    for framework in catalogue.frameworks:
        assert framework.controls and framework.version and framework.name, framework.id
        ids = [c.id for c in framework.controls]
        assert len(ids) == len(set(ids)), framework.id
        for control in framework.controls:
            assert control.coverage in ("full", "partial")
            assert control.coverage == "full" or control.note, f"{framework.id} {control.id} is partial without a note"


def test_scuba_policies_carry_their_version_suffix(check_ids: list[str]) -> None:
    catalogue = load_catalogue(known_checks=check_ids)
    exo = [c.id for c in catalogue.framework("scuba-exo").controls]
    gmail = [c.id for c in catalogue.framework("scuba-gmail").controls]
    assert "MS.EXO.4.2v1" in exo and "MS.EXO.2.2v2" in exo
    assert "GWS.GMAIL.11.1v0.6" in gmail and "GWS.GMAIL.2.1v0.6" in gmail
    assert all(c.rpartition("v")[2] for c in exo + gmail)


def test_references_come_from_the_catalogue_only(check_ids: list[str]) -> None:
    """A check's own metadata cites RFCs; every framework reference it shows is the catalogue's."""
    catalogue = load_catalogue(known_checks=check_ids)
    for check in load_checks():
        assert not [r for r in check.meta.references if r.startswith(FRAMEWORK_PREFIXES)], check.meta.id
    forwarding = next(c for c in load_checks() if c.meta.id == "forwarding.external")
    cited = references(forwarding.meta, catalogue)
    assert {"SCuBA MS.EXO.1.1v1", "SCuBA GWS.GMAIL.11.1v0.6", "CIS Microsoft 365 v7.0 6.2.1",
            "CIS Google Workspace v1.3 3.1.3.5.2"} <= set(cited)
    dkim = next(c for c in load_checks() if c.meta.id == "dkim.missing")
    assert "SCuBA GWS.GMAIL.2.1v0.6" in references(dkim.meta, catalogue)  # DKIM is Gmail 2.1 (3.1 is SPF)
    ghost = next(c for c in load_checks() if c.meta.id == "account.ghost")
    assert references(ghost.meta, catalogue) == ("NIST SP 800-53 AC-2(3)", "NIST SP 800-53 PS-4")


def test_unknown_framework_names_the_known_ones(check_ids: list[str]) -> None:
    catalogue = load_catalogue(known_checks=check_ids)
    with pytest.raises(UnknownFramework, match="scuba-exo"):
        catalogue.framework("scuba")


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> EntryPoint:
    package = tmp_path / "acme_controls"
    package.mkdir()
    (package / "mappings.toml").write_text(text, encoding="utf-8")
    (package / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef files():\n    return [Path(__file__).parent / 'mappings.toml']\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_controls", raising=False)
    return EntryPoint(name="acme", value="acme_controls:files", group=GROUP)


def test_a_plugin_adds_checks_to_a_control_and_a_framework_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_ids: list[str]
) -> None:
    entry = _plugin(tmp_path, monkeypatch, '''
[[mappings]]
framework = "scuba-exo"
control = "MS.EXO.1.1v1"
checks = ["drift.forwarding_added"]
coverage = "partial"
note = "new forwards only"

[framework]
id = "acme-policy"
name = "ACME mail policy"
version = "2026"
reference = "ACME"

[[controls]]
id = "M-1"
title = "No catch-all"
checks = ["catchall.enabled"]
coverage = "full"
''')
    catalogue = load_catalogue(known_checks=check_ids, entries=[entry])
    exo = {c.id: c for c in catalogue.framework("scuba-exo").controls}
    assert exo["MS.EXO.1.1v1"].checks == ("forwarding.external", "drift.forwarding_added")
    assert exo["MS.EXO.1.1v1"].coverage == "partial"
    assert [c.id for c in catalogue.framework("acme-policy").controls] == ["M-1"]
    catchall = next(c for c in load_checks() if c.meta.id == "catchall.enabled")
    assert "ACME M-1" in references(catchall.meta, catalogue)


@pytest.mark.parametrize(("body", "message"), [
    ('[[mappings]]\nframework = "nope"\ncontrol = "x"\nchecks = ["catchall.enabled"]\ncoverage = "full"\n',
     "unknown framework 'nope'"),
    ('[[mappings]]\nframework = "scuba-exo"\ncontrol = "MS.EXO.9.9v1"\ntitle = "t"\nchecks = ["acme.nothing"]\n'
     'coverage = "full"\n', "names check 'acme.nothing'"),
    ('[[mappings]]\nframework = "scuba-exo"\ncontrol = "X"\ntitle = "t"\nchecks = ["catchall.enabled"]\n'
     'coverage = "partial"\n', "partial but says not why"),
    ('[[mappings]]\nframework = "scuba-exo"\ncontrol = "X"\ntitle = "t"\nchecks = ["catchall.enabled"]\n'
     'coverage = "most"\n', "coverage 'most'"),
    ("[framework\n", "cannot be read"),
])
def test_broken_mappings_are_one_clear_error_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_ids: list[str], body: str, message: str
) -> None:
    entry = _plugin(tmp_path, monkeypatch, body)
    with pytest.raises(RegistryError, match=message) as caught:
        load_catalogue(known_checks=check_ids, entries=[entry])
    assert "mappings.toml" in str(caught.value) or "acme" in str(caught.value)


def test_catalogue_files_are_package_data() -> None:
    names = [f.name for f in bundled_files()]
    assert "scuba-exo.toml" in names and "bod-18-01.toml" in names
