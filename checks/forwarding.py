"""Forwarding checks: mail that leaves a mailbox for somewhere else.

An ``alias`` subject (an address with no mailbox that only forwards) is judged exactly like a mailbox:
its forwards are where its mail goes. Its evidence says ``kind: alias`` so a reviewer knows no mailbox
keeps a copy.
"""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Mailbox, MailboxKind, Scope, Severity


@check(
    id="forwarding.external",
    title="Mailbox forwards mail outside the tenant",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=("mailbox.forwards",),
    rationale="A forward to an outside address copies every new message beyond the tenant's control.",
    remediation="forwarding.disable",
)
def external_forwarding(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when any forward targets a domain the tenant does not own."""
    outside = [f for f in mailbox.forwards if not ctx.tenant.owns(f.target_domain)]
    kind = {"kind": mailbox.kind.value} if mailbox.kind is MailboxKind.ALIAS else {}
    if not outside:
        return Result.passed(forwards=len(mailbox.forwards), **kind)
    return Result.failed(
        targets=sorted({f.target for f in outside}),
        mechanisms=sorted({f.mechanism.value for f in outside}),
        **kind,
    )
