"""forwarding.external: built from inventory objects, and through the evaluate stage for coverage and exceptions."""

from __future__ import annotations

from datetime import UTC, date, datetime

from checks.evaluate import evaluate
from checks.forwarding import external_forwarding
from checks.registry import Policy
from scanner.model import (
    Coverage, Fact, FactState, Forward, ForwardMechanism, Inventory, Mailbox, MailboxKind, MailboxStatus,
    PolicyException, Status, Tenant,
)

NOW = datetime(2026, 11, 25, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example", "acme-mail.example"))
COLLECTED = (Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.COLLECTED),)


def _mailbox(address: str, *targets: str) -> Mailbox:
    return Mailbox("acme", address, forwards=tuple(Forward(t, ForwardMechanism.INBOX_RULE) for t in targets))


def _run(*mailboxes: Mailbox, coverage=COLLECTED, exceptions=()) -> dict[str, object]:
    inventory = Inventory((TENANT,), (), mailboxes, {}, tuple(exceptions), tuple(coverage))
    findings = evaluate(inventory, [external_forwarding], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def test_forward_to_outside_domain_fails() -> None:
    finding = _run(_mailbox("ann@acme.example", "ann@gmail.test", "ann@acme-mail.example"))["ann@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"targets": ["ann@gmail.test"], "mechanisms": ["inbox_rule"]}
    assert finding.remediation is not None and finding.remediation.action == "forwarding.disable"


def test_forward_inside_tenant_or_none_passes() -> None:
    findings = _run(_mailbox("ann@acme.example", "a@sub.acme.example"), _mailbox("bob@acme.example"))
    assert {f.status for f in findings.values()} == {Status.PASS}


def test_valid_exception_excepts_and_expired_one_does_not() -> None:
    findings = _run(
        _mailbox("ceo@acme.example", "ceo@board.test"),
        _mailbox("cfo@acme.example", "cfo@board.test"),
        exceptions=[
            PolicyException("forwarding.external", "ceo@acme.example", "board mirror", "it@acme.example", date(2027, 1, 31)),
            PolicyException("forwarding.external", "cfo@acme.example", "old", "it@acme.example", date(2026, 1, 31)),
        ],
    )
    assert findings["ceo@acme.example"].status is Status.EXCEPTED
    assert "board mirror" in findings["ceo@acme.example"].reason
    assert findings["cfo@acme.example"].status is Status.FAIL
    assert "expired 2026-01-31" in findings["cfo@acme.example"].evidence["expired_exception"]


def test_unsupported_when_provider_does_not_offer_forwards() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.UNSUPPORTED, "no forwards file"),)
    finding = _run(_mailbox("ann@acme.example", "x@out.test"), coverage=coverage)["ann@acme.example"]
    assert finding.status is Status.UNSUPPORTED and "no forwards file" in finding.reason


def test_error_when_forwards_failed_for_that_mailbox_only() -> None:
    coverage = COLLECTED + (
        Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.FAILED, "forwards.csv:4: bad target", "ann@acme.example"),
    )
    findings = _run(_mailbox("ann@acme.example"), _mailbox("bob@acme.example", "x@out.test"), coverage=coverage)
    assert findings["ann@acme.example"].status is Status.ERROR
    assert "forwards.csv:4" in findings["ann@acme.example"].reason
    assert findings["bob@acme.example"].status is Status.FAIL


def test_an_alias_is_judged_like_a_mailbox_and_says_it_is_an_alias() -> None:
    def alias(address: str, *targets: str) -> Mailbox:
        return Mailbox("acme", address, MailboxKind.ALIAS,
                       forwards=tuple(Forward(t, ForwardMechanism.ALIAS) for t in targets))

    coverage = (
        Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.FAILED, "sieve filters could not be read"),
        Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.COLLECTED, "an alias's targets (goto)", "sales@acme.example"),
    )
    findings = _run(alias("sales@acme.example", "sales@partner.test"),
                    alias("team@acme.example", "t@acme-mail.example"),
                    Mailbox("acme", "old@acme.example", MailboxKind.ALIAS, MailboxStatus.DISABLED),
                    _mailbox("ann@acme.example", "ann@gmail.test"))
    assert findings["sales@acme.example"].status is Status.FAIL
    assert findings["sales@acme.example"].evidence == {"targets": ["sales@partner.test"], "mechanisms": ["alias"],
                                                       "kind": "alias"}
    assert findings["sales@acme.example"].remediation.action == "forwarding.disable"
    assert findings["team@acme.example"].status is Status.PASS  # only inside the tenant
    assert findings["old@acme.example"].evidence == {"forwards": 0, "kind": "alias"}  # inactive: forwards nothing
    assert "kind" not in findings["ann@acme.example"].evidence
    # The sieve listing failed for the tenant's mailboxes; the alias's own forwards are still known.
    judged = _run(alias("sales@acme.example", "sales@partner.test"), _mailbox("ann@acme.example"), coverage=coverage)
    assert judged["sales@acme.example"].status is Status.FAIL
    assert judged["ann@acme.example"].status is Status.ERROR


def _run_in(tenant: Tenant, *mailboxes: Mailbox) -> dict[str, object]:
    inventory = Inventory((tenant,), (), mailboxes, {}, (), COLLECTED)
    findings = evaluate(inventory, [external_forwarding], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def test_forward_to_a_domain_the_provider_reports_as_the_tenants_passes_and_says_why() -> None:
    tenant = Tenant("acme", "microsoft", ("acme.example",), provider_domains=("acme.onmicrosoft.example",))
    findings = _run_in(tenant, _mailbox("ann@acme.example", "ann@acme.onmicrosoft.example", "a@acme.example"),
                       _mailbox("bob@acme.example", "bob@onmicrosoft.example"))
    ann = findings["ann@acme.example"]
    assert ann.status is Status.PASS
    assert ann.evidence == {"forwards": 2, "internal_by_provider": ["ann@acme.onmicrosoft.example"]}
    assert findings["bob@acme.example"].status is Status.FAIL  # a parent of the tenant's domain is not the tenant's


def test_a_fail_judged_without_the_providers_domain_list_says_so() -> None:
    tenant = Tenant("acme", "google", ("acme.example",), provider_domains_gap="domains.list answered 403")
    finding = _run_in(tenant, _mailbox("ann@acme.example", "ann@acme-alias.example"))["ann@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["internal_domains"] == (
        "configured domains only; the provider's own list could not be read: domains.list answered 403")
