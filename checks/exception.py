"""Exceptions: approved exceptions that have run out, or that name nothing the inventory holds.

Both checks judge the tenant: one result per exception attributed to it, the item naming the
exception as ``<check>/<subject>`` (the key its run snapshot uses); a tenant with no exceptions gets
one pass with ``{"exceptions": 0}``. Neither requires a provider fact: exceptions come from the
config, so they are judged for every tenant, DNS-only ones included.

Attribution: an exception belongs to the first tenant whose name its subject is, or that owns its
subject's domain (the part after ``@`` for an address, else the subject itself). An exception no
tenant claims still gets a finding: it goes to the tenant owning the approver's domain, else to the
first tenant, with ``"claimed_by": null`` in its evidence.

exception.unknown_subject passes when the subject is a mailbox address, a domain or a tenant name
found anywhere in the inventory. An address in the tenant's domains whose mailbox list was not
collected cannot be looked up: ``unsupported`` (provider does not list mailboxes) or ``error``
(the list failed) for that exception.
"""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Fact, FactState, Inventory, PolicyException, Scope, Severity, Tenant, domain_of


def _key(exception: PolicyException) -> str:
    return f"{exception.check}/{exception.subject}"


def _claimant(subject: str, inventory: Inventory) -> Tenant | None:
    """The tenant an exception's subject belongs to, by tenant name or owned domain."""
    subject = subject.lower()
    domain = domain_of(subject) if "@" in subject else subject
    for tenant in inventory.tenants:
        if tenant.name.lower() == subject or tenant.owns(domain):
            return tenant
    return None


def _attributed(ctx: RunContext) -> list[tuple[PolicyException, bool]]:
    """The exceptions reported under this tenant, each with whether a tenant claims its subject."""
    inventory = ctx.inventory
    mine: list[tuple[PolicyException, bool]] = []
    for exception in inventory.exceptions:
        claimant = _claimant(exception.subject, inventory)
        claimed = claimant is not None
        if claimant is None:
            claimant = _claimant(domain_of(exception.approved_by), inventory) or (
                inventory.tenants[0] if inventory.tenants else None
            )
        if claimant is not None and claimant.name == ctx.tenant.name:
            mine.append((exception, claimed))
    return sorted(mine, key=lambda pair: _key(pair[0]))


def _described(exception: PolicyException, claimed: bool, ctx: RunContext) -> dict[str, object]:
    return {
        "check": exception.check,
        "subject": exception.subject,
        "reason": exception.reason,
        "approved_by": exception.approved_by,
        "expires": exception.expires.isoformat(),
        "claimed_by": ctx.tenant.name if claimed else None,
    }


@check(
    id="exception.expired",
    title="Approved exception has expired",
    severity=Severity.MEDIUM,
    scope=Scope.TENANT,
    rationale=(
        "Temporary means forever unless expiry is enforced: once an exception ends, the finding it hid is "
        "back, and the exception must be renewed on purpose or removed."
    ),
)
def expired_exception(tenant: Tenant, ctx: RunContext) -> list[Result]:
    """Fail once for each of the tenant's exceptions whose expiry date has passed."""
    mine = _attributed(ctx)
    if not mine:
        return [Result.passed(exceptions=0)]
    results = []
    for exception, claimed in mine:
        evidence = _described(exception, claimed, ctx)
        if exception.valid_on(ctx.today):
            results.append(Result.passed(item=_key(exception), **evidence,
                                         days_left=(exception.expires - ctx.today).days))
        else:
            results.append(Result.failed(item=_key(exception), **evidence,
                                         days_expired=(ctx.today - exception.expires).days))
    return results


def _names(subject: str, inventory: Inventory) -> str:
    """What in the inventory the subject names: "mailbox", "domain", "tenant", or ""."""
    subject = subject.lower()
    if inventory.mailbox(subject) is not None:
        return "mailbox"
    if any(d.name == subject for d in inventory.domains):
        return "domain"
    if any(t.name.lower() == subject for t in inventory.tenants):
        return "tenant"
    return ""


@check(
    id="exception.unknown_subject",
    title="Exception names nothing in the inventory",
    severity=Severity.LOW,
    scope=Scope.TENANT,
    rationale=(
        "An exception for a mailbox or domain that does not exist covers nothing: it is a typo that leaves "
        "the real subject unexcepted, or a leftover that would silently cover a new object of the same name."
    ),
)
def unknown_subject(tenant: Tenant, ctx: RunContext) -> list[Result]:
    """Fail once for each of the tenant's exceptions whose subject is no mailbox, domain or tenant."""
    mine = _attributed(ctx)
    if not mine:
        return [Result.passed(exceptions=0)]
    results = []
    for exception, claimed in mine:
        item = _key(exception)
        evidence = _described(exception, claimed, ctx)
        found = _names(exception.subject, ctx.inventory)
        if found:
            results.append(Result.passed(item=item, **evidence, names=found))
            continue
        if claimed and "@" in exception.subject:
            listing = ctx.coverage(Fact.MAILBOX_LIST)
            if listing is None or listing.state is FactState.FAILED:
                why = listing.reason if listing is not None else "it was not collected"
                results.append(Result.error(f"the mailbox list of tenant {tenant.name} is unknown: {why}", item=item))
                continue
            if listing.state is FactState.UNSUPPORTED:
                who = tenant.provider or "a DNS-only tenant (no provider configured)"
                results.append(Result.unsupported(
                    f"{who} does not list mailboxes, so {exception.subject} cannot be looked up", item=item))
                continue
        results.append(Result.failed(item=item, **evidence, names=None))
    return results
