"""mailbox.no_owner: owners of record from the provider and the roster, through the evaluate stage and export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.mailbox import mailbox_without_owner
from checks.registry import Policy
from scanner.adapters.files import FilesAdapter, read_roster
from scanner.model import (
    Coverage, Fact, FactState, Finding, Inventory, Mailbox, MailboxKind, MailboxStatus, Person, PolicyException,
    Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example",))
OWNERS = Coverage("acme", Fact.MAILBOX_OWNERS, FactState.COLLECTED)
ROSTER = Coverage("acme", Fact.ROSTER, FactState.COLLECTED)
PEOPLE = (Person("ann@acme.example", "Ann"), Person("bob@acme.example", "Bob", date(2026, 6, 30)))


def _run(*mailboxes: Mailbox, coverage=(OWNERS, ROSTER), people=PEOPLE, exceptions=()) -> dict[str, Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {"acme": tuple(people)}, tuple(exceptions), tuple(coverage))
    findings = evaluate(inventory, [mailbox_without_owner], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def _exception(subject: str, expires: date) -> PolicyException:
    return PolicyException("mailbox.no_owner", subject, "front desk device", "it@acme.example", expires)


def test_shared_role_or_resource_mailbox_without_owners_fails() -> None:
    findings = _run(
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED),
        Mailbox("acme", "noreply@acme.example", MailboxKind.ROLE),
        Mailbox("acme", "room@acme.example", MailboxKind.RESOURCE),
    )
    assert {f.status for f in findings.values()} == {Status.FAIL}
    assert findings["room@acme.example"].evidence == {"kind": "resource", "owners": []}


def test_user_mailbox_not_on_the_roster_fails() -> None:
    finding = _run(Mailbox("acme", "scanner@acme.example"))["scanner@acme.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence == {"kind": "user", "owners": [], "on_roster": False}


def test_user_on_the_roster_or_mailbox_with_owners_passes() -> None:
    findings = _run(
        Mailbox("acme", "ann@acme.example"),
        Mailbox("acme", "bob@acme.example", status=MailboxStatus.DISABLED),  # a leaver still has an owner of record
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED, owners=("ann@acme.example",)),
        Mailbox("acme", "tablet@acme.example", owners=("it@acme.example",)),
    )
    assert {f.status for f in findings.values()} == {Status.PASS}
    assert findings["ann@acme.example"].evidence == {"basis": "roster", "person": "Ann"}
    assert findings["tablet@acme.example"].evidence["owners"] == ["it@acme.example"]


def test_valid_exception_excepts_and_expired_one_fails() -> None:
    findings = _run(
        Mailbox("acme", "scanner@acme.example"),
        Mailbox("acme", "kiosk@acme.example"),
        exceptions=[_exception("scanner@acme.example", date(2027, 1, 31)),
                    _exception("kiosk@acme.example", date(2026, 10, 1))],
    )
    assert findings["scanner@acme.example"].status is Status.EXCEPTED
    assert findings["kiosk@acme.example"].status is Status.FAIL
    assert "expired 2026-10-01" in findings["kiosk@acme.example"].evidence["expired_exception"]


def test_unsupported_when_provider_does_not_report_owners() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, "no 'owners' column"), ROSTER)
    finding = _run(Mailbox("acme", "info@acme.example", MailboxKind.SHARED), coverage=coverage)["info@acme.example"]
    assert finding.status is Status.UNSUPPORTED and "no 'owners' column" in finding.reason


def test_without_a_roster_a_user_mailbox_without_owners_is_unsupported() -> None:
    coverage = (OWNERS, Coverage("acme", Fact.ROSTER, FactState.UNSUPPORTED, "no roster configured"))
    findings = _run(
        Mailbox("acme", "ann@acme.example"),
        Mailbox("acme", "info@acme.example", MailboxKind.SHARED),
        coverage=coverage, people=(),
    )
    assert findings["ann@acme.example"].status is Status.UNSUPPORTED
    assert "roster" in findings["ann@acme.example"].reason
    assert findings["info@acme.example"].status is Status.FAIL  # a shared mailbox needs listed owners anyway


def test_error_when_the_roster_failed_to_load() -> None:
    coverage = (OWNERS, Coverage("acme", Fact.ROSTER, FactState.FAILED, "people.csv: cannot read"))
    finding = _run(Mailbox("acme", "ann@acme.example"), coverage=coverage, people=())["ann@acme.example"]
    assert finding.status is Status.ERROR and "people.csv: cannot read" in finding.reason


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text(
        "address,kind,status,owners\n"
        "ann@acme.example,user,active,\n"
        "scanner@acme.example,user,active,\n"
        "info@acme.example,shared,active,ann@acme.example\n"
        "room@acme.example,resource,active,\n",
        encoding="utf-8",
    )
    (tmp_path / "people.csv").write_text("email,name,left\nann@acme.example,Ann,\n", encoding="utf-8")
    collected = FilesAdapter(tmp_path).read(TENANT)
    people, problems = read_roster(tmp_path / "people.csv")
    assert problems == ()
    findings = _run(*collected.mailboxes, coverage=collected.coverage + (ROSTER,), people=people)
    assert {s: f.status for s, f in findings.items()} == {
        "ann@acme.example": Status.PASS,
        "scanner@acme.example": Status.FAIL,
        "info@acme.example": Status.PASS,
        "room@acme.example": Status.FAIL,
    }


def test_export_without_an_owners_column_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text("address,kind\ninfo@acme.example,shared\n", encoding="utf-8")
    collected = FilesAdapter(tmp_path).read(TENANT)
    finding = _run(*collected.mailboxes, coverage=collected.coverage + (ROSTER,))["info@acme.example"]
    assert finding.status is Status.UNSUPPORTED and "owners" in finding.reason


def test_an_alias_needs_no_owner_of_record() -> None:
    for coverage in ((OWNERS, ROSTER), (OWNERS, Coverage("acme", Fact.ROSTER, FactState.FAILED, "unreadable"))):
        findings = _run(Mailbox("acme", "sales@acme.example", MailboxKind.ALIAS),
                        Mailbox("acme", "team@acme.example", MailboxKind.ALIAS, owners=("ann@acme.example",)),
                        coverage=coverage)
        assert findings["sales@acme.example"].status is Status.PASS
        assert findings["sales@acme.example"].evidence["applies"] is False
        assert "alias" in findings["sales@acme.example"].evidence["why"]
        assert findings["team@acme.example"].evidence["owners"] == ["ann@acme.example"]


class _CountedRoster(tuple):  # type: ignore[type-arg]
    """A roster that counts how often the whole of it is walked."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).walks += 1
        return super().__iter__()


def test_the_roster_is_read_once_per_run_not_once_per_mailbox() -> None:
    from dataclasses import replace

    from checks.account import ghost_account
    from checks.shared import ownerless_shared

    people = _CountedRoster(Person(f"p{n}@acme.example", f"P{n}") for n in range(300))
    _CountedRoster.walks = 0
    mailboxes = tuple(Mailbox("acme", f"p{n}@acme.example") for n in range(300))
    inventory = Inventory((TENANT,), (), mailboxes[:150], {"acme": people}, (), (OWNERS, ROSTER))
    checks = [mailbox_without_owner, ghost_account, ownerless_shared]
    found = evaluate(inventory, checks, policy=Policy(), senders={}, now=NOW)
    # A scan judges its mailboxes page by page, each page a copy of the inventory: the index carries over.
    found += evaluate(replace(inventory, mailboxes=mailboxes[150:]), checks, policy=Policy(), senders={}, now=NOW)
    assert len(found) == 900 and {f.status for f in found if f.check == "mailbox.no_owner"} == {Status.PASS}
    assert _CountedRoster.walks == 1
