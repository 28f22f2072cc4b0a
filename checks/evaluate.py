"""The evaluate stage: run every check on every subject in scope, then apply coverage and exceptions."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from checks.registry import Check, Policy, Result, RunContext, Sender
from scanner.model import (
    Coverage,
    Domain,
    Fact,
    FactState,
    Finding,
    Inventory,
    Mailbox,
    PolicyException,
    Remediation,
    Scope,
    Status,
    Tenant,
)

log = logging.getLogger(__name__)

DNS_FACTS: dict[Fact, str | None] = {
    Fact.DNS_MX: "mx",
    Fact.DNS_SPF: "txt",
    Fact.DNS_DMARC: "dmarc",
    Fact.DNS_DKIM: None,  # one lookup per selector: the DKIM checks judge each selector's failure themselves
    Fact.DNS_MTA_STS: "mta_sts",
    Fact.DNS_TLSRPT: "tlsrpt",
}
"""DNS facts of a domain, and the DnsFacts answer whose failure makes the fact unknown."""


def fingerprint(check_id: str, tenant: str, subject: str, item: str = "") -> str:
    """A stable id for one check on one subject (and item), the same in every run."""
    digest = hashlib.sha256("\x1f".join((check_id, tenant, subject, item)).encode("utf-8")).hexdigest()
    return digest[:20]


@dataclass(frozen=True, slots=True)
class _Subject:
    tenant: Tenant
    domain: str
    name: str
    value: Tenant | Domain | Mailbox


def _subjects(scope: Scope, inventory: Inventory, tenants: Mapping[str, Tenant]) -> Iterator[_Subject]:
    if scope is Scope.TENANT:
        for tenant in inventory.tenants:
            yield _Subject(tenant, "", tenant.name, tenant)
    elif scope is Scope.DOMAIN:
        for domain in inventory.domains:
            yield _Subject(tenants[domain.tenant], domain.name, domain.name, domain)
    else:
        for mailbox in inventory.mailboxes:
            yield _Subject(tenants[mailbox.tenant], mailbox.domain, mailbox.address, mailbox)


def _missing_fact(
    check: Check, subject: _Subject, coverage: Mapping[tuple[str, Fact, str], Coverage]
) -> Result | None:
    """The error or unsupported result when a fact the check requires is not there; None when all are."""
    for fact in check.meta.requires:
        if fact in DNS_FACTS:
            key = DNS_FACTS[fact]
            if key is not None and isinstance(subject.value, Domain):
                answer = subject.value.dns.get(key)
                if answer is None:
                    return Result.error(f"{fact.value} was not collected for {subject.value.name}")
                if answer.failed:
                    return Result.error(f"DNS lookup of {answer.name} {answer.rdtype} failed: {answer.error}")
            continue
        entry = coverage.get((subject.tenant.name, fact, subject.name)) or coverage.get((subject.tenant.name, fact, ""))
        if entry is None or entry.state is FactState.FAILED:
            why = entry.reason if entry is not None else "it was not collected"
            return Result.error(f"{fact.value} is unknown for tenant {subject.tenant.name}: {why}")
        if entry.state is FactState.UNSUPPORTED:
            why = f": {entry.reason}" if entry.reason else ""
            if subject.tenant.provider is None:
                return Result.unsupported(f"a DNS-only tenant (no provider configured) has no {fact.value}{why}")
            return Result.unsupported(f"{subject.tenant.provider} does not expose {fact.value}{why}")
    return None


def _run_one(check: Check, subject: _Subject, ctx: RunContext) -> list[Result]:
    try:
        produced = check(subject.value, ctx)
        results = [produced] if isinstance(produced, Result) else list(produced)
    except Exception as exc:  # a crashing check is an error for this subject only, never a pass
        log.warning("check crashed", extra={"check": check.meta.id, "subject": subject.name, "error": repr(exc)})
        return [Result.error(f"the check crashed: {type(exc).__name__}: {exc}")]
    if not results or not all(isinstance(r, Result) for r in results):
        return [Result.error("the check returned no result for this subject")]
    return results


def _apply_exception(
    result: Result, check_id: str, subject: str, exceptions: Mapping[tuple[str, str], PolicyException], now: datetime
) -> Result:
    if result.status is not Status.FAIL:
        return result
    exception = exceptions.get((check_id, subject))
    if exception is None:
        return result
    if exception.valid_on(now.date()):
        reason = f"excepted until {exception.expires.isoformat()}: {exception.reason} (approved by {exception.approved_by})"
        return Result(Status.EXCEPTED, result.evidence, result.item, reason)
    evidence = {**result.evidence, "expired_exception": f"{exception.reason} (expired {exception.expires.isoformat()})"}
    return Result(Status.FAIL, evidence, result.item, result.reason)


def evaluate(
    inventory: Inventory,
    checks: Sequence[Check],
    *,
    policy: Policy,
    senders: Mapping[str, Sender],
    now: datetime,
    run_id: str = "",
    scopes: Collection[Scope] = tuple(Scope),
) -> list[Finding]:
    """Judge the inventory with every check: exactly one or more findings per check and subject in scope.

    ``scopes`` limits the judging to subjects of those kinds (a scan judges its mailboxes page by page).
    """
    tenants = {t.name: t for t in inventory.tenants}
    coverage = {(c.tenant, c.fact, c.subject): c for c in inventory.coverage}
    exceptions = {(e.check, e.subject): e for e in inventory.exceptions}
    contexts = {
        name: RunContext(tenant=t, policy=policy, now=now, senders=senders, inventory=inventory)
        for name, t in tenants.items()
    }
    # Subject by subject, every check of the scope in turn: the checks of one domain read the same records,
    # so the memoized parsers (DKIM keys, DMARC and SPF records) parse each once. Findings keep check order.
    per_check: list[list[Finding]] = [[] for _ in checks]
    for scope in scopes:
        scoped = [(i, c) for i, c in enumerate(checks) if c.meta.scope is scope]
        if not scoped:
            continue
        for subject in _subjects(scope, inventory, tenants):
            for index, check in scoped:
                per_check[index].extend(_judge(check, subject, coverage, contexts, exceptions, now, run_id))
    findings = [finding for found in per_check for finding in found]
    return findings


def _judge(
    check: Check,
    subject: _Subject,
    coverage: Mapping[tuple[str, Fact, str], Coverage],
    contexts: Mapping[str, RunContext],
    exceptions: Mapping[tuple[str, str], PolicyException],
    now: datetime,
    run_id: str,
) -> Iterator[Finding]:
    """The findings of one check on one subject."""
    meta = check.meta
    missing = _missing_fact(check, subject, coverage)
    results = [missing] if missing is not None else _run_one(check, subject, contexts[subject.tenant.name])
    for result in results:
        result = _apply_exception(result, meta.id, subject.name, exceptions, now)
        remediation = (
            Remediation(meta.remediation, {"subject": subject.name, **({"item": result.item} if result.item else {})})
            if meta.remediation and result.status in (Status.FAIL, Status.EXCEPTED)
            else None
        )
        yield Finding(
            id=fingerprint(meta.id, subject.tenant.name, subject.name, result.item),
            check=meta.id,
            status=result.status,
            severity=meta.severity,
            tenant=subject.tenant.name,
            domain=subject.domain,
            subject=subject.name,
            item=result.item,
            title=meta.title,
            evidence=dict(result.evidence),
            reason=result.reason,
            remediation=remediation,
            run_id=run_id,
        )


def checks_by_id(checks: Iterable[Check]) -> dict[str, Check]:
    """Index checks by id."""
    return {c.meta.id: c for c in checks}
