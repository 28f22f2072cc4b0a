"""Access that outlives a person: OAuth grants, app passwords and device passwords.

Which mailboxes each check judges; every other one passes with ``{"applies": false, "why": ...}``:

- access.leaver_grant: mailboxes of leavers, that is a mailbox whose person left per the roster (leave
  date today or earlier), or a suspended or disabled account. It fails once per OAuth grant that can read
  mail (``mail`` is ``read`` or ``full``) and per app or device password the mailbox still holds: these
  survive a password reset and come back with a reactivated account. A grant to profile or calendar data
  only is not judged. A leaver with none fails nothing, and passes only when every surface was read: a
  surface the provider does not offer makes it ``unsupported`` (the coverage names the missing permission),
  one that failed makes it ``error``. A roster that failed to load gives ``error`` for an active mailbox.
- access.mail_grant: ``active`` mailboxes that are not aliases (``unsupported`` or ``error`` for them alone
  when the provider's OAuth grants were not read). It fails once per OAuth grant with mail
  access (``read`` or ``full``: reading every message is what lets mail leave) to an app that is not in
  the tenant's ``allowed_apps`` (matched on the app's name or client id, case-insensitive). App and device
  passwords are not judged here: their names are labels a person typed, not an identity to allow.
"""

from __future__ import annotations

from collections.abc import Iterator

from checks.mailbox import roster_view
from checks.registry import Result, RunContext, check
from scanner.model import (
    Fact, FactState, Grant, GrantKind, MailAccess, Mailbox, MailboxKind, MailboxStatus, Scope, Severity,
)

READS_MAIL = (MailAccess.READ, MailAccess.FULL)
SURFACES = (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS)


def departure(mailbox: Mailbox, ctx: RunContext) -> tuple[str, str] | None:
    """Why the mailbox's person counts as gone, as (basis, words), or None; raises LookupError when unknown."""
    roster = roster_view(ctx)
    person = roster.people.get(mailbox.address)
    if person is not None and person.left is not None and person.has_left(ctx.today):
        return "roster", f"left on {person.left.isoformat()}"
    if mailbox.status in (MailboxStatus.SUSPENDED, MailboxStatus.DISABLED):
        return "status", f"the account is {mailbox.status.value}"
    if roster.state is FactState.FAILED:
        raise LookupError(f"the roster could not be read ({roster.reason}), so whether the person left is unknown")
    return None


def grant_evidence(grant: Grant) -> dict[str, object]:
    """What a reviewer needs to recognise a grant; never a secret (none is collected)."""
    return {"kind": grant.kind.value, "grant": grant.id, "client": grant.client, "client_id": grant.client_id,
            "mail": grant.mail.value, "scopes": list(grant.scopes),
            "created": grant.created.isoformat() if grant.created else None,
            "last_used": grant.last_used.isoformat() if grant.last_used else None}


def unknown_surfaces(mailbox: Mailbox, ctx: RunContext, facts: tuple[Fact, ...] = SURFACES) -> Result | None:
    """``error`` or ``unsupported`` when one of the facts was not read for the mailbox; None when all were.

    The checks of persistence surfaces ask this only for the subjects they judge, so a provider without a
    surface makes those subjects ``unsupported``, not every mailbox of the tenant."""
    missing = [(f, ctx.coverage(f, mailbox.address)) for f in facts]
    failed = [(f, c) for f, c in missing if c is not None and c.state is FactState.FAILED]
    if failed:
        return Result.error("; ".join(f"{f.value} could not be read: {c.reason}" for f, c in failed))
    absent = [(f, c) for f, c in missing if c is None or c.state is not FactState.COLLECTED]
    if absent:
        return Result.unsupported("; ".join(
            f"{f.value} is not offered: {c.reason if c is not None and c.reason else 'not collected'}"
            for f, c in absent))
    return None


@check(
    id="access.leaver_grant",
    title="Leaver still holds an app grant or app password",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=(),  # judged per surface below: a grant found fails even where another surface is not offered
    rationale=(
        "OAuth tokens and app passwords survive a password reset and a suspension: a leaver whose forwarding "
        "was removed can still read the mailbox through them, and they work again the day the account is "
        "reactivated."
    ),
    remediation="grant.revoke",
)
def leaver_grant(mailbox: Mailbox, ctx: RunContext) -> Iterator[Result]:
    """Fail per mail-reading OAuth grant and per app or device password a leaver's mailbox still holds."""
    if mailbox.kind is MailboxKind.ALIAS:
        yield Result.passed(applies=False, why="an alias has no account: nothing can be granted to it")
        return
    try:
        gone = departure(mailbox, ctx)
    except LookupError as exc:
        yield Result.error(str(exc))
        return
    if gone is None:
        yield Result.passed(applies=False, why=f"the account is {mailbox.status.value} and its person has not left")
        return
    basis, words = gone
    held = [g for g in mailbox.grants if g.kind is not GrantKind.OAUTH or g.mail in READS_MAIL]
    for grant in held:
        yield Result.failed(item=f"{grant.kind.value}:{grant.id}", basis=basis, departed=words,
                            **grant_evidence(grant))
    if held:
        return
    unknown = unknown_surfaces(mailbox, ctx)
    if unknown is not None:
        yield unknown
        return
    yield Result.passed(basis=basis, departed=words, grants=len(mailbox.grants),
                        note="no mail-reading OAuth grant and no app or device password")


@check(
    id="access.mail_grant",
    title="App outside the allowed list can read a mailbox's mail",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(),  # mailbox.oauth_grants, asked only for the active mailboxes judged below
    rationale=(
        "A third-party app granted mail access reads every message with no further sign-in, so its vendor "
        "holds a copy of the mailbox; the tenant's allowed_apps names the ones it has vetted."
    ),
    remediation="grant.revoke",
)
def mail_grant(mailbox: Mailbox, ctx: RunContext) -> Iterator[Result]:
    """Fail per OAuth grant with mail access to an app that is not in the tenant's ``allowed_apps``."""
    if mailbox.kind is MailboxKind.ALIAS or mailbox.status is not MailboxStatus.ACTIVE:
        why = "an alias has no account" if mailbox.kind is MailboxKind.ALIAS else f"the account is {mailbox.status.value}"
        yield Result.passed(applies=False, why=why)
        return
    unknown = unknown_surfaces(mailbox, ctx, (Fact.MAILBOX_OAUTH_GRANTS,))
    if unknown is not None:
        yield unknown
        return
    allowed = set(ctx.tenant.allowed_apps)
    reading = [g for g in mailbox.grants if g.kind is GrantKind.OAUTH and g.mail in READS_MAIL]
    outside = [g for g in reading
               if g.client.lower() not in allowed and (not g.client_id or g.client_id.lower() not in allowed)]
    for grant in outside:
        yield Result.failed(item=f"{grant.kind.value}:{grant.id}", allowed_apps=sorted(allowed),
                            **grant_evidence(grant))
    if not outside:
        yield Result.passed(mail_grants=sorted(g.client for g in reading), allowed_apps=sorted(allowed))
