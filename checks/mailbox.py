"""Ownership: every mailbox has an owner of record, a person or a role, who answers for it.

How an owner of record is established (shared.ownerless and account.ghost read the same rules):

- the owners the provider lists for the mailbox (``Mailbox.owners``: people or role addresses);
- for a ``user`` mailbox, also its own person, when the tenant's roster lists the mailbox's address.
  A user mailbox on the roster has an owner of record even after the person left (account.ghost
  judges leaving); a user mailbox neither on the roster nor with listed owners (a scanner, a training
  or temporary account) has none.

So in the demo every user mailbox on ``people.csv`` passes, and shared, role and resource mailboxes
pass only with a non-empty ``owners`` column. Without a roster a user mailbox with no listed owner
cannot be judged: it is ``unsupported`` for that mailbox; a roster that failed to load gives ``error``.

An owner's standing: ``left`` (the roster's leave date is today or earlier), ``disabled`` or
``suspended`` (their mailbox's status), ``present`` (an active or pending mailbox, or on the roster
and not left), or ``not found`` (no mailbox in the inventory and not on the roster). The first three
are departures. mailbox.no_owner applies to every mailbox, whatever its kind and status; an ``alias``
(an address with no mailbox that only forwards) holds no mail and has no account, so it passes with
``applies: false`` (its listed owners, if any, in the evidence): what it forwards is forwarding.external's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from checks.registry import Result, RunContext, check
from scanner.model import Fact, FactState, Mailbox, MailboxKind, MailboxStatus, Person, Scope, Severity


class Standing(enum.Enum):
    """Whether an owner of record is still around to answer for a mailbox."""

    PRESENT = "present"
    LEFT = "left"
    DISABLED = "disabled"
    SUSPENDED = "suspended"
    NOT_FOUND = "not found"


DEPARTED = frozenset({Standing.LEFT, Standing.DISABLED, Standing.SUSPENDED})
"""Standings that show the owner is gone, on the roster's or the provider's word."""


@dataclass(frozen=True, slots=True)
class RosterView:
    """The tenant's roster as the checks see it: whether it was read, and its people by address."""

    state: FactState
    reason: str = ""
    people: Mapping[str, Person] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        """True when the roster was read."""
        return self.state is FactState.COLLECTED


def roster_view(ctx: RunContext) -> RosterView:
    """The tenant's roster with its coverage; no coverage entry at all counts as a failure, never as 'none'.

    Built once per tenant and inventory (four checks ask for it for each mailbox)."""
    inventory = ctx.inventory
    return inventory.index.derived("roster", ctx.tenant.name, (inventory.coverage, inventory.people),
                                   lambda: _roster_view(ctx))


def _roster_view(ctx: RunContext) -> RosterView:
    entry = ctx.coverage(Fact.ROSTER)
    if entry is None:
        return RosterView(FactState.FAILED, "no roster coverage was recorded for this tenant")
    if entry.state is not FactState.COLLECTED:
        return RosterView(entry.state, entry.reason)
    return RosterView(FactState.COLLECTED, people=ctx.inventory.roster(ctx.tenant.name))


def owner_standing(address: str, ctx: RunContext, roster: RosterView) -> tuple[Standing, str]:
    """An owner's standing and the words for it, from the roster and the owner's own mailbox."""
    address = address.lower()
    person = roster.people.get(address)
    if person is not None and person.left is not None and person.has_left(ctx.today):
        return Standing.LEFT, f"left on {person.left.isoformat()} (roster)"
    mailbox = ctx.inventory.mailbox(address)
    if mailbox is not None and mailbox.status in (MailboxStatus.DISABLED, MailboxStatus.SUSPENDED):
        return Standing(mailbox.status.value), f"mailbox {mailbox.status.value}"
    if mailbox is not None:
        return Standing.PRESENT, f"mailbox {mailbox.status.value}" + (", on the roster" if person else "")
    if person is not None:
        return Standing.PRESENT, "on the roster"
    return Standing.NOT_FOUND, "not found: no mailbox in the inventory" + (
        " and not on the roster" if roster.known else " (no roster to look in)"
    )


def owner_standings(mailbox: Mailbox, ctx: RunContext, roster: RosterView) -> dict[str, tuple[Standing, str]]:
    """The standing of each listed owner of a mailbox."""
    return {owner: owner_standing(owner, ctx, roster) for owner in mailbox.owners}


@check(
    id="mailbox.no_owner",
    title="Mailbox has no owner of record",
    severity=Severity.LOW,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_OWNERS,),
    rationale="A mailbox nobody answers for is never reviewed or offboarded, and its misuse goes unnoticed.",
)
def mailbox_without_owner(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when a mailbox lists no owner and, for a user mailbox, its address is not on the roster."""
    if mailbox.kind is MailboxKind.ALIAS:
        return Result.passed(applies=False, owners=list(mailbox.owners),
                             why="an alias holds no mail and has no account; what it forwards is judged by "
                                 "forwarding.external")
    if mailbox.owners:
        return Result.passed(owners=list(mailbox.owners), basis="owners listed by the provider")
    if mailbox.kind is not MailboxKind.USER:
        return Result.failed(kind=mailbox.kind.value, owners=[])
    roster = roster_view(ctx)
    if roster.state is FactState.FAILED:
        return Result.error(f"the roster could not be read ({roster.reason}), so this user mailbox's person is unknown")
    if roster.state is FactState.UNSUPPORTED:
        return Result.unsupported(
            "no roster is configured and the mailbox lists no owner: a user mailbox's owner of record is its "
            "person on the roster"
        )
    person = roster.people.get(mailbox.address)
    if person is not None:
        return Result.passed(basis="roster", person=person.name or person.email)
    return Result.failed(kind=mailbox.kind.value, owners=[], on_roster=False)
