"""Delegates: mailbox access granted to someone outside the tenant.

Judges every mailbox. A delegate is external when the tenant owns neither its domain nor a parent of
it. One failing result per external delegate, naming it as the item, so ``delegate.remove`` knows
which grant to take away; a mailbox with no external delegate gets one pass.
"""

from __future__ import annotations

from checks.forwarding import configured_only, provider_internal
from checks.registry import Result, RunContext, check
from scanner.model import Fact, Mailbox, Scope, Severity, domain_of


@check(
    id="delegate.external",
    title="Mailbox delegated to an address outside the tenant",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_DELEGATES,),
    rationale=(
        "A delegate can read, send as and delete from the mailbox; an outside delegate holds that power "
        "beyond the tenant's sign-in policies and offboarding."
    ),
    references=("MITRE ATT&CK T1098.002",),
    remediation="delegate.remove",
)
def external_delegate(mailbox: Mailbox, ctx: RunContext) -> list[Result]:
    """Fail once for each delegate whose domain the tenant does not own."""
    outside = sorted({d for d in mailbox.delegates if not ctx.tenant.owns(domain_of(d))})
    if not outside:
        return [Result.passed(delegates=len(mailbox.delegates),
                              **provider_internal(list(mailbox.delegates), ctx))]
    return [Result.failed(item=d, delegate=d, domain=domain_of(d), delegates=len(mailbox.delegates),
                          **configured_only(ctx)) for d in outside]
