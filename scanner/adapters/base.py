"""The adapter protocol: what every provider adapter offers the collect stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scanner.model import Coverage, Fact, Mailbox, Tenant


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
