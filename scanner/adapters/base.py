"""The adapter protocol: what every provider adapter offers the collect stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scanner.model import Coverage, Fact, Mailbox, Tenant
from scanner.errors import AdapterError


@dataclass(frozen=True, slots=True)
class Collected:
    """What an adapter read for one tenant: mailboxes, per-domain settings, coverage and problems."""

    mailboxes: tuple[Mailbox, ...] = ()
    catch_all: Mapping[str, str | None] = field(default_factory=dict)
    coverage: tuple[Coverage, ...] = ()
    problems: tuple[str, ...] = ()


class Adapter(Protocol):
    """A provider adapter: a name, the facts it can offer, and one async collect per tenant."""

    name: str
    capabilities: frozenset[Fact]

    async def collect(self, tenant: Tenant) -> Collected:
        """Read the tenant's mailboxes and settings; a fact it could not read is FAILED coverage, not absence."""
        ...


class Refused(AdapterError):
    """The provider cannot perform a remediation action (or its undo); the message says why."""


REMEDY_STATES = {
    "forwarding.disable": "{'forwards': sorted targets, among params['targets'], that the mailbox still forwards to}",
    "catchall.disable": "{'catch_all': the catch-all target address, or None}",
    "account.suspend": "{'status': a MailboxStatus value}",
    "invite.revoke": "{'invite': True while an invitation is pending}",
    "invite.resend": "{'invite_sent': ISO 8601 time the pending invitation was (last) sent, or None}",
    "delegate.remove": "{'delegates': [params['delegate']] while it has access, else []}",
}
"""The normalized state each remediation action reads, the same for every adapter.

An adapter that offers remediation has three async methods, each returning ``{"state": ..., "detail": ...}``
(``detail``: provider data the undo needs, plain JSON): ``remedy_read(action, subject, params)``,
``remedy_apply(action, subject, params, before)`` and ``remedy_restore(action, subject, params, before)``,
the last two reading the state back after writing. An action the provider cannot do raises ``Refused``.
"""
