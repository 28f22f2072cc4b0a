"""exception.expired and exception.unknown_subject: attribution to tenants, one result per exception, export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.exception import expired_exception, unknown_subject
from checks.forwarding import external_forwarding
from checks.registry import Check, Policy
from scanner.adapters.files import FilesAdapter
from scanner.model import (
    Coverage, Domain, Fact, FactState, Finding, Forward, ForwardMechanism, Inventory, Mailbox, PolicyException,
    Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
ACME = Tenant("acme", "files", ("acme.example",))
BETA = Tenant("beta", None, ("beta.example",))  # DNS only: no mailbox list
DOMAINS = (Domain("acme.example", "acme"), Domain("beta.example", "beta"))
MAILBOXES = (Mailbox("acme", "ceo@acme.example"),)
COVERAGE = (
    Coverage("acme", Fact.MAILBOX_LIST, FactState.COLLECTED),
    Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.COLLECTED),
    Coverage("beta", Fact.MAILBOX_LIST, FactState.UNSUPPORTED, "DNS-only tenant (no provider configured)"),
)


def _exception(subject: str, expires: date, check: str = "forwarding.external",
               approver: str = "it@acme.example") -> PolicyException:
    return PolicyException(check, subject, "approved for a reason", approver, expires)


def _run(check: Check, *exceptions: PolicyException, coverage=COVERAGE, mailboxes=MAILBOXES) -> list[Finding]:
    inventory = Inventory((ACME, BETA), DOMAINS, mailboxes, {}, exceptions, coverage)
    return evaluate(inventory, [check], policy=Policy(), senders={}, now=NOW)


def _by_item(findings: list[Finding]) -> dict[tuple[str, str], Finding]:
    return {(f.tenant, f.item): f for f in findings}


# exception.expired

def test_expired_exception_fails_once_per_exception() -> None:
    findings = _by_item(_run(
        expired_exception,
        _exception("ceo@acme.example", date(2025, 1, 31)),
        _exception("acme.example", date(2030, 12, 31), check="catchall.enabled"),
    ))
    failed = findings[("acme", "forwarding.external/ceo@acme.example")]
    assert failed.status is Status.FAIL
    assert failed.evidence == {
        "check": "forwarding.external", "subject": "ceo@acme.example", "reason": "approved for a reason",
        "approved_by": "it@acme.example", "expires": "2025-01-31", "claimed_by": "acme", "days_expired": 663,
    }
    passed = findings[("acme", "catchall.enabled/acme.example")]
    assert passed.status is Status.PASS and passed.evidence["days_left"] == 1497
    assert findings[("beta", "")].status is Status.PASS  # a tenant without exceptions gets one pass
    assert findings[("beta", "")].evidence == {"exceptions": 0}


def test_exception_is_valid_through_its_expiry_date() -> None:
    [acme, _] = _run(expired_exception, _exception("ceo@acme.example", date(2026, 11, 25)))
    assert acme.status is Status.PASS and acme.evidence["days_left"] == 0


def test_expired_exception_uncovers_the_finding_it_hid() -> None:
    forwarding = Mailbox("acme", "ceo@acme.example", forwards=(Forward("ceo@out.test", ForwardMechanism.REDIRECT),))
    exception = _exception("ceo@acme.example", date(2026, 11, 24))
    inventory = Inventory((ACME, BETA), DOMAINS, (forwarding,), {}, (exception,), COVERAGE)
    findings = {f.check: f for f in evaluate(inventory, [external_forwarding, expired_exception], policy=Policy(),
                                             senders={}, now=NOW) if f.tenant == "acme"}
    assert findings["forwarding.external"].status is Status.FAIL
    assert findings["exception.expired"].status is Status.FAIL


def test_expired_exception_can_itself_be_excepted_and_that_can_expire() -> None:
    stale = _exception("ceo@acme.example", date(2025, 1, 31))
    cover = PolicyException("exception.expired", "acme", "renewal in review", "ciso@acme.example", date(2026, 12, 1))
    findings = _by_item(_run(expired_exception, stale, cover))
    assert findings[("acme", "exception.expired/acme")].status is Status.PASS
    excepted = findings[("acme", "forwarding.external/ceo@acme.example")]
    assert excepted.status is Status.EXCEPTED and "renewal in review" in excepted.reason
    lapsed = PolicyException("exception.expired", "acme", "renewal in review", "ciso@acme.example", date(2026, 11, 1))
    again = _by_item(_run(expired_exception, stale, lapsed))[("acme", "forwarding.external/ceo@acme.example")]
    assert again.status is Status.FAIL and "expired 2026-11-01" in again.evidence["expired_exception"]


def test_expired_is_never_unsupported_because_exceptions_come_from_the_config() -> None:
    """exception.expired requires no provider fact: a DNS-only tenant's exceptions are judged all the same."""
    findings = _by_item(_run(expired_exception, _exception("beta.example", date(2025, 1, 1), "catchall.enabled")))
    assert findings[("beta", "catchall.enabled/beta.example")].status is Status.FAIL
    assert expired_exception.meta.requires == ()


