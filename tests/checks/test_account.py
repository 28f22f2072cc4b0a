"""account.ghost, account.inactive, account.never_used: through the evaluate stage and from export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.account import ghost_account, inactive_account, never_used_account, recovery_path
from checks.evaluate import evaluate
from checks.registry import Check, Policy
from scanner.adapters.files import FilesAdapter, read_roster
from scanner.model import (
    Coverage, Fact, FactState, Finding, Forward, ForwardMechanism, Inventory, Mailbox, MailboxKind, MailboxStatus,
    Person, PolicyException, Recovery, RecoveryKind, Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example",))
COLLECTED = tuple(
    Coverage("acme", fact, FactState.COLLECTED) for fact in (Fact.MAILBOX_OWNERS, Fact.MAILBOX_LAST_LOGIN, Fact.ROSTER)
)
NO_ROSTER = tuple(c for c in COLLECTED if c.fact is not Fact.ROSTER) + (
    Coverage("acme", Fact.ROSTER, FactState.UNSUPPORTED, "no roster configured"),
)
PEOPLE = (
    Person("ann@acme.example", "Ann"),
    Person("bob@acme.example", "Bob", date(2026, 6, 30)),
    Person("cat@acme.example", "Cat", date(2026, 12, 31)),
)


def _at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def _run(check: Check, *mailboxes: Mailbox, coverage=COLLECTED, people=PEOPLE, exceptions=()) -> dict[str, Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {"acme": tuple(people)}, tuple(exceptions), tuple(coverage))
    findings = evaluate(inventory, [check], policy=Policy(inactive_days=90), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def _exception(check: str, subject: str, expires: date) -> PolicyException:
    return PolicyException(check, subject, "handover in progress", "it@acme.example", expires)


# account.ghost

def test_ghost_active_mailbox_of_a_leaver_fails() -> None:
    finding = _run(ghost_account, Mailbox("acme", "bob@acme.example", last_login=_at("2026-07-02")))["bob@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"basis": "roster", "left": "2026-06-30", "last_login": "2026-07-02T00:00:00+00:00",
                                "signed_in_after_leaving": True}
    assert finding.remediation is not None and finding.remediation.action == "account.suspend"


def test_ghost_mailbox_whose_owners_all_departed_fails() -> None:
    findings = _run(
        ghost_account,
        Mailbox("acme", "bob@acme.example", status=MailboxStatus.DISABLED),
        Mailbox("acme", "dan@acme.example", status=MailboxStatus.SUSPENDED),
        Mailbox("acme", "hr@acme.example", MailboxKind.ROLE, owners=("bob@acme.example", "dan@acme.example")),
    )
    assert findings["hr@acme.example"].status is Status.FAIL
    assert findings["hr@acme.example"].evidence["owners"] == {
        "bob@acme.example": "left on 2026-06-30 (roster)", "dan@acme.example": "mailbox suspended",
    }


def test_ghost_passes_for_present_people_leavers_already_disabled_and_future_leavers() -> None:
    findings = _run(
        ghost_account,
        Mailbox("acme", "ann@acme.example"),
        Mailbox("acme", "bob@acme.example", status=MailboxStatus.DISABLED),
        Mailbox("acme", "cat@acme.example"),
        Mailbox("acme", "hr@acme.example", MailboxKind.ROLE, owners=("bob@acme.example", "ann@acme.example")),
        Mailbox("acme", "ops@acme.example", MailboxKind.SHARED, owners=("nobody@acme.example",)),
    )
    assert {f.status for f in findings.values()} == {Status.PASS}
    assert findings["bob@acme.example"].evidence == {"applies": False, "why": "the account is disabled"}
    # an owner nobody can find is not taken as having left: shared.ownerless reports that one
    assert "not found" in findings["ops@acme.example"].evidence["owners"]["nobody@acme.example"]


def test_ghost_without_a_roster_relies_on_owners_of_record_and_says_so() -> None:
    findings = _run(
        ghost_account,
        Mailbox("acme", "bob@acme.example"),
        Mailbox("acme", "dan@acme.example", status=MailboxStatus.DISABLED),
        Mailbox("acme", "hr@acme.example", MailboxKind.ROLE, owners=("dan@acme.example",)),
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED),
        coverage=NO_ROSTER, people=(),
    )
    assert findings["hr@acme.example"].status is Status.FAIL
    assert findings["hr@acme.example"].evidence["roster"] is False
    assert findings["bob@acme.example"].status is Status.UNSUPPORTED
    assert "no roster is configured" in findings["bob@acme.example"].reason
    assert findings["info@acme.example"].status is Status.PASS
    assert findings["info@acme.example"].evidence["roster"] is False


def test_ghost_errors_when_the_roster_failed() -> None:
    coverage = COLLECTED[:2] + (Coverage("acme", Fact.ROSTER, FactState.FAILED, "people.csv:3: bad date"),)
    finding = _run(ghost_account, Mailbox("acme", "ann@acme.example"), coverage=coverage)["ann@acme.example"]
    assert finding.status is Status.ERROR and "people.csv:3" in finding.reason


def test_ghost_excepted_and_expired_exception() -> None:
    findings = _run(
        ghost_account,
        Mailbox("acme", "bob@acme.example"),
        Mailbox("acme", "hr@acme.example", MailboxKind.ROLE, owners=("bob@acme.example",)),
        exceptions=[_exception("account.ghost", "bob@acme.example", date(2026, 12, 31)),
                    _exception("account.ghost", "hr@acme.example", date(2026, 11, 1))],
    )
    assert findings["bob@acme.example"].status is Status.EXCEPTED
    assert findings["hr@acme.example"].status is Status.FAIL
    assert "expired 2026-11-01" in findings["hr@acme.example"].evidence["expired_exception"]


def test_ghost_without_owners_data_relies_on_the_roster_and_is_unsupported_beyond_it() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, "no owners"),) + COLLECTED[1:]
    findings = _run(ghost_account, Mailbox("acme", "bob@acme.example"), Mailbox("acme", "stranger@acme.example"),
                    coverage=coverage)
    assert findings["bob@acme.example"].status is Status.FAIL  # the roster says bob left
    assert findings["bob@acme.example"].evidence["basis"] == "roster"
    assert findings["stranger@acme.example"].status is Status.UNSUPPORTED
    assert "no owners" in findings["stranger@acme.example"].reason


# account.inactive

def test_inactive_account_fails_after_inactive_days() -> None:
    findings = _run(
        inactive_account,
        Mailbox("acme", "ann@acme.example", last_login=_at("2026-08-26T08:59:00")),  # 91 days
        Mailbox("acme", "hr@acme.example", MailboxKind.ROLE, last_login=_at("2026-01-01")),
    )
    assert findings["ann@acme.example"].status is Status.FAIL
    assert findings["ann@acme.example"].evidence == {"last_login": "2026-08-26T08:59:00+00:00", "days_idle": 91,
                                                     "inactive_days": 90}
    assert findings["hr@acme.example"].status is Status.FAIL


def test_inactive_account_recently_used_passes() -> None:
    finding = _run(inactive_account, Mailbox("acme", "ann@acme.example", last_login=_at("2026-08-27T09:00:00")))
    assert finding["ann@acme.example"].status is Status.PASS  # exactly 90 days: not more than the threshold


def test_inactive_does_not_apply_to_shared_resource_pending_or_never_used() -> None:
    findings = _run(
        inactive_account,
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED),
        Mailbox("acme", "room@acme.example", MailboxKind.RESOURCE),
        Mailbox("acme", "new@acme.example", status=MailboxStatus.PENDING),
        Mailbox("acme", "bob@acme.example", status=MailboxStatus.SUSPENDED, last_login=_at("2025-01-01")),
        Mailbox("acme", "scanner@acme.example"),
    )
    for finding in findings.values():
        assert finding.status is Status.PASS and finding.evidence["applies"] is False, finding.subject
    assert "never_used" in findings["scanner@acme.example"].evidence["why"]


def test_inactive_excepted_expired_and_unsupported() -> None:
    old = _at("2026-01-01")
    findings = _run(
        inactive_account,
        Mailbox("acme", "ann@acme.example", last_login=old),
        Mailbox("acme", "cat@acme.example", last_login=old),
        exceptions=[_exception("account.inactive", "ann@acme.example", date(2027, 3, 31)),
                    _exception("account.inactive", "cat@acme.example", date(2026, 3, 31))],
    )
    assert findings["ann@acme.example"].status is Status.EXCEPTED
    assert findings["cat@acme.example"].status is Status.FAIL
    assert "expired 2026-03-31" in findings["cat@acme.example"].evidence["expired_exception"]
    coverage = (Coverage("acme", Fact.MAILBOX_LAST_LOGIN, FactState.UNSUPPORTED, "no 'last_login' column"),)
    finding = _run(inactive_account, Mailbox("acme", "ann@acme.example", last_login=old), coverage=coverage)
    assert finding["ann@acme.example"].status is Status.UNSUPPORTED


# account.never_used

def test_never_used_old_account_fails() -> None:
    finding = _run(never_used_account, Mailbox("acme", "scanner@acme.example", created=_at("2025-02-10")))
    assert finding["scanner@acme.example"].status is Status.FAIL
    assert finding["scanner@acme.example"].evidence == {
        "created": "2025-02-10T00:00:00+00:00", "last_login": None, "days_since_created": 653, "inactive_days": 90,
    }


def test_never_used_new_or_signed_in_account_passes() -> None:
    findings = _run(
        never_used_account,
        Mailbox("acme", "new@acme.example", created=_at("2026-11-16")),
        Mailbox("acme", "ann@acme.example", created=_at("2020-01-01"), last_login=_at("2026-11-20")),
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED, created=_at("2020-01-01")),
    )
    assert {f.status for f in findings.values()} == {Status.PASS}
    assert findings["new@acme.example"].evidence["days_since_created"] == 9
    assert findings["info@acme.example"].evidence["applies"] is False


def test_never_used_without_a_creation_date_is_unsupported() -> None:
    finding = _run(never_used_account, Mailbox("acme", "x@acme.example"))["x@acme.example"]
    assert finding.status is Status.UNSUPPORTED and "created" in finding.reason


def test_never_used_excepted_expired_and_unsupported() -> None:
    old = _at("2024-01-01")
    findings = _run(
        never_used_account,
        Mailbox("acme", "kiosk@acme.example", created=old),
        Mailbox("acme", "scanner@acme.example", created=old),
        exceptions=[_exception("account.never_used", "kiosk@acme.example", date(2027, 1, 1)),
                    _exception("account.never_used", "scanner@acme.example", date(2025, 1, 1))],
    )
    assert findings["kiosk@acme.example"].status is Status.EXCEPTED
    assert findings["scanner@acme.example"].status is Status.FAIL
    assert "expired 2025-01-01" in findings["scanner@acme.example"].evidence["expired_exception"]
    coverage = (Coverage("acme", Fact.MAILBOX_LAST_LOGIN, FactState.UNSUPPORTED, "not exported"),)
    finding = _run(never_used_account, Mailbox("acme", "kiosk@acme.example", created=old), coverage=coverage)
    assert finding["kiosk@acme.example"].status is Status.UNSUPPORTED


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text(
        "address,kind,status,created,last_login,owners\n"
        "ann@acme.example,user,active,2020-01-01,2026-11-20T08:00:00Z,\n"
        "bob@acme.example,user,active,2019-01-01,2026-05-01T08:00:00Z,\n"
        "scanner@acme.example,user,active,2025-02-10,,\n"
        "hr@acme.example,role,active,2020-01-01,2026-11-02T08:00:00Z,bob@acme.example\n",
        encoding="utf-8",
    )
    (tmp_path / "people.csv").write_text(
        "email,name,left\nann@acme.example,Ann,\nbob@acme.example,Bob,2026-06-30\n", encoding="utf-8"
    )
    collected = FilesAdapter(tmp_path).read(TENANT)
    people, _ = read_roster(tmp_path / "people.csv")
    coverage = collected.coverage + (Coverage("acme", Fact.ROSTER, FactState.COLLECTED),)
    inventory = Inventory((TENANT,), (), collected.mailboxes, {"acme": people}, (), coverage)
    findings = evaluate(inventory, [ghost_account, inactive_account, never_used_account], policy=Policy(),
                        senders={}, now=NOW)
    failing = {(f.check, f.subject) for f in findings if f.status is Status.FAIL}
    assert failing == {
        ("account.ghost", "bob@acme.example"),
        ("account.ghost", "hr@acme.example"),
        ("account.inactive", "bob@acme.example"),
        ("account.never_used", "scanner@acme.example"),
    }


def test_export_without_last_login_column_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text("address,kind,status,created\nann@acme.example,user,active,2020-01-01\n", encoding="utf-8")
    collected = FilesAdapter(tmp_path).read(TENANT)
    inventory = Inventory((TENANT,), (), collected.mailboxes, {}, (), collected.coverage)
    findings = evaluate(inventory, [inactive_account, never_used_account], policy=Policy(), senders={}, now=NOW)
    assert {f.status for f in findings} == {Status.UNSUPPORTED}
    assert all("last_login" in f.reason for f in findings)


# An alias (an address with no mailbox that only forwards): no account, so none of the three applies

ALIAS_FORWARD = (Forward("sales@partner.test", ForwardMechanism.ALIAS),)


def test_an_alias_is_never_a_ghost_inactive_or_never_used_account() -> None:
    old = _at("2020-01-01")
    aliases = (
        Mailbox("acme", "bob@acme.example", MailboxKind.ALIAS, created=old, forwards=ALIAS_FORWARD),  # bob left
        Mailbox("acme", "sales@acme.example", MailboxKind.ALIAS, created=old, forwards=ALIAS_FORWARD),
        Mailbox("acme", "old@acme.example", MailboxKind.ALIAS, MailboxStatus.DISABLED, created=old),
    )
    no_owners = (Coverage("acme", Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, "no owners"),) + COLLECTED[1:]
    failed_roster = COLLECTED[:2] + (Coverage("acme", Fact.ROSTER, FactState.FAILED, "people.csv unreadable"),)
    for check in (ghost_account, inactive_account, never_used_account):
        for coverage in (COLLECTED, no_owners, failed_roster, NO_ROSTER):
            findings = _run(check, *aliases, coverage=coverage)
            for finding in findings.values():
                assert finding.status is Status.PASS, (check.meta.id, finding.subject, finding.reason)
                assert finding.evidence["applies"] is False and "alias" in finding.evidence["why"]
    assert _run(ghost_account, *aliases)["bob@acme.example"].evidence["left"] == "2026-06-30"
    assert "left" not in _run(ghost_account, *aliases)["sales@acme.example"].evidence


# account.recovery_path

RECOVERY_COVERAGE = COLLECTED + (Coverage("acme", Fact.MAILBOX_RECOVERY, FactState.COLLECTED),)


def _paths(*mailboxes: Mailbox, coverage=RECOVERY_COVERAGE) -> dict[tuple[str, str], Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {"acme": PEOPLE}, (), coverage)
    return {(f.subject, f.item): f for f in evaluate(inventory, [recovery_path], policy=Policy(), senders={}, now=NOW)}



def test_shared_mailbox_with_outside_recovery_fails_and_masks_the_phone() -> None:
    shared = Mailbox("acme", "billing@acme.example", kind=MailboxKind.SHARED, recovery=(
        Recovery(RecoveryKind.EMAIL, "ann@acme.example"), Recovery(RecoveryKind.EMAIL, "ann.r@personal.example"),
        Recovery(RecoveryKind.PHONE, "+1 5555551234")))
    found = _paths(shared)
    assert set(found) == {("billing@acme.example", "email:ann.r@personal.example"),
                          ("billing@acme.example", "phone:…234")}
    phone = found[("billing@acme.example", "phone:…234")]
    assert phone.status is Status.FAIL and "5555551234" not in str(phone.evidence)


def test_leaver_with_recovery_inside_the_tenant_passes() -> None:
    bob = Mailbox("acme", "bob@acme.example", recovery=(Recovery(RecoveryKind.EMAIL, "it@acme.example"),))
    [finding] = _paths(bob).values()
    assert finding.status is Status.PASS and finding.evidence["basis"] == "roster"


def test_leaver_with_private_recovery_address_fails() -> None:
    bob = Mailbox("acme", "bob@acme.example", recovery=(Recovery(RecoveryKind.EMAIL, "bob@home.example"),))
    [finding] = _paths(bob).values()
    assert finding.status is Status.FAIL and finding.evidence["leads_to"] == "bob@home.example"


def test_current_person_with_private_recovery_is_not_judged() -> None:
    ann = Mailbox("acme", "ann@acme.example", recovery=(Recovery(RecoveryKind.PHONE, "+44 7700900123"),))
    [finding] = _paths(ann).values()
    assert finding.status is Status.PASS and finding.evidence["applies"] is False


def test_recovery_path_without_the_permission_is_unsupported_naming_it() -> None:
    coverage = COLLECTED + (
        Coverage("acme", Fact.MAILBOX_RECOVERY, FactState.UNSUPPORTED,
                 "needs the Graph application permission UserAuthenticationMethod.Read.All"),)
    shared = Mailbox("acme", "billing@acme.example", kind=MailboxKind.SHARED)
    [finding] = _paths(shared, coverage=coverage).values()
    assert finding.status is Status.UNSUPPORTED and "UserAuthenticationMethod.Read.All" in finding.reason
