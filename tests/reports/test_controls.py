"""Per-control status from a run's findings, the report's Controls view, and `mailwarden controls`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from checks.controls import Catalogue, load_catalogue
from checks.evaluate import fingerprint
from checks.registry import load_checks
from reports.controls import CATALOGUE_COLUMNS, ControlTally, control_statuses, tenant_providers
from reports.html import render_html
from scanner.cli import main
from scanner.model import Finding, Severity, Status
from scanner.store.database import RunRecord

NOW = datetime(2026, 11, 2, 6, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(known_checks=[c.meta.id for c in load_checks()])


def _f(check: str, tenant: str, subject: str, status: Status, caused_by: str = "", reason: str = "") -> Finding:
    return Finding(id=fingerprint(check, tenant, subject), check=check, status=status, severity=Severity.HIGH,
                   tenant=tenant, domain=subject.rpartition("@")[2], subject=subject, title="t",
                   caused_by=caused_by, reason=reason)


def _verdict(statuses: list, framework: str, control: str, tenant: str):  # type: ignore[no-untyped-def]
    return next(s for s in statuses if (s.framework.id, s.control.id, s.tenant) == (framework, control, tenant))


def test_fail_names_failing_subjects_and_root_findings(catalogue: Catalogue) -> None:
    missing = _f("dmarc.missing", "acme", "b.example", Status.FAIL)
    findings = [
        _f("dmarc.missing", "acme", "a.example", Status.PASS),
        _f("dmarc.policy_weak", "acme", "a.example", Status.PASS),
        missing,
        # only restates dmarc.missing: counted as failing, under the root finding's id
        _f("dmarc.policy_weak", "acme", "b.example", Status.SKIPPED, caused_by=missing.id),
    ]
    statuses = control_statuses(catalogue, findings, {"acme": "microsoft"})
    published = _verdict(statuses, "scuba-exo", "MS.EXO.4.1v1", "acme")
    assert published.status == "fail" and published.failing_subjects == ("b.example",)
    assert published.finding_ids == (missing.id,)
    reject = _verdict(statuses, "scuba-exo", "MS.EXO.4.2v1", "acme")
    assert reject.status == "fail" and reject.finding_ids == (missing.id,)  # the root, not the dependant


def test_a_tally_without_ids_gives_the_same_verdicts_naming_no_findings(catalogue: Catalogue) -> None:
    # what report.html shows of a control (its status, how many subjects fail, the reasons) without the ids
    missing = _f("dmarc.missing", "acme", "b.example", Status.FAIL)
    findings = [
        _f("dmarc.missing", "acme", "a.example", Status.PASS),
        missing,
        _f("dmarc.policy_weak", "acme", "b.example", Status.SKIPPED, caused_by=missing.id),
        _f("dmarc.missing", "globex", "c.example", Status.ERROR, reason="timeout"),
    ]
    tenants = {"acme": "microsoft", "globex": "none (DNS only)"}
    tally = ControlTally(catalogue, tenants, ids=False)
    for finding in findings:
        tally.add(finding)
    plain = tally.statuses()
    full = control_statuses(catalogue, findings, tenants)
    assert any(s.finding_ids for s in full) and not any(s.finding_ids for s in plain)
    assert [(s.framework.id, s.control.id, s.tenant, s.status, s.failing_subjects, s.reason) for s in plain] == [
        (s.framework.id, s.control.id, s.tenant, s.status, s.failing_subjects, s.reason) for s in full]


def test_unknown_is_not_assessed_never_pass(catalogue: Catalogue) -> None:
    findings = [
        _f("forwarding.external", "acme", "ann@acme.example", Status.PASS),
        _f("forwarding.external", "acme", "bob@acme.example", Status.ERROR, reason="Graph answered 503"),
        _f("forwarding.external", "globex", "gus@globex.example", Status.UNSUPPORTED,
           reason="no provider lists mailboxes"),
    ]
    statuses = control_statuses(catalogue, findings, {"acme": "microsoft", "globex": "none (DNS only)"})
    acme = _verdict(statuses, "scuba-exo", "MS.EXO.1.1v1", "acme")
    assert acme.status == "not assessed" and "Graph answered 503" in acme.reason
    globex = _verdict(statuses, "scuba-exo", "MS.EXO.1.1v1", "globex")
    assert globex.status == "not assessed" and "no provider lists mailboxes" in globex.reason
    # nothing judged at all (no SPF finding in this run) is not assessed either
    assert _verdict(statuses, "scuba-exo", "MS.EXO.2.2v2", "acme").status == "not assessed"


def test_pass_excepted_and_frameworks_by_provider(catalogue: Catalogue) -> None:
    findings = [
        _f("forwarding.external", "acme", "ann@acme.example", Status.PASS),
        _f("forwarding.external", "gws", "gail@gws.example", Status.PASS),
        _f("forwarding.external", "gws", "ceo@gws.example", Status.EXCEPTED),
    ]
    statuses = control_statuses(catalogue, findings, {"acme": "microsoft", "gws": "google"})
    assert _verdict(statuses, "scuba-exo", "MS.EXO.1.1v1", "acme").status == "pass"
    assert _verdict(statuses, "scuba-gmail", "GWS.GMAIL.11.1v0.6", "gws").status == "excepted"
    # a Google tenant is not judged against the Exchange Online baseline, nor Microsoft's against Gmail's
    assert not [s for s in statuses if s.framework.id.startswith(("scuba-exo", "cis-m365")) and s.tenant == "gws"]
    assert not [s for s in statuses if s.framework.id.startswith(("scuba-gmail", "cis-gws")) and s.tenant == "acme"]
    assert {s.framework.id for s in statuses if s.tenant == "gws"} >= {"nist-800-53", "bod-18-01"}


def test_tenant_providers_read_the_run_scope() -> None:
    scope = {"tenants": {"acme": {"provider": "microsoft"}, "dns": {"provider": "none (DNS only)"}, "x": {}}}
    assert tenant_providers(scope) == {"acme": "microsoft", "dns": "none (DNS only)", "x": "none (DNS only)"}


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._class: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._class = dict(attrs).get("class") or ""

    def handle_data(self, data: str) -> None:
        if self._class is not None and data.strip():
            self.cells.append((self._class, data.strip()))
            self._class = None


def test_report_shows_a_controls_view_per_framework(catalogue: Catalogue, tmp_path: Path) -> None:
    findings = [_f("forwarding.external", "acme", "ann@acme.example", Status.FAIL),
                _f("forwarding.external", "acme", "bob@acme.example", Status.FAIL)]
    run = RunRecord("r1", NOW, NOW, "complete", {"tenants": {"acme": {"provider": "microsoft", "state": "complete"}}},
                    "c" * 64, "0.1.0")
    statuses = control_statuses(catalogue, findings, tenant_providers(run.scope))
    html = render_html(run, findings, {}, tmp_path / "report.html", controls=statuses).read_text(encoding="utf-8")
    assert 'id="controls"' in html and 'id="framework-scuba-exo"' in html
    parser = _Cells()
    parser.feed(html[html.index('id="framework-scuba-exo"'):html.index('id="framework-scuba-gmail"')
                     if 'id="framework-scuba-gmail"' in html else None])
    assert ("fail", "fail (2)") in parser.cells  # MS.EXO.1.1v1: two failing mailboxes
    assert ("not-assessed", "not assessed") in parser.cells


def test_controls_command_prints_the_catalogue(catalogue: Catalogue) -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["controls"])
    assert table.exit_code == 0, table.output
    assert "MS.EXO.1.1v1  [partial]" in table.output and "leaves out:" in table.output
    as_json = runner.invoke(main, ["controls", "--framework", "nist-800-53", "--format", "json"])
    rows = json.loads(as_json.output)
    assert [r["control"] for r in rows] == ["AC-2(3)", "PS-4", "AC-6", "AC-20", "IA-5"]
    assert "account.ghost" in rows[0]["checks"] and "access.leaver_grant" in rows[1]["checks"]
    as_csv = runner.invoke(main, ["controls", "--format", "csv"])
    parsed = list(csv.reader(io.StringIO(as_csv.output)))
    assert parsed[0] == list(CATALOGUE_COLUMNS)
    assert len(parsed) - 1 == sum(len(f.controls) for f in catalogue.frameworks)
    unknown = runner.invoke(main, ["controls", "--framework", "scuba"])
    assert unknown.exit_code == 2 and "scuba-exo" in unknown.output


def test_checks_command_shows_catalogue_references() -> None:
    out = CliRunner().invoke(main, ["checks"]).output
    block = out[out.index("forwarding.external  ["):]
    block = block[: block.index("remediation:")]
    assert "SCuBA MS.EXO.1.1v1" in block and "CIS Microsoft 365 v6.0 6.2.1" in block
