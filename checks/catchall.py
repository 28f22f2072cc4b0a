"""Catch-all: a domain that accepts mail for addresses that do not exist.

Judges every domain, parked ones included (a parked domain should accept nothing at all). The
provider reports the catch-all target (``Domain.catch_all``) or none.
"""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Domain, Fact, Scope, Severity, domain_of


@check(
    id="catchall.enabled",
    title="Domain delivers mail for unknown recipients (catch-all)",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=(Fact.DOMAIN_CATCH_ALL,),
    rationale=(
        "A catch-all swallows every misspelt address instead of bouncing it, so senders never learn of "
        "their mistake, one mailbox quietly collects other people's mail, and spam aimed at guessed "
        "addresses is accepted."
    ),
    remediation="catchall.disable",
)
def catchall_enabled(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the domain delivers mail for unknown addresses to a mailbox."""
    if domain.catch_all is None:
        return Result.passed(catch_all=None)
    target = domain.catch_all
    mailbox = ctx.inventory.mailbox(target)
    return Result.failed(
        catch_all=target,
        target_inside_tenant=ctx.tenant.owns(domain_of(target)),
        target_mailbox=mailbox.status.value if mailbox is not None else "not in the inventory",
    )
