"""shared.ownerless: owners of record and their standing, through the evaluate stage and export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.registry import Policy
from checks.shared import ownerless_shared
from scanner.adapters.files import FilesAdapter, read_roster
from scanner.model import (
    Coverage, Fact, FactState, Finding, Inventory, Mailbox, MailboxKind, MailboxStatus, Person, PolicyException,
    Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example",))
OWNERS = Coverage("acme", Fact.MAILBOX_OWNERS, FactState.COLLECTED)
ROSTER = Coverage("acme", Fact.ROSTER, FactState.COLLECTED)
PEOPLE = (
    Person("ann@acme.example", "Ann"),
    Person("bob@acme.example", "Bob", date(2026, 6, 30)),
    Person("cat@acme.example", "Cat", date(2026, 12, 31)),  # leaves next month: still here
)
STAFF = (
    Mailbox("acme", "ann@acme.example"),
    Mailbox("acme", "bob@acme.example", status=MailboxStatus.ACTIVE),
    Mailbox("acme", "cat@acme.example"),
    Mailbox("acme", "dan@acme.example", status=MailboxStatus.DISABLED),
    Mailbox("acme", "eve@acme.example", status=MailboxStatus.SUSPENDED),
)


def _shared(address: str, *owners: str, kind: MailboxKind = MailboxKind.SHARED, **kw) -> Mailbox:
    return Mailbox("acme", address, kind, owners=owners, **kw)


def _run(*mailboxes: Mailbox, coverage=(OWNERS, ROSTER), people=PEOPLE, exceptions=()) -> dict[str, Finding]:
    inventory = Inventory(
        (TENANT,), (), STAFF + mailboxes, {"acme": tuple(people)}, tuple(exceptions), tuple(coverage)
    )
    findings = evaluate(inventory, [ownerless_shared], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def test_shared_mailbox_without_owners_fails() -> None:
    finding = _run(_shared("info@acme.example"))["info@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"kind": "shared", "owners": {}}


def test_owners_who_all_left_or_are_disabled_fail() -> None:
    findings = _run(
        _shared("hr@acme.example", "bob@acme.example", kind=MailboxKind.ROLE),
        _shared("ops@acme.example", "dan@acme.example", "eve@acme.example"),
        _shared("old@acme.example", "gone@acme.example"),
    )
    for subject in ("hr@acme.example", "ops@acme.example", "old@acme.example"):
        assert findings[subject].status is Status.FAIL, subject
    assert findings["hr@acme.example"].evidence == {
        "kind": "role", "owners": {"bob@acme.example": "left on 2026-06-30 (roster)"}, "roster": True,
    }
    assert findings["ops@acme.example"].evidence["owners"] == {
        "dan@acme.example": "mailbox disabled", "eve@acme.example": "mailbox suspended",
    }
    assert "not found" in findings["old@acme.example"].evidence["owners"]["gone@acme.example"]


def test_one_present_owner_passes() -> None:
    findings = _run(
        _shared("sales@acme.example", "bob@acme.example", "ann@acme.example"),
        _shared("desk@acme.example", "cat@acme.example", kind=MailboxKind.ROLE),
    )
    assert findings["sales@acme.example"].status is Status.PASS
    assert findings["sales@acme.example"].evidence["owners"]["ann@acme.example"] == "mailbox active, on the roster"
    assert findings["desk@acme.example"].status is Status.PASS


def test_other_kinds_and_disabled_shared_mailboxes_do_not_apply() -> None:
    findings = _run(
        _shared("room@acme.example", kind=MailboxKind.RESOURCE),
        _shared("closed@acme.example", status=MailboxStatus.DISABLED),
    )
    for subject in ("ann@acme.example", "room@acme.example", "closed@acme.example"):
        assert findings[subject].status is Status.PASS
        assert findings[subject].evidence["applies"] is False, subject


def test_without_a_roster_owners_are_judged_by_their_mailbox() -> None:
    coverage = (OWNERS, Coverage("acme", Fact.ROSTER, FactState.UNSUPPORTED, "no roster configured"))
    findings = _run(
        _shared("hr@acme.example", "bob@acme.example"),
        _shared("ops@acme.example", "dan@acme.example"),
        coverage=coverage, people=(),
    )
    assert findings["hr@acme.example"].status is Status.PASS  # bob's mailbox is active; no roster says he left
    assert findings["hr@acme.example"].evidence["roster"] is False
    assert findings["ops@acme.example"].status is Status.FAIL


def test_error_when_the_roster_failed_unless_every_owner_is_disabled() -> None:
    coverage = (OWNERS, Coverage("acme", Fact.ROSTER, FactState.FAILED, "people.csv: cannot read"))
    findings = _run(
        _shared("hr@acme.example", "ann@acme.example"),
        _shared("ops@acme.example", "dan@acme.example"),
        coverage=coverage, people=(),
    )
    assert findings["hr@acme.example"].status is Status.ERROR
    assert "people.csv: cannot read" in findings["hr@acme.example"].reason
    assert findings["ops@acme.example"].status is Status.FAIL


def test_valid_exception_excepts_and_expired_one_fails() -> None:
    findings = _run(
        _shared("info@acme.example"),
        _shared("old@acme.example"),
        exceptions=[
            PolicyException("shared.ownerless", "info@acme.example", "being handed over", "it@acme.example",
                            date(2027, 1, 31)),
            PolicyException("shared.ownerless", "old@acme.example", "archive", "it@acme.example", date(2026, 1, 1)),
        ],
    )
    assert findings["info@acme.example"].status is Status.EXCEPTED
    assert findings["old@acme.example"].status is Status.FAIL
    assert "expired 2026-01-01" in findings["old@acme.example"].evidence["expired_exception"]


def test_unsupported_when_provider_does_not_report_owners() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, "owners not exported"), ROSTER)
    finding = _run(_shared("info@acme.example"), coverage=coverage)["info@acme.example"]
    assert finding.status is Status.UNSUPPORTED and "owners not exported" in finding.reason


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text(
        "address,kind,status,owners\n"
        "ann@acme.example,user,active,\n"
        "bob@acme.example,user,disabled,\n"
        "sales@acme.example,shared,active,ann@acme.example;bob@acme.example\n"
        "hr@acme.example,role,active,bob@acme.example\n",
        encoding="utf-8",
    )
    (tmp_path / "people.csv").write_text(
        "email,name,left\nann@acme.example,Ann,\nbob@acme.example,Bob,2026-03-31\n", encoding="utf-8"
    )
    collected = FilesAdapter(tmp_path).read(TENANT)
    people, _ = read_roster(tmp_path / "people.csv")
    inventory = Inventory((TENANT,), (), collected.mailboxes, {"acme": people}, (), collected.coverage + (ROSTER,))
    findings = {f.subject: f for f in evaluate(inventory, [ownerless_shared], policy=Policy(), senders={}, now=NOW)}
    assert findings["sales@acme.example"].status is Status.PASS
    assert findings["hr@acme.example"].status is Status.FAIL
    assert findings["hr@acme.example"].evidence["owners"] == {"bob@acme.example": "left on 2026-03-31 (roster)"}


def test_an_alias_is_not_a_shared_mailbox() -> None:
    findings = _run(_shared("sales@acme.example", kind=MailboxKind.ALIAS),
                    _shared("team@acme.example", "bob@acme.example", kind=MailboxKind.ALIAS))
    for subject in ("sales@acme.example", "team@acme.example"):
        assert findings[subject].status is Status.PASS
        assert findings[subject].evidence["applies"] is False and "alias" in findings[subject].evidence["why"]
