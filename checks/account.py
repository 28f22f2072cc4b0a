"""Accounts: mailboxes of people who left, and accounts nobody signs in to.

Which mailboxes each check judges; every other one passes with ``{"applies": false, "why": ...}``:

- account.ghost: ``active`` mailboxes of every kind. It fails when the roster says the mailbox's
  person left (leave date today or earlier), or when the mailbox lists owners of record and every
  one of them has departed (left, or a disabled or suspended mailbox; see checks/mailbox.py). An
  owner who cannot be found is not taken as having left. Without a roster it relies on owners of
  record alone and the evidence says ``"roster": false``; a user mailbox with no owner listed then
  cannot be judged and is ``unsupported``. A roster that failed to load gives ``error``.
- account.inactive and account.never_used: ``active`` ``user`` and ``role`` mailboxes, the kinds a
  person signs in to. Shared and resource mailboxes are not signed in to directly; pending,
  suspended and disabled accounts cannot sign in. account.inactive fails when the last sign-in is
  more than ``inactive_days`` before now; an account that never signed in is left to
  account.never_used, which fails when it was created more than ``inactive_days`` before now (an
  unknown creation date is ``unsupported``).

An ``alias`` (an address with no mailbox that only forwards) has no account: nothing signs in to it and
no person leaves it, so all of them pass with ``applies: false`` (account.ghost adds the roster's leave
date when the roster lists the address as someone who left). Where it forwards is forwarding.external's.

account.recovery_path: ``shared`` and ``role`` mailboxes (whatever their status), and leavers (left per
the roster, or a suspended or disabled account; see checks/access.py). It fails once per recovery
address outside the tenant's domains and once per recovery phone (a number is always someone's own);
evidence shows a phone by its last three digits only. A person's own active account passes with
``applies: false``: their recovery paths are theirs. Recovery paths the provider does not expose make
only the judged mailboxes ``unsupported``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from checks.access import departure, unknown_surfaces
from checks.mailbox import DEPARTED, owner_standings, roster_view
from checks.registry import Result, RunContext, check
from scanner.model import (
    Fact, FactState, Mailbox, MailboxKind, MailboxStatus, Recovery, RecoveryKind, Scope, Severity, domain_of,
)

SIGN_IN_KINDS = (MailboxKind.USER, MailboxKind.ROLE)
NO_ACCOUNT = "an alias has no account: nothing signs in to it, and where it forwards is judged by forwarding.external"


def _signs_in(mailbox: Mailbox) -> str:
    """Why the sign-in checks do not apply to this mailbox, or "" when they do."""
    if mailbox.kind is MailboxKind.ALIAS:
        return NO_ACCOUNT
    if mailbox.kind not in SIGN_IN_KINDS:
        return f"a {mailbox.kind.value} mailbox is not signed in to directly"
    if mailbox.status is not MailboxStatus.ACTIVE:
        return f"the account is {mailbox.status.value}"
    return ""


@check(
    id="account.ghost",
    title="Active mailbox belongs to someone who left",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=(),  # the roster or the owners of record, whichever the provider and config give; judged below
    rationale=(
        "A leaver's mailbox that is still active keeps a working login and a live inbox outside anyone's "
        "control: the classic persistence path after a messy exit."
    ),
    remediation="account.suspend",
)
def ghost_account(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when an active mailbox's person left per the roster, or all its owners of record departed."""
    if mailbox.kind is MailboxKind.ALIAS:
        person = roster_view(ctx).people.get(mailbox.address)
        left = {"left": person.left.isoformat()} if person and person.left and person.has_left(ctx.today) else {}
        return Result.passed(applies=False, why=NO_ACCOUNT, **left)
    for fact, what in ((Fact.MAILBOX_LIST, "the mailbox's kind or status"), (Fact.ROSTER, "its roster row")):
        entry = ctx.coverage(fact, mailbox.address)
        if entry is not None and entry.subject and entry.state is FactState.FAILED:
            return Result.error(f"{what} could not be read ({entry.reason}), so whether its person left is unknown")
    if mailbox.status is not MailboxStatus.ACTIVE:
        return Result.passed(applies=False, why=f"the account is {mailbox.status.value}")
    roster = roster_view(ctx)
    if roster.state is FactState.FAILED:
        return Result.error(f"the roster could not be read ({roster.reason}), so who left is unknown")
    last_login = mailbox.last_login.isoformat() if mailbox.last_login else None
    person = roster.people.get(mailbox.address)
    if person is not None and person.left is not None and person.has_left(ctx.today):
        signed_in_after = mailbox.last_login is not None and mailbox.last_login.date() > person.left
        return Result.failed(basis="roster", left=person.left.isoformat(), last_login=last_login,
                             signed_in_after_leaving=signed_in_after)
    owners_fact = ctx.coverage(Fact.MAILBOX_OWNERS, mailbox.address)
    if owners_fact is None or owners_fact.state is not FactState.COLLECTED:
        # Without owners of record only the roster can speak, and only for the people it lists.
        if person is not None:
            return Result.passed(basis="roster", on_roster=True)
        why = owners_fact.reason if owners_fact is not None and owners_fact.reason else "owners of record were not collected"
        if owners_fact is not None and owners_fact.state is FactState.FAILED:
            return Result.error(f"owners of record are unknown ({why}) and the roster does not list the mailbox")
        who = ctx.tenant.provider or "a DNS-only tenant (no provider configured)"
        return Result.unsupported(
            f"{who} does not expose owners of record ({why}) and the roster does not list the mailbox"
        )
    if mailbox.owners:
        standings = owner_standings(mailbox, ctx, roster)
        owners = {o: text for o, (_, text) in standings.items()}
        if all(s in DEPARTED for s, _ in standings.values()):
            return Result.failed(basis="owners of record", owners=owners, roster=roster.known, last_login=last_login)
        return Result.passed(basis="owners of record", owners=owners, roster=roster.known)
    if roster.known:
        return Result.passed(basis="roster", on_roster=person is not None)
    if mailbox.kind is MailboxKind.USER:
        return Result.unsupported(
            "no roster is configured and the mailbox lists no owner of record, so whether its person left "
            "cannot be judged"
        )
    return Result.passed(basis="owners of record (no roster configured)", owners={}, roster=False)


