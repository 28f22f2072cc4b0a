"""access.leaver_grant and access.mail_grant, through the evaluate stage (account.recovery_path: test_account)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from checks.access import leaver_grant, mail_grant
from checks.evaluate import evaluate
from checks.registry import Check, Policy
from remediation.actions import plan_for, reached
from scanner.model import (
    Coverage, Fact, FactState, Finding, Grant, GrantKind, Inventory, MailAccess, Mailbox, MailboxKind, MailboxStatus,
    Person, Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "google", ("acme.example",), allowed_apps=("zoom", "123-ok.apps"))
SURFACES = (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY, Fact.ROSTER)
COLLECTED = tuple(Coverage("acme", fact, FactState.COLLECTED) for fact in SURFACES)
PEOPLE = (Person("ann@acme.example", "Ann"), Person("bob@acme.example", "Bob", date(2026, 6, 30)))

READER = Grant(GrantKind.OAUTH, "cli-9", "Mail Sorter", MailAccess.READ,
               ("https://www.googleapis.com/auth/gmail.readonly",), "cli-9.apps")
PROFILE = Grant(GrantKind.OAUTH, "cli-2", "Calendar Helper", MailAccess.NONE, ("openid", "email"), "cli-2.apps")
ZOOM = Grant(GrantKind.OAUTH, "cli-3", "Zoom", MailAccess.FULL, ("https://mail.google.com/",), "zoom-id")
BY_ID = Grant(GrantKind.OAUTH, "cli-4", "Renamed app", MailAccess.FULL, ("https://mail.google.com/",), "123-OK.apps")
ASP = Grant(GrantKind.APP_PASSWORD, "17", "Thunderbird", MailAccess.FULL, created=datetime(2025, 1, 2, tzinfo=UTC))


def _run(check: Check, *mailboxes: Mailbox, coverage=COLLECTED, people=PEOPLE) -> list[Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {"acme": tuple(people)}, (), tuple(coverage))
    return evaluate(inventory, [check], policy=Policy(), senders={}, now=NOW)


def _by(findings: list[Finding]) -> dict[tuple[str, str], Finding]:
    return {(f.subject, f.item): f for f in findings}


# access.leaver_grant

def test_leaver_with_app_password_and_mail_grant_fails_per_grant() -> None:
    bob = Mailbox("acme", "bob@acme.example", grants=(READER, PROFILE, ASP))
    found = _by(_run(leaver_grant, bob))
    assert set(found) == {("bob@acme.example", "oauth:cli-9"), ("bob@acme.example", "app_password:17")}
    asp = found[("bob@acme.example", "app_password:17")]
    assert asp.status is Status.FAIL and asp.severity.value == "high"
    assert asp.evidence["departed"] == "left on 2026-06-30" and asp.evidence["client"] == "Thunderbird"
    assert asp.remediation is not None and asp.remediation.action == "grant.revoke"


def test_suspended_account_holding_an_app_password_fails() -> None:
    ann = Mailbox("acme", "ann@acme.example", status=MailboxStatus.SUSPENDED, grants=(ASP,))
    [finding] = _run(leaver_grant, ann)
    assert finding.status is Status.FAIL and finding.evidence["basis"] == "status"


def test_leaver_with_profile_grant_only_passes() -> None:
    [finding] = _run(leaver_grant, Mailbox("acme", "bob@acme.example", grants=(PROFILE,)))
    assert finding.status is Status.PASS and finding.evidence["grants"] == 1


def test_active_person_with_grants_is_not_judged() -> None:
    [finding] = _run(leaver_grant, Mailbox("acme", "ann@acme.example", grants=(READER, ASP)))
    assert finding.status is Status.PASS and finding.evidence["applies"] is False


def test_leaver_without_grants_is_unsupported_where_a_surface_is_not_offered() -> None:
    coverage = tuple(c for c in COLLECTED if c.fact is not Fact.MAILBOX_OAUTH_GRANTS) + (
        Coverage("acme", Fact.MAILBOX_OAUTH_GRANTS, FactState.UNSUPPORTED,
                 "mailcow lists only admin-registered OAuth clients, not grants per mailbox"),)
    [finding] = _run(leaver_grant, Mailbox("acme", "bob@acme.example"), coverage=coverage)
    assert finding.status is Status.UNSUPPORTED and "admin-registered OAuth clients" in finding.reason


def test_leaver_app_password_fails_even_where_oauth_is_not_offered() -> None:
    coverage = tuple(c for c in COLLECTED if c.fact is not Fact.MAILBOX_OAUTH_GRANTS) + (
        Coverage("acme", Fact.MAILBOX_OAUTH_GRANTS, FactState.UNSUPPORTED, "not offered"),)
    [finding] = _run(leaver_grant, Mailbox("acme", "bob@acme.example", grants=(ASP,)), coverage=coverage)
    assert finding.status is Status.FAIL


def test_leaver_whose_grants_failed_to_read_is_an_error_never_a_pass() -> None:
    coverage = COLLECTED + (Coverage("acme", Fact.MAILBOX_APP_PASSWORDS, FactState.FAILED,
                                     "403 insufficient_scope: needs mailboxes:read", "bob@acme.example"),)
    [finding] = _run(leaver_grant, Mailbox("acme", "bob@acme.example"), coverage=coverage)
    assert finding.status is Status.ERROR and "mailboxes:read" in finding.reason


def test_unreadable_roster_makes_an_active_account_an_error() -> None:
    coverage = tuple(c for c in COLLECTED if c.fact is not Fact.ROSTER) + (
        Coverage("acme", Fact.ROSTER, FactState.FAILED, "people.csv: cannot read"),)
    [finding] = _run(leaver_grant, Mailbox("acme", "ann@acme.example", grants=(ASP,)), coverage=coverage)
    assert finding.status is Status.ERROR and "roster" in finding.reason


def test_leaver_grant_finding_plans_a_revoke_that_cannot_be_undone() -> None:
    [finding] = _run(leaver_grant, Mailbox("acme", "bob@acme.example", grants=(ASP,)))
    plan = plan_for(finding)
    assert plan is not None and plan.action == "grant.revoke"
    assert plan.params == {"kind": "app_password", "grant": "17", "client": "Thunderbird", "client_id": ""}
    assert plan.issued == {"grants": ["17"]}
    assert reached("grant.revoke", {"grants": []}, plan.params) and not reached("grant.revoke", plan.issued, plan.params)


# access.mail_grant

def test_mail_grant_to_an_app_outside_allowed_apps_fails() -> None:
    found = _by(_run(mail_grant, Mailbox("acme", "ann@acme.example", grants=(READER, PROFILE, ZOOM, BY_ID, ASP))))
    assert list(found) == [("ann@acme.example", "oauth:cli-9")]
    finding = found[("ann@acme.example", "oauth:cli-9")]
    assert finding.status is Status.FAIL and finding.evidence["mail"] == "read"
    assert finding.evidence["allowed_apps"] == ["123-ok.apps", "zoom"]


def test_mail_grants_to_allowed_apps_pass() -> None:
    [finding] = _run(mail_grant, Mailbox("acme", "ann@acme.example", grants=(ZOOM, BY_ID, PROFILE, ASP)))
    assert finding.status is Status.PASS and finding.evidence["mail_grants"] == ["Renamed app", "Zoom"]


def test_mail_grant_is_unsupported_when_the_provider_does_not_offer_grants() -> None:
    coverage = tuple(c for c in COLLECTED if c.fact is not Fact.MAILBOX_OAUTH_GRANTS) + (
        Coverage("acme", Fact.MAILBOX_OAUTH_GRANTS, FactState.UNSUPPORTED,
                 "needs the admin.directory.user.security scope in the domain-wide delegation"),)
    [finding] = _run(mail_grant, Mailbox("acme", "ann@acme.example"), coverage=coverage)
    assert finding.status is Status.UNSUPPORTED and "admin.directory.user.security" in finding.reason


def test_mail_grant_skips_suspended_accounts() -> None:
    [finding] = _run(mail_grant, Mailbox("acme", "ann@acme.example", status=MailboxStatus.SUSPENDED, grants=(READER,)))
    assert finding.status is Status.PASS and finding.evidence["applies"] is False
