"""Shared mailboxes: a shared or role mailbox needs an owner who is still around.

Applies to ``shared`` and ``role`` mailboxes that are not disabled or suspended; any other mailbox
passes with ``{"applies": false, "why": ...}``. Owners of record and their standing follow
checks/mailbox.py. The mailbox fails when it lists no owner, or when none of its owners is
``present``: each has left per the roster, has a disabled or suspended mailbox, or cannot be found
at all (an owner nobody can find answers for nothing). Without a roster, leaving is judged from the
owners' mailbox status alone and the evidence says ``"roster": false``; a roster that failed to load
gives ``error`` unless every owner is already gone by mailbox status.
"""

from __future__ import annotations

from checks.mailbox import DEPARTED, Standing, owner_standings, roster_view
from checks.registry import Result, RunContext, check
from scanner.model import Fact, FactState, Mailbox, MailboxKind, MailboxStatus, Scope, Severity

KINDS = (MailboxKind.SHARED, MailboxKind.ROLE)


@check(
    id="shared.ownerless",
    title="Shared or role mailbox has no current owner",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_OWNERS,),
    rationale=(
        "A shared mailbox whose owners have all left keeps receiving mail, and often passwords and invoices, "
        "with nobody to notice misuse or approve who may read it."
    ),
)
def ownerless_shared(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when a shared or role mailbox has no owner of record who is still present."""
    if mailbox.kind is MailboxKind.ALIAS:
        return Result.passed(applies=False, why="an alias, not a mailbox: it holds no mail for owners to answer for")
    if mailbox.kind not in KINDS:
        return Result.passed(applies=False, why=f"a {mailbox.kind.value} mailbox: only shared and role mailboxes are judged")
    if mailbox.status in (MailboxStatus.DISABLED, MailboxStatus.SUSPENDED):
        return Result.passed(applies=False, why=f"the mailbox is {mailbox.status.value}: nobody can use it")
    if not mailbox.owners:
        return Result.failed(kind=mailbox.kind.value, owners={})
    roster = roster_view(ctx)
    standings = owner_standings(mailbox, ctx, roster)
    if roster.state is FactState.FAILED and any(s not in DEPARTED for s, _ in standings.values()):
        return Result.error(f"the roster could not be read ({roster.reason}), so whether the owners left is unknown")
    evidence = {"kind": mailbox.kind.value, "owners": {o: text for o, (_, text) in standings.items()},
                "roster": roster.known}
    if any(s is Standing.PRESENT for s, _ in standings.values()):
        return Result.passed(**evidence)
    return Result.failed(**evidence)
