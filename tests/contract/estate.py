"""A provider-neutral estate that each contract server publishes in its own API's shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from scanner.model import ForwardMechanism, MailboxKind, MailboxStatus

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class EstateMailbox:
    """One mailbox as the test author means it; each harness says how its provider shows it."""

    address: str
    display_name: str
    kind: MailboxKind = MailboxKind.USER
    status: MailboxStatus = MailboxStatus.ACTIVE
    created: datetime = NOW - timedelta(days=400)
    last_login: datetime | None = NOW - timedelta(days=2)
    forwards: tuple[tuple[str, ForwardMechanism], ...] = ()
    delegates: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    invited: datetime | None = None  # a pending invitation sent then


@dataclass(frozen=True)
class Estate:
    """A tenant's mailboxes and domain settings."""

    tenant: str
    domains: tuple[str, ...]
    mailboxes: tuple[EstateMailbox, ...]
    catch_all: dict[str, str | None] = field(default_factory=dict)


def standard_estate(users: int = 7) -> Estate:
    """A small estate with one of everything the adapters must read: forwards, delegates, shared, invites."""
    domain = "acme.example"
    boxes = [
        EstateMailbox(f"user{i}@{domain}", f"User {i}", last_login=NOW - timedelta(days=i * 30)) for i in range(users)
    ]
    boxes += [
        EstateMailbox("ana@acme.example", "Ana <script>alert(1)</script> Ruiz",
                      forwards=(("ana@personal.test", ForwardMechanism.AUTO_FORWARD),)),
        EstateMailbox("ben@acme.example", "Ben Ode",
                      forwards=(("ben@outside.test", ForwardMechanism.INBOX_RULE),), delegates=("pa@outside.test",)),
        EstateMailbox("never@acme.example", "Never Signed", last_login=None, created=NOW - timedelta(days=200)),
        EstateMailbox("old@acme.example", "Old Account", status=MailboxStatus.SUSPENDED),
        EstateMailbox("info@acme.example", "Info desk", kind=MailboxKind.SHARED, last_login=None,
                      owners=("ana@acme.example",)),
        EstateMailbox("new.hire@acme.example", "New Hire", status=MailboxStatus.PENDING, last_login=None,
                      created=NOW - timedelta(days=20), invited=NOW - timedelta(days=20)),
    ]
    return Estate("acme", (domain, "acme-mail.example"), tuple(boxes),
                  {domain: "info@acme.example", "acme-mail.example": None})
