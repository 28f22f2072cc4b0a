"""The change log: scripted runs through the store give exactly the expected rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from scanner.store.changes import FieldChange, object_changes
from scanner.model import (
    DnsAnswer,
    DnsFacts,
    Domain,
    Forward,
    ForwardMechanism,
    Inventory,
    Invite,
    Mailbox,
    Outcome,
    PolicyException,
)
from scanner.pipeline import snapshot_items
from scanner.store.database import CONFIG_SCOPE, Store

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _dns(dmarc: str | None = "v=DMARC1; p=reject", *, failed: bool = False) -> DnsFacts:
    if failed:
        answer = DnsAnswer("_dmarc.acme.example", "TXT", Outcome.FAILED, error="timeout")
    elif dmarc is None:
        answer = DnsAnswer("_dmarc.acme.example", "TXT", Outcome.NXDOMAIN)
    else:
        answer = DnsAnswer("_dmarc.acme.example", "TXT", Outcome.ANSWER, (dmarc,))
    mx = DnsAnswer("acme.example", "MX", Outcome.ANSWER, ("10 mx1.acme.example.",))
    return DnsFacts({"dmarc": answer, "mx": mx})


def _inventory(*, dmarc: DnsFacts | None = None, mailboxes: tuple[Mailbox, ...] = (), catch_all: str | None = None,
               exceptions: tuple[PolicyException, ...] = ()) -> Inventory:
    domain = Domain("acme.example", "acme", catch_all=catch_all, dns=dmarc or _dns())
    return Inventory(domains=(domain,), mailboxes=mailboxes, exceptions=exceptions)


ANN = Mailbox("acme", "ann@acme.example", display_name="Ann")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh store, on SQLite and on PostgreSQL (the ``store_url`` fixture is parametrized over both)."""
    opened = Store(store_url)
    yield opened
    opened.close()


def _scan(store: Store, n: int, inventory: Inventory, complete: tuple[str, ...] = ("acme",)) -> str:
    run_id = f"run{n}"
    store.start_run(run_id, T0 + timedelta(days=n), "digest", "test")
    store.save_snapshot(run_id, snapshot_items(inventory), complete=(*complete, CONFIG_SCOPE))
    store.finish_run(run_id, T0 + timedelta(days=n), "complete" if complete else "partial", {})
    return run_id


def _log(store: Store, **filters) -> list[tuple]:
    rows = [(c.run_id, c.object_type, c.object_key, c.field, c.action, c.before, c.after)
            for c in store.changes(**filters)]
    return sorted(rows, key=lambda r: r[:5])


def test_scripted_runs_give_exactly_the_expected_change_log(store: Store) -> None:
    exception = PolicyException("forwarding.external", "ann@acme.example", "mirror", "it@acme.example", date(2027, 1, 1))
    _scan(store, 1, _inventory(mailboxes=(ANN,)))
    assert store.changes() == []  # the first sighting of a tenant is its baseline, not a change
    forwarded = Mailbox("acme", "ann@acme.example", display_name="Ann",
                        forwards=(Forward("ann@gmail.test", ForwardMechanism.INBOX_RULE),))
    bob = Mailbox("acme", "bob@acme.example", invite=Invite(T0, None))
    _scan(store, 2, _inventory(dmarc=_dns("v=DMARC1; p=none"), mailboxes=(forwarded, bob), exceptions=(exception,)))
    _scan(store, 3, _inventory(dmarc=_dns("v=DMARC1; p=none"), mailboxes=(forwarded,), catch_all="all@acme.example",
                               exceptions=(exception,)))
    assert _log(store) == [
        ("run2", "dns", "acme.example", "dmarc", "changed", ["v=DMARC1; p=reject"], ["v=DMARC1; p=none"]),
        ("run2", "exception", "forwarding.external/ann@acme.example", "", "added", None,
         {"approved_by": "it@acme.example", "expires": "2027-01-01", "reason": "mirror"}),
        ("run2", "forward", "ann@acme.example -> ann@gmail.test", "", "added", None, {"mechanism": "inbox_rule"}),
        ("run2", "invite", "bob@acme.example", "", "added", None, {"expires": None, "sent": T0.isoformat()}),
        ("run2", "mailbox", "bob@acme.example", "", "added", None,
         {"created": None, "delegates": [], "display_name": "", "kind": "user", "owners": [], "status": "active"}),
        ("run3", "domain", "acme.example", "catch_all", "changed", None, "all@acme.example"),
        ("run3", "invite", "bob@acme.example", "", "removed", {"expires": None, "sent": T0.isoformat()}, None),
        ("run3", "mailbox", "bob@acme.example", "", "removed",
         {"created": None, "delegates": [], "display_name": "", "kind": "user", "owners": [], "status": "active"}, None),
    ]
    # The three questions: what changed on this domain lately, when did forwarding appear on this mailbox,
    # and which runs touched this inbox.
    assert {c.field or c.object_type for c in store.changes(domain="acme.example", since=T0 + timedelta(days=3))} == {
        "catch_all", "invite", "mailbox"}
    forward = [c for c in store.changes(subject="ann@acme.example") if c.object_type == "forward"]
    assert [(c.run_id, c.at) for c in forward] == [("run2", T0 + timedelta(days=2))]
    assert {c.run_id for c in store.changes(subject="bob@acme.example")} == {"run2", "run3"}
    assert store.changes(tenant="other") == []


