"""invite.stale and invite.expired: through the evaluate stage and from export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.invites import expired_invite, stale_invite
from checks.registry import Check, Policy
from scanner.adapters.files import FilesAdapter
from scanner.model import (
    Coverage, Fact, FactState, Finding, Inventory, Invite, Mailbox, MailboxKind, MailboxStatus, PolicyException,
    Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example",))
COLLECTED = (Coverage("acme", Fact.MAILBOX_INVITES, FactState.COLLECTED),)


def _at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def _invited(address: str, sent: str, expires: str | None = None) -> Mailbox:
    invite = Invite(_at(sent), _at(expires) if expires else None)
    return Mailbox("acme", address, status=MailboxStatus.PENDING, invite=invite)


def _run(check: Check, *mailboxes: Mailbox, coverage=COLLECTED, exceptions=()) -> dict[str, Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {}, tuple(exceptions), tuple(coverage))
    findings = evaluate(inventory, [check], policy=Policy(invite_stale_days=7), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def _exception(check: str, subject: str, expires: date) -> PolicyException:
    return PolicyException(check, subject, "waiting for the hire's start date", "hr@acme.example", expires)


def test_stale_invite_fails_and_suggests_resending() -> None:
    finding = _run(stale_invite, _invited("jo@acme.example", "2026-11-03T10:30:00", "2026-12-03"))["jo@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"sent": "2026-11-03T10:30:00+00:00", "expires": "2026-12-03T00:00:00+00:00",
                                "days_pending": 21, "invite_stale_days": 7}
    assert finding.remediation is not None and finding.remediation.action == "invite.resend"


def test_fresh_invite_or_none_passes_stale() -> None:
    findings = _run(stale_invite, _invited("new@acme.example", "2026-11-22"), Mailbox("acme", "ann@acme.example"))
    assert findings["new@acme.example"].status is Status.PASS
    assert findings["ann@acme.example"].evidence == {"applies": False, "why": "no pending invite"}


def test_expired_invite_fails_even_when_also_stale() -> None:
    mailbox = _invited("pri@acme.example", "2026-10-01T09:00:00", "2026-10-15T09:00:00")
    assert _run(stale_invite, mailbox)["pri@acme.example"].status is Status.FAIL
    finding = _run(expired_invite, mailbox)["pri@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["days_since_expiry"] == 41
    assert finding.remediation is not None and finding.remediation.action == "invite.revoke"


def test_unexpired_invite_passes_and_one_without_an_expiry_is_unsupported() -> None:
    findings = _run(
        expired_invite,
        _invited("jo@acme.example", "2026-11-03", "2026-12-03"),
        _invited("ever@acme.example", "2025-01-01"),
        Mailbox("acme", "ann@acme.example"),
    )
    assert findings["jo@acme.example"].status is Status.PASS
    assert findings["ann@acme.example"].status is Status.PASS
    assert findings["ever@acme.example"].status is Status.UNSUPPORTED  # when it lapses is unknown: never a pass
    assert "no expiry" in findings["ever@acme.example"].reason


def test_excepted_and_expired_exception_for_both_checks() -> None:
    for check, function in (("invite.stale", stale_invite), ("invite.expired", expired_invite)):
        findings = _run(
            function,
            _invited("a@acme.example", "2026-09-01", "2026-09-15"),
            _invited("b@acme.example", "2026-09-01", "2026-09-15"),
            exceptions=[_exception(check, "a@acme.example", date(2026, 12, 1)),
                        _exception(check, "b@acme.example", date(2026, 11, 24))],
        )
        assert findings["a@acme.example"].status is Status.EXCEPTED, check
        assert findings["b@acme.example"].status is Status.FAIL, check
        assert "expired 2026-11-24" in findings["b@acme.example"].evidence["expired_exception"]


def test_unsupported_when_provider_does_not_report_invites() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_INVITES, FactState.UNSUPPORTED, "the export has no invites file"),)
    for function in (stale_invite, expired_invite):
        finding = _run(function, Mailbox("acme", "ann@acme.example"), coverage=coverage)["ann@acme.example"]
        assert finding.status is Status.UNSUPPORTED and "no invites file" in finding.reason


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text(
        "address,kind,status\nnew@acme.example,user,pending\njo@acme.example,user,pending\npri@acme.example,user,pending\n"
        "ann@acme.example,user,active\n",
        encoding="utf-8",
    )
    (tmp_path / "invites.csv").write_text(
        "address,sent,expires\n"
        "new@acme.example,2026-11-22T14:00:00Z,2026-12-06T14:00:00Z\n"
        "jo@acme.example,2026-11-03T10:30:00Z,2026-12-03T10:30:00Z\n"
        "pri@acme.example,2026-10-01T09:00:00Z,2026-10-15T09:00:00Z\n",
        encoding="utf-8",
    )
    collected = FilesAdapter(tmp_path).read(TENANT)
    inventory = Inventory((TENANT,), (), collected.mailboxes, {}, (), collected.coverage)
    findings = evaluate(inventory, [stale_invite, expired_invite], policy=Policy(), senders={}, now=NOW)
    failing = {(f.check, f.subject) for f in findings if f.status is Status.FAIL}
    assert failing == {("invite.stale", "jo@acme.example"), ("invite.stale", "pri@acme.example"),
                       ("invite.expired", "pri@acme.example")}
    assert len(findings) == 8


def test_export_without_invites_file_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text("address,kind,status\nann@acme.example,user,active\n", encoding="utf-8")
    collected = FilesAdapter(tmp_path).read(TENANT)
    inventory = Inventory((TENANT,), (), collected.mailboxes, {}, (), collected.coverage)
    findings = evaluate(inventory, [stale_invite, expired_invite], policy=Policy(), senders={}, now=NOW)
    assert {f.status for f in findings} == {Status.UNSUPPORTED}


def test_an_alias_has_no_invite_to_judge() -> None:
    for check in (stale_invite, expired_invite):
        finding = _run(check, Mailbox("acme", "sales@acme.example", MailboxKind.ALIAS))["sales@acme.example"]
        assert finding.status is Status.PASS and finding.evidence == {"applies": False, "why": "no pending invite"}
