"""Forwarding checks: mail that leaves a mailbox for somewhere else.

An ``alias`` subject (an address with no mailbox that only forwards) is judged exactly like a mailbox:
its forwards are where its mail goes. Its evidence says ``kind: alias`` so a reviewer knows no mailbox
keeps a copy.
"""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Mailbox, MailboxKind, Scope, Severity, domain_of


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
        return Result.passed(forwards=len(mailbox.forwards), **kind, **provider_internal(
            [f.target for f in mailbox.forwards], ctx))
    return Result.failed(
        targets=sorted({f.target for f in outside}),
        mechanisms=sorted({f.mechanism.value for f in outside}),
        **kind,
        **configured_only(ctx),
    )


def provider_internal(addresses: list[str], ctx: RunContext) -> dict[str, object]:
    """Evidence naming the addresses that are internal only because the provider lists their domain as the tenant's."""
    found = sorted({a for a in addresses if ctx.tenant.owns_by_provider_only(domain_of(a))})
    return {"internal_by_provider": found} if found else {}


def configured_only(ctx: RunContext) -> dict[str, object]:
    """Evidence that "outside" was judged against the configured domains alone: the provider's list was unreadable."""
    gap = ctx.tenant.provider_domains_gap
    if not gap:
        return {}
    return {"internal_domains": f"configured domains only; the provider's own list could not be read: {gap}"}