@check(
    id="account.inactive",
    title="Account has not signed in for too long",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_LAST_LOGIN,),
    rationale="An account nobody uses is an account nobody watches: a takeover of it goes unnoticed.",
)
def inactive_account(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when the last sign-in is more than ``inactive_days`` ago."""
    why = _signs_in(mailbox)
    if why:
        return Result.passed(applies=False, why=why)
    if mailbox.last_login is None:
        return Result.passed(applies=False, why="never signed in: account.never_used judges it")
    idle = ctx.now - mailbox.last_login
    evidence = {"last_login": mailbox.last_login.isoformat(), "days_idle": idle.days,
                "inactive_days": ctx.policy.inactive_days}
    if idle > timedelta(days=ctx.policy.inactive_days):
        return Result.failed(**evidence)
    return Result.passed(**evidence)


@check(
    id="account.never_used",
    title="Account was never signed in to",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(Fact.MAILBOX_LAST_LOGIN,),
    rationale=(
        "An account created long ago and never used is unneeded, or waiting with its initial password for "
        "whoever finds it first."
    ),
)
def never_used_account(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when the account never signed in and was created more than ``inactive_days`` ago."""
    why = _signs_in(mailbox)
    if why:
        return Result.passed(applies=False, why=why)
    if mailbox.last_login is not None:
        return Result.passed(last_login=mailbox.last_login.isoformat())
    if mailbox.created is None:
        return Result.unsupported("the provider did not report when the account was created")
    age = ctx.now - mailbox.created
    evidence = {"created": mailbox.created.isoformat(), "last_login": None, "days_since_created": age.days,
                "inactive_days": ctx.policy.inactive_days}
    if age > timedelta(days=ctx.policy.inactive_days):
        return Result.failed(**evidence)
    return Result.passed(**evidence)


RECOVERY_KINDS = (MailboxKind.SHARED, MailboxKind.ROLE)


def _masked(path: Recovery) -> str:
    """A recovery phone shown by its last digits only; an address as it is (forwards show theirs too)."""
    if path.kind is RecoveryKind.PHONE:
        digits = [c for c in path.value if c.isdigit()]
        return "…" + "".join(digits[-3:]) if len(digits) > 3 else "…"
    return path.value


@check(
    id="account.recovery_path",
    title="Shared mailbox or leaver can be reset from outside the tenant",
    severity=Severity.MEDIUM,
    scope=Scope.MAILBOX,
    requires=(),  # mailbox.recovery, asked only for the shared, role and leavers' mailboxes judged below
    rationale=(
        "A password reset sent to a private address or phone hands the account back to whoever holds it: a "
        "leaver, or the one person who set up a shared mailbox, can get in again after offboarding."
    ),
)
def recovery_path(mailbox: Mailbox, ctx: RunContext) -> Iterator[Result]:
    """Fail per recovery address outside the tenant's domains, and per recovery phone, of a shared or role
    mailbox or a leaver's account."""
    if mailbox.kind is MailboxKind.ALIAS:
        yield Result.passed(applies=False, why=NO_ACCOUNT)
        return
    if mailbox.kind in RECOVERY_KINDS:
        basis, words = "kind", f"a {mailbox.kind.value} mailbox belongs to no single person"
    else:
        try:
            gone = departure(mailbox, ctx)
        except LookupError as exc:
            yield Result.error(str(exc))
            return
        if gone is None:
            yield Result.passed(applies=False, why="a person's own account: their recovery paths are theirs")
            return
        basis, words = gone
    unknown = unknown_surfaces(mailbox, ctx, (Fact.MAILBOX_RECOVERY,))
    if unknown is not None:
        yield unknown
        return
    # A phone number belongs to a person, never to the tenant's domains: it always leads outside.
    outside = [p for p in mailbox.recovery
               if p.kind is RecoveryKind.PHONE or not ctx.tenant.owns(domain_of(p.value))]
    for path in outside:
        yield Result.failed(item=f"{path.kind.value}:{_masked(path)}", basis=basis, why=words,
                            recovery_kind=path.kind.value, leads_to=_masked(path))
    if not outside:
        yield Result.passed(basis=basis, why=words, recovery=[_masked(p) for p in mailbox.recovery])
