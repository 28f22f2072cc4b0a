"""catchall.enabled: built from inventory objects, through the evaluate stage, and from export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.catchall import catchall_enabled
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.adapters.files import FilesAdapter
from scanner.model import Coverage, Domain, Fact, FactState, Finding, Inventory, Mailbox, PolicyException, Status, Tenant

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example", "acme-mail.example"))
COLLECTED = (Coverage("acme", Fact.DOMAIN_CATCH_ALL, FactState.COLLECTED),)


def _run(*domains: Domain, coverage=COLLECTED, exceptions=(), mailboxes=()) -> dict[str, Finding]:
    inventory = Inventory((TENANT,), domains, tuple(mailboxes), {}, tuple(exceptions), tuple(coverage))
    findings = evaluate(inventory, [catchall_enabled], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def _exception(subject: str, expires: date) -> PolicyException:
    return PolicyException("catchall.enabled", subject, "intake must not bounce", "it@acme.example", expires)


def test_catch_all_to_a_mailbox_fails() -> None:
    finding = _run(
        Domain("acme.example", "acme", catch_all="inbox@acme.example"),
        mailboxes=[Mailbox("acme", "inbox@acme.example")],
    )["acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"catch_all": "inbox@acme.example", "target_inside_tenant": True,
                                "target_mailbox": "active"}
    assert finding.remediation is not None and finding.remediation.action == "catchall.disable"
    assert finding.remediation.params == {"subject": "acme.example"}


def test_catch_all_to_an_outside_address_says_so() -> None:
    finding = _run(Domain("acme.example", "acme", catch_all="all@elsewhere.test"))["acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["target_inside_tenant"] is False
    assert finding.evidence["target_mailbox"] == "not in the inventory"


def test_domain_without_catch_all_passes_parked_included() -> None:
    findings = _run(Domain("acme.example", "acme"), Domain("acme-mail.example", "acme", parked=True))
    assert {f.status for f in findings.values()} == {Status.PASS}
    assert findings["acme.example"].remediation is None


def test_valid_exception_excepts() -> None:
    finding = _run(
        Domain("acme.example", "acme", catch_all="inbox@acme.example"),
        exceptions=[_exception("acme.example", date(2030, 12, 31))],
    )["acme.example"]
    assert finding.status is Status.EXCEPTED
    assert "intake must not bounce" in finding.reason and "2030-12-31" in finding.reason


def test_expired_exception_fails_again() -> None:
    finding = _run(
        Domain("acme.example", "acme", catch_all="inbox@acme.example"),
        exceptions=[_exception("acme.example", date(2026, 11, 24))],
    )["acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["expired_exception"] == "intake must not bounce (expired 2026-11-24)"


def test_unsupported_when_provider_does_not_report_catch_all() -> None:
    coverage = (Coverage("acme", Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED, "no domains file"),)
    finding = _run(Domain("acme.example", "acme", catch_all="x@acme.example"), coverage=coverage)["acme.example"]
    assert finding.status is Status.UNSUPPORTED
    assert "no domains file" in finding.reason


def test_error_for_a_domain_the_provider_did_not_report() -> None:
    coverage = COLLECTED + (
        Coverage("acme", Fact.DOMAIN_CATCH_ALL, FactState.FAILED, "acme-mail.example is not listed", "acme-mail.example"),
    )
    findings = _run(Domain("acme.example", "acme"), Domain("acme-mail.example", "acme"), coverage=coverage)
    assert findings["acme-mail.example"].status is Status.ERROR
    assert findings["acme.example"].status is Status.PASS


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text("address,kind,status\ninbox@acme.example,shared,active\n", encoding="utf-8")
    (tmp_path / "domains.csv").write_text(
        "domain,catch_all\nacme.example,inbox@acme.example\n", encoding="utf-8"
    )
    collected = FilesAdapter(tmp_path).read(TENANT)
    domains = tuple(Domain(d, "acme", catch_all=collected.catch_all.get(d)) for d in TENANT.domains)
    findings = _run(*domains, coverage=collected.coverage, mailboxes=collected.mailboxes)
    assert findings["acme.example"].status is Status.FAIL
    assert findings["acme.example"].evidence["target_mailbox"] == "active"
    # acme-mail.example is missing from domains.csv: unknown, never a pass
    assert findings["acme-mail.example"].status is Status.ERROR
