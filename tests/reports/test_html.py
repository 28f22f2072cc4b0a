"""report.html's Exceptions section: rendered from the run's snapshot, escaped, with what each exception covers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.evaluate import fingerprint
from scanner.model import Finding, Inventory, PolicyException, Severity, Status
from scanner.pipeline import snapshot_items, write_outputs
from scanner.store import Store

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)


def _report(tmp_path: Path, exceptions: tuple[PolicyException, ...], findings: list[Finding]) -> str:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    store.save_snapshot("r1", snapshot_items(Inventory(exceptions=exceptions)))
    store.record_findings("r1", findings, NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {}})
    write_outputs(store, "r1", tmp_path / "out")
    store.close()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    return html[html.index('<table id="exceptions">'):html.index("<h2>Findings</h2>")]


def _finding(check: str, subject: str, status: Status, item: str = "") -> Finding:
    return Finding(id=fingerprint(check, "acme", subject, item), check=check, status=status, severity=Severity.HIGH,
                   tenant="acme", domain="acme.example", subject=subject, title=check, item=item)


def test_exceptions_show_what_they_cover_and_escape_their_text(tmp_path: Path) -> None:
    exceptions = (
        PolicyException("forwarding.external", "ceo@acme.example", "<script>alert(1)</script>", "it@acme.example",
                        date(2027, 1, 31)),
        PolicyException("forwarding.external", "cfo@acme.example", "old", "it@acme.example", date(2026, 1, 31)),
    )
    section = _report(tmp_path, exceptions, [
        _finding("forwarding.external", "ceo@acme.example", Status.EXCEPTED),
        _finding("forwarding.external", "cfo@acme.example", Status.FAIL),
    ])
    assert "<script>" not in section and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert '<div class="excepted">excepted: ceo@acme.example</div>' in section
    assert 'data-subject="ceo@acme.example" data-expired="no"' in section
    # no exception.expired finding in this run: the expiry date is compared with the run's start
    assert 'data-subject="cfo@acme.example" data-expired="yes"' in section
    assert '<span class="fail">expired 2026-01-31</span>' in section


def test_expiry_follows_the_runs_exception_expired_finding(tmp_path: Path) -> None:
    exception = PolicyException("catchall.enabled", "acme.example", "intake", "it@acme.example", date(2026, 12, 1))
    section = _report(tmp_path, (exception,), [
        _finding("exception.expired", "acme", Status.FAIL, item="catchall.enabled/acme.example"),
    ])
    assert 'data-expired="yes"' in section  # judged as of the run's evaluation date, not the render date
    assert "no finding" in section


def test_no_exceptions_renders_an_empty_section(tmp_path: Path) -> None:
    section = _report(tmp_path, (), [])
    assert "<tr data-check=" not in section