# exception.unknown_subject

def test_exception_naming_no_mailbox_fails() -> None:
    findings = _by_item(_run(unknown_subject, _exception("summer.intern@acme.example", date(2027, 3, 31),
                                                         "account.inactive")))
    finding = findings[("acme", "account.inactive/summer.intern@acme.example")]
    assert finding.status is Status.FAIL
    assert finding.evidence["names"] is None and finding.evidence["claimed_by"] == "acme"


def test_exception_naming_a_mailbox_domain_or_tenant_passes() -> None:
    findings = _run(
        unknown_subject,
        _exception("ceo@acme.example", date(2027, 1, 1)),
        _exception("acme.example", date(2027, 1, 1), "catchall.enabled"),
        _exception("acme", date(2027, 1, 1), "exception.expired"),
        _exception("beta.example", date(2027, 1, 1), "catchall.enabled"),
    )
    assert {f.status for f in findings} == {Status.PASS}
    names = {f.item: f.evidence.get("names") for f in findings}
    assert names == {"forwarding.external/ceo@acme.example": "mailbox", "catchall.enabled/acme.example": "domain",
                     "exception.expired/acme": "tenant", "catchall.enabled/beta.example": "domain"}


def test_exception_no_tenant_claims_is_reported_under_the_approvers_tenant_or_the_first() -> None:
    findings = _run(
        unknown_subject,
        _exception("ghost@elsewhere.test", date(2027, 1, 1), approver="admin@beta.example"),
        _exception("typo.example", date(2027, 1, 1), "catchall.enabled", approver="someone@outside.test"),
    )
    by_item = {f.item: f for f in findings}
    orphan = by_item["forwarding.external/ghost@elsewhere.test"]
    assert (orphan.tenant, orphan.status, orphan.evidence["claimed_by"]) == ("beta", Status.FAIL, None)
    typo = by_item["catchall.enabled/typo.example"]
    assert (typo.tenant, typo.status) == ("acme", Status.FAIL)


def test_unknown_subject_excepted_and_expired_exception() -> None:
    missing = _exception("old@acme.example", date(2027, 1, 1))
    cover = PolicyException("exception.unknown_subject", "acme", "mailbox being restored", "it@acme.example",
                            date(2026, 12, 31))
    finding = _by_item(_run(unknown_subject, missing, cover))[("acme", "forwarding.external/old@acme.example")]
    assert finding.status is Status.EXCEPTED
    lapsed = PolicyException("exception.unknown_subject", "acme", "mailbox being restored", "it@acme.example",
                             date(2026, 10, 31))
    finding = _by_item(_run(unknown_subject, missing, lapsed))[("acme", "forwarding.external/old@acme.example")]
    assert finding.status is Status.FAIL and "expired 2026-10-31" in finding.evidence["expired_exception"]


def test_unknown_subject_is_unsupported_for_an_address_of_a_tenant_without_a_mailbox_list() -> None:
    findings = _by_item(_run(
        unknown_subject,
        _exception("cfo@beta.example", date(2027, 1, 1)),
        _exception("beta.example", date(2027, 1, 1), "catchall.enabled"),
    ))
    unsupported = findings[("beta", "forwarding.external/cfo@beta.example")]
    assert unsupported.status is Status.UNSUPPORTED and "cannot be looked up" in unsupported.reason
    assert findings[("beta", "catchall.enabled/beta.example")].status is Status.PASS


def test_unknown_subject_errors_when_the_mailbox_list_failed() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_LIST, FactState.FAILED, "export directory missing"),) + COVERAGE[2:]
    findings = _by_item(_run(unknown_subject, _exception("ann@acme.example", date(2027, 1, 1)), coverage=coverage,
                             mailboxes=()))
    finding = findings[("acme", "forwarding.external/ann@acme.example")]
    assert finding.status is Status.ERROR and "export directory missing" in finding.reason


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text("address,kind,status\nceo@acme.example,user,active\nann@acme.example,user,active\n", encoding="utf-8")
    collected = FilesAdapter(tmp_path).read(ACME)
    findings = _by_item(_run(
        unknown_subject,
        _exception("ann@acme.example", date(2027, 1, 1)),
        _exception("bob@acme.example", date(2027, 1, 1)),
        coverage=collected.coverage + COVERAGE[2:], mailboxes=collected.mailboxes,
    ))
    assert findings[("acme", "forwarding.external/ann@acme.example")].status is Status.PASS
    assert findings[("acme", "forwarding.external/bob@acme.example")].status is Status.FAIL
