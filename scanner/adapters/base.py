"""The adapter protocol: what every provider adapter offers the collect stage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from scanner.model import Coverage, Fact, Mailbox, Tenant
from scanner.errors import AdapterError


PAGE = 500
"""Mailboxes per page handed to the collect stage (the Directory and Graph list pages are this size)."""

Emit = Callable[[Sequence[Mailbox]], Awaitable[None]]
"""Where an adapter sends its mailboxes, a page at a time; the scan stores each page as it comes."""


@dataclass(frozen=True, slots=True)
class Collected:
    """What an adapter read for one tenant besides its mailboxes: per-domain settings, coverage and problems.

    ``problems`` are things the adapter could not read (the tenant is partial); ``notes`` are remarks the
    operator should see that lose nothing (the tenant stays complete). ``mailboxes`` is filled only by
    ``collect_all``; an adapter sends its mailboxes through ``emit``.
    """

    mailboxes: tuple[Mailbox, ...] = ()
    catch_all: Mapping[str, str | None] = field(default_factory=dict)
    coverage: tuple[Coverage, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    tenant_domains: tuple[str, ...] | None = None
    """The domains the provider reports as the tenant's (lowercase; verified ones and domain aliases); None when
    the adapter offers no such list or could not read it (its TENANT_DOMAINS coverage says which)."""


class Adapter(Protocol):
    """A provider adapter: a name, the facts it can offer, and one async collect per tenant."""

    name: str
    capabilities: frozenset[Fact]

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Read the tenant, sending mailboxes to ``emit`` a page at a time as they are read (nothing kept once
        sent); a fact it could not read is FAILED coverage, not absence."""
        ...


class Pages:
    """Groups mailboxes read one at a time into pages for ``emit``; ``flush`` sends the last, short page."""

    def __init__(self, emit: Emit, size: int = PAGE) -> None:
        self._emit = emit
        self._size = size
        self._page: list[Mailbox] = []

    async def add(self, mailbox: Mailbox) -> None:
        """Queue one mailbox, sending the page when it is full."""
        self._page.append(mailbox)
        if len(self._page) >= self._size:
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued."""
        page, self._page = self._page, []
        if page:
            await self._emit(page)


async def emit_all(emit: Emit, mailboxes: Sequence[Mailbox]) -> None:
    """Send mailboxes an adapter holds already (an export file, a single API answer) in pages."""
    for start in range(0, len(mailboxes), PAGE):
        await emit(mailboxes[start : start + PAGE])


async def collect_all(adapter: Adapter, tenant: Tenant) -> Collected:
    """The whole tenant in memory, mailboxes included: for tests and small tools, not for scans."""
    found: list[Mailbox] = []

    async def keep(page: Sequence[Mailbox]) -> None:
        found.extend(page)

    collected = await adapter.collect(tenant, keep)
    return replace(collected, mailboxes=tuple(found))


class Refused(AdapterError):
    """The provider cannot perform a remediation action (or its undo); the message says why."""


REMEDY_STATES = {
    "forwarding.disable": "{'forwards': sorted targets, among params['targets'], that the mailbox still forwards to}",
    "catchall.disable": "{'catch_all': the catch-all target address, or None}",
    "account.suspend": "{'status': a MailboxStatus value}",
    "invite.revoke": "{'invite': True while an invitation is pending}",
    "invite.resend": "{'invite_sent': ISO 8601 time the pending invitation was (last) sent, or None}",
    "delegate.remove": "{'delegates': [params['delegate']] while it has access, else []}",
    "grant.revoke": "{'grants': [params['grant']] while the grant (params['kind']) is held, else []}",
}
"""The normalized state each remediation action reads, the same for every adapter.

An adapter that offers remediation has three async methods, each returning ``{"state": ..., "detail": ...}``
(``detail``: provider data the undo needs, plain JSON): ``remedy_read(action, subject, params)``,
``remedy_apply(action, subject, params, before)`` and ``remedy_restore(action, subject, params, before)``,
the last two reading the state back after writing. An action the provider cannot do raises ``Refused``.
"""
