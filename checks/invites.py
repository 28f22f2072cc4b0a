"""Invites: setup invitations that were never completed.

Both checks judge every mailbox; one without a pending invite passes with ``{"applies": false}``.
An invite still in the inventory is one nobody completed or revoked. invite.stale fails when it has
been pending more than ``invite_stale_days`` (whether or not it has expired too); invite.expired
fails once its expiry is reached; an invite without an expiry never fails invite.expired.
"""

from __future__ import annotations

from datetime import timedelta

from checks.registry import Result, RunContext, check
from scanner.model import Fact, Mailbox, Scope, Severity

NO_INVITE = "no pending invite"


@check(
    id="invite.stale",
    title="Setup invite pending too long",
    severity=Severity.LOW,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_INVITES,),
    rationale=(
        "An invite nobody completes leaves an account that anyone holding the link can claim, and often "
        "means the person never needed it."
    ),
    remediation="invite.resend",
)
def stale_invite(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when the invite was sent more than ``invite_stale_days`` ago and is still pending."""
    invite = mailbox.invite
    if invite is None:
        return Result.passed(applies=False, why=NO_INVITE)
    pending = ctx.now - invite.sent
    evidence = {"sent": invite.sent.isoformat(), "expires": invite.expires.isoformat() if invite.expires else None,
                "days_pending": pending.days, "invite_stale_days": ctx.policy.invite_stale_days}
    if pending > timedelta(days=ctx.policy.invite_stale_days):
        return Result.failed(**evidence)
    return Result.passed(**evidence)


@check(
    id="invite.expired",
    title="Expired invite was never revoked",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_INVITES,),
    rationale=(
        "An expired invite that is still on record keeps a half-made account around that nobody owns; "
        "revoking it closes the account or makes someone re-invite on purpose."
    ),
    remediation="invite.revoke",
)
def expired_invite(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when the pending invite's expiry has passed."""
    invite = mailbox.invite
    if invite is None:
        return Result.passed(applies=False, why=NO_INVITE)
    if invite.expires is None:
        # Unknown is never a pass: the provider says the invite is pending but not when it lapses.
        return Result.unsupported(f"{ctx.tenant.provider or 'the source'} reports no expiry for this invite")
    evidence = {"sent": invite.sent.isoformat(), "expires": invite.expires.isoformat()}
    if invite.expires <= ctx.now:
        return Result.failed(**evidence, days_since_expiry=(ctx.now - invite.expires).days)
    return Result.passed(**evidence)
