"""The evaluate stage: one result per subject in scope, crashes become errors, missing facts are never a pass."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

from checks.evaluate import _new_finding, evaluate, fingerprint
from checks.registry import Policy, Result, check
from scanner.model import (
    Domain,
    DnsAnswer,
    DnsFacts,
    Finding,
    Inventory,
    Mailbox,
    Outcome,
    Remediation,
    Scope,
    Severity,
    Status,
    Tenant,
)

NOW = datetime(2026, 11, 25, tzinfo=UTC)
TENANT = Tenant("acme", None, ("a.example", "b.example"))


@check(id="test.crashes", title="Crashes on b", severity=Severity.LOW, scope=Scope.DOMAIN, rationale="test")
def crashes(domain: Domain, ctx) -> Result:
    """Raise on one domain."""
    if domain.name == "b.example":
        raise RuntimeError("boom")
    return Result.passed()


@check(id="test.items", title="One result per item", severity=Severity.LOW, scope=Scope.DOMAIN, rationale="test",
       requires=("dns.mx",))
def items(domain: Domain, ctx) -> list[Result]:
    """Judge each MX record separately."""
    answer = domain.dns.get("mx")
    return [Result.failed(item=r, host=r) for r in answer.records]


@check(id="test.nothing", title="Returns nothing", severity=Severity.LOW, scope=Scope.TENANT, rationale="test")
def nothing(tenant: Tenant, ctx) -> list[Result]:
    """A buggy check that judges nothing."""
    return []


def _domains() -> tuple[Domain, ...]:
    mx = DnsAnswer("a.example", "MX", Outcome.ANSWER, ("10 mx1.a.example.", "20 mx2.a.example."))
    failed = DnsAnswer("b.example", "MX", Outcome.FAILED, error="timeout after 3s")
    return (Domain("a.example", "acme", dns=DnsFacts({"mx": mx})), Domain("b.example", "acme", dns=DnsFacts({"mx": failed})))


def test_a_crashing_check_is_an_error_for_that_subject_only() -> None:
    findings = evaluate(Inventory((TENANT,), _domains()), [crashes], policy=Policy(), senders={}, now=NOW)
    by_subject = {f.subject: f for f in findings}
    assert by_subject["a.example"].status is Status.PASS
    assert by_subject["b.example"].status is Status.ERROR
    assert "RuntimeError: boom" in by_subject["b.example"].reason


def test_items_get_their_own_fingerprints_and_failed_dns_is_error() -> None:
    findings = evaluate(Inventory((TENANT,), _domains()), [items], policy=Policy(), senders={}, now=NOW)
    a = [f for f in findings if f.subject == "a.example"]
    assert [f.item for f in a] == ["10 mx1.a.example.", "20 mx2.a.example."]
    assert len({f.id for f in a}) == 2
    assert a[0].id == fingerprint("test.items", "acme", "a.example", "10 mx1.a.example.")
    (b,) = [f for f in findings if f.subject == "b.example"]
    assert b.status is Status.ERROR and "timeout after 3s" in b.reason


def test_a_finding_built_slot_by_slot_is_the_dataclass_one_field_for_field() -> None:
    remediation = Remediation("dns.fix", {"subject": "a.example"})
    values = dict(id="f1", check="test.items", status=Status.FAIL, severity=Severity.HIGH, tenant="acme",
                  domain="a.example", subject="user@a.example", title="One result per item", item="mx1",
                  evidence={"host": "mx1"}, reason="why", remediation=remediation, run_id="r1", caused_by="f0")
    built = _new_finding(**values)
    expected = Finding(**values)
    assert [getattr(built, f.name) for f in fields(Finding)] == [getattr(expected, f.name) for f in fields(Finding)]
    assert built.first_seen is None and built.last_seen is None


def test_every_subject_in_scope_gets_a_result() -> None:
    mailbox = Mailbox("acme", "x@a.example")
    inventory = Inventory((TENANT,), _domains(), (mailbox,))
    findings = evaluate(inventory, [crashes, items, nothing], policy=Policy(), senders={}, now=NOW)
    subjects = {(f.check, f.subject) for f in findings}
    assert subjects == {
        ("test.crashes", "a.example"), ("test.crashes", "b.example"),
        ("test.items", "a.example"), ("test.items", "b.example"), ("test.nothing", "acme"),
    }
    (empty,) = [f for f in findings if f.check == "test.nothing"]
    assert empty.status is Status.ERROR and "no result" in empty.reason
