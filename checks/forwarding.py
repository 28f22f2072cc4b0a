"""Forwarding checks: mail that leaves a mailbox for somewhere else."""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Mailbox, Scope, Severity


@check(
    id="forwarding.external",
    title="Mailbox forwards mail outside the tenant",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=("mailbox.forwards",),
    rationale="A forward to an outside address copies every new message beyond the tenant's control.",
    references=("SCuBA GWS.GMAIL.11.1v0.6", "SCuBA MS.EXO.1.1v1", "CIS Microsoft 365 6.2.1"),
    remediation="forwarding.disable",
)
def external_forwarding(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when any forward targets a domain the tenant does not own."""
    outside = [f for f in mailbox.forwards if not ctx.tenant.owns(f.target_domain)]
    if not outside:
        return Result.passed(forwards=len(mailbox.forwards))
    return Result.failed(
        targets=sorted({f.target for f in outside}),
        mechanisms=sorted({f.mechanism.value for f in outside}),
    )