def test_partial_run_records_no_change_and_no_deletion(store: Store) -> None:
    _scan(store, 1, _inventory(mailboxes=(ANN,)))
    _scan(store, 2, _inventory(dmarc=_dns("v=DMARC1; p=none"), mailboxes=()), complete=())
    assert store.changes() == []
    assert ("mailbox", "acme/ann@acme.example") in store.snapshot("run2")
    _scan(store, 3, _inventory(mailboxes=(ANN,)))
    assert store.changes() == []  # run 3 saw what run 1 saw: nothing changed between complete views


def test_failed_lookup_is_not_a_change_and_the_last_known_answer_is_compared(store: Store) -> None:
    _scan(store, 1, _inventory())
    _scan(store, 2, _inventory(dmarc=_dns(failed=True)))
    assert store.changes() == []
    _scan(store, 3, _inventory(dmarc=_dns("v=DMARC1; p=quarantine")))
    assert _log(store) == [
        ("run3", "dns", "acme.example", "dmarc", "changed", ["v=DMARC1; p=reject"], ["v=DMARC1; p=quarantine"]),
    ]
    _scan(store, 4, _inventory(dmarc=_dns(None)))
    assert _log(store, run_id="run4") == [
        ("run4", "dns", "acme.example", "dmarc", "changed", ["v=DMARC1; p=quarantine"], []),
    ]


def test_last_login_is_activity_not_a_change(store: Store) -> None:
    _scan(store, 1, _inventory(mailboxes=(ANN,)))
    seen = Mailbox("acme", "ann@acme.example", display_name="Ann", last_login=T0)
    _scan(store, 2, _inventory(mailboxes=(seen,)))
    assert store.changes() == []
    assert store.snapshot("run2")[("mailbox", "acme/ann@acme.example")]["last_login"] == T0.isoformat()


def test_remediation_job_writes_into_the_same_history(store: Store) -> None:
    _scan(store, 1, _inventory(mailboxes=(ANN,)))
    change = FieldChange("forward", "ann@acme.example -> ann@gmail.test", "acme", "acme.example", "ann@acme.example",
                         "", "removed", {"mechanism": "inbox_rule"}, None)
    store.record_job_change("job-7", T0 + timedelta(days=5), change)
    [row] = store.changes(subject="ann@acme.example")
    assert (row.source, row.job_id, row.run_id, row.action) == ("job", "job-7", None, "removed")


def test_object_changes_per_field() -> None:
    before = {"address": "a@x.example", "tenant": "t", "display_name": "A", "status": "active", "forwards": []}
    after = {**before, "status": "suspended"}
    assert object_changes("mailbox", "t/a@x.example", before, after) == [
        FieldChange("mailbox", "a@x.example", "t", "x.example", "a@x.example", "status", "changed", "active", "suspended")
    ]
    assert object_changes("mailbox", "t/a@x.example", before, before) == []


def test_a_new_grant_is_a_change_its_last_use_is_not() -> None:
    from datetime import UTC, datetime

    from scanner.model import Grant, GrantKind, MailAccess, Mailbox, Recovery, RecoveryKind, mailbox_from_plain, plain

    box = Mailbox("t", "a@x.example")
    held = Mailbox("t", "a@x.example", grants=(Grant(GrantKind.APP_PASSWORD, "7", "Phone", MailAccess.FULL, ("imap",),
                                                     last_used=datetime(2026, 11, 1, tzinfo=UTC)),),
                   recovery=(Recovery(RecoveryKind.EMAIL, "a@home.test"),))
    assert mailbox_from_plain(plain(held)) == held  # the store keeps and gives back the grants
    before, after = plain(box), plain(held)
    added = object_changes("mailbox", "t/a@x.example", before, after)  # type: ignore[arg-type]
    assert [(c.object_type, c.object_key, c.action) for c in added] == [
        ("grant", "a@x.example app_password 7", "added"), ("recovery", "a@x.example email a@home.test", "added")]
    used = plain(Mailbox("t", "a@x.example", grants=(Grant(GrantKind.APP_PASSWORD, "7", "Phone", MailAccess.FULL,
                                                           ("imap",), last_used=datetime(2026, 11, 20, tzinfo=UTC)),),
                         recovery=held.recovery))
    assert object_changes("mailbox", "t/a@x.example", after, used) == []  # type: ignore[arg-type]
