"""The evaluate stage: run every check on every subject in scope, then apply coverage and exceptions."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from checks.registry import Check, CheckMeta, Policy, Result, RunContext, Sender
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
    Severity,
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

_FAILING = (Status.FAIL, Status.EXCEPTED)
"""Statuses of a finding that can be a root cause, and that carry the check's remediation."""
_RESTATING = (Status.FAIL, Status.ERROR)
"""Statuses of a result that only restates a failing root cause (it is recorded skipped)."""

NXDOMAIN_CHECK = "domain.nxdomain"
"""The check every other check that reads a domain's DNS rests on: a domain that does not exist has no records."""


def rests_on(check: Check) -> tuple[str, ...]:
    """The checks whose failure this check would only restate: its ``rests_on`` metadata, and for every other
    check of a domain, ``domain.nxdomain`` (any verdict on a domain that does not exist restates that: its DNS
    records, and what a provider says of a domain nobody can send to)."""
    implicit = (NXDOMAIN_CHECK,) if check.meta.id != NXDOMAIN_CHECK and check.meta.scope is Scope.DOMAIN else ()
    return tuple(dict.fromkeys(implicit + check.meta.rests_on))


def _root_first(checks: Sequence[tuple[int, Check]]) -> list[tuple[int, Check]]:
    """The checks ordered so that each comes after the checks it rests on (ties keep the given order)."""
    by_id = {c.meta.id: (i, c) for i, c in checks}
    ordered: list[tuple[int, Check]] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(check_id: str) -> None:
        if check_id in placed or check_id in visiting or check_id not in by_id:
            return  # a cycle (a plug-in's mistake) is broken where it closes
        visiting.add(check_id)
        for root in rests_on(by_id[check_id][1]):
            place(root)
        visiting.discard(check_id)
        placed.add(check_id)
        ordered.append(by_id[check_id])

    for _, check in checks:
        place(check.meta.id)
    return ordered


def fingerprint(check_id: str, tenant: str, subject: str, item: str = "") -> str:
    """A stable id for one check on one subject (and item), the same in every run."""
    return _fingerprint(f"{check_id}\x1f{tenant}\x1f{subject}\x1f", item)


def _fingerprint(named: str, item: str) -> str:
    """``fingerprint`` from its check, tenant and subject already joined (``named``, once per check and subject)."""
    return hashlib.sha256((named + item).encode("utf-8")).hexdigest()[:20]


_new = object.__new__
_FINDING_SETTERS = tuple(Finding.__dict__[name].__set__ for name in Finding.__dataclass_fields__)
"""Each field's slot setter, in field order: a field added to Finding fails ``_new_finding``'s unpacking at once."""


def _new_finding(
    id: str, check: str, status: Status, severity: Severity, tenant: str, domain: str, subject: str, title: str,
    item: str, evidence: Mapping[str, object], reason: str, remediation: Remediation | None, run_id: str,
    caused_by: str,
) -> Finding:
    """The same finding as ``Finding(...)`` with these fields (not yet seen in any run), filled slot by slot: the
    frozen dataclass's __init__ sets each field through object.__setattr__, a third of judging a finding."""
    (set_id, set_check, set_status, set_severity, set_tenant, set_domain, set_subject, set_title, set_item,
     set_evidence, set_reason, set_remediation, set_run_id, set_first_seen, set_last_seen,
     set_caused_by) = _FINDING_SETTERS
    finding = _new(Finding)
    set_id(finding, id)
    set_check(finding, check)
    set_status(finding, status)
    set_severity(finding, severity)
    set_tenant(finding, tenant)
    set_domain(finding, domain)
    set_subject(finding, subject)
    set_title(finding, title)
    set_item(finding, item)
    set_evidence(finding, evidence)
    set_reason(finding, reason)
    set_remediation(finding, remediation)
    set_run_id(finding, run_id)
    set_first_seen(finding, None)
    set_last_seen(finding, None)
    set_caused_by(finding, caused_by)
    return finding


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


def _needs(check: Check) -> tuple[tuple[Fact, str, str | None, bool], ...]:
    """The facts a check requires, in order, each with its name (a plain string, cheaper to hash than the enum),
    the DnsFacts answer whose failure makes it unknown (see ``DNS_FACTS``) and whether coverage decides it instead
    (every fact that is not a domain's DNS)."""
    return tuple((fact, fact.value, DNS_FACTS.get(fact), fact not in DNS_FACTS) for fact in check.meta.requires)


class _Coverage:
    """What coverage says of a tenant's facts, per subject: the error or unsupported result of a fact that is not
    there. A subject without coverage of its own is answered by its tenant's entries, worked out once."""

    def __init__(self, entries: Iterable[Coverage]) -> None:
        self._entries = {(c.tenant, c.fact, c.subject): c for c in entries}
        self._own = {subject for _, _, subject in self._entries if subject}
        self._tenant_wide: dict[tuple[str, str], Result | None] = {}

    def gap(self, fact: Fact, name: str, subject: _Subject) -> Result | None:
        """The result when ``fact`` (named ``name``) is missing for the subject; None when it was collected."""
        if subject.name in self._own:
            return self._judge(fact, subject.tenant, subject.name)
        key = (subject.tenant.name, name)
        if key not in self._tenant_wide:
            self._tenant_wide[key] = self._judge(fact, subject.tenant, "")
        return self._tenant_wide[key]

    def _judge(self, fact: Fact, tenant: Tenant, name: str) -> Result | None:
        entry = (self._entries.get((tenant.name, fact, name)) if name else None) or self._entries.get(
            (tenant.name, fact, ""))
        if entry is None or entry.state is FactState.FAILED:
            why = entry.reason if entry is not None else "it was not collected"
            return Result.error(f"{fact.value} is unknown for tenant {tenant.name}: {why}")
        if entry.state is FactState.UNSUPPORTED:
            why = f": {entry.reason}" if entry.reason else ""
            if tenant.provider is None:
                return Result.unsupported(f"a DNS-only tenant (no provider configured) has no {fact.value}{why}")
            return Result.unsupported(f"{tenant.provider} does not expose {fact.value}{why}")
        return None


def _missing_fact(
    needs: Sequence[tuple[Fact, str, str | None, bool]], subject: _Subject, coverage: _Coverage
) -> Result | None:
    """The error or unsupported result when a fact the check requires (``_needs``) is not there; None when all are."""
    for fact, name, key, covered in needs:
        if covered:
            gap = coverage.gap(fact, name, subject)
            if gap is not None:
                return gap
        elif key is not None and isinstance(subject.value, Domain):
            answer = subject.value.dns.get(key)
            if answer is None:
                return Result.error(f"{fact.value} was not collected for {subject.value.name}")
            if answer.failed:
                return Result.error(f"DNS lookup of {answer.name} {answer.rdtype} failed: {answer.error}")
    return None


def _run_one(check: Check, subject: _Subject, ctx: RunContext) -> list[Result]:
    try:
        produced = check(subject.value, ctx)
        if isinstance(produced, Result):
            return [produced]
        results = list(produced)
    except Exception as exc:  # a crashing check is an error for this subject only, never a pass
        log.warning("check crashed", extra={"check": check.meta.id, "subject": subject.name, "error": repr(exc)})
        return [Result.error(f"the check crashed: {type(exc).__name__}: {exc}")]
    if not results or not all(isinstance(r, Result) for r in results):
        return [Result.error("the check returned no result for this subject")]
    return results


def _apply_exception(
    result: Result, check_id: str, subject: str, exceptions: Mapping[tuple[str, str], PolicyException], now: datetime
) -> Result:
    """A failing result under the approved exception for its check and subject: excepted while the exception is
    valid, still failing (saying so) once it expired."""
    exception = exceptions.get((check_id, subject))
    if exception is None:
        return result
    if exception.valid_on(now.date()):
        reason = f"excepted until {exception.expires.isoformat()}: {exception.reason} (approved by {exception.approved_by})"
        return Result(Status.EXCEPTED, result.evidence, result.item, reason)
    evidence = {**result.evidence, "expired_exception": f"{exception.reason} (expired {exception.expires.isoformat()})"}
    return replace(result, evidence=evidence)


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
    """Judge the inventory with every check: exactly one or more findings per check and subject in scope, in
    check order.

    ``scopes`` limits the judging to subjects of those kinds (a scan judges its mailboxes page by page).
    """
    judging = _Judging(inventory, checks, policy, senders, now, run_id)
    per_check: list[list[Finding]] = [[] for _ in checks]
    for scope in scopes:
        judging.judge(scope, judging.subjects(scope), per_check)
    return [finding for found in per_check for finding in found]


def evaluate_pages(
    inventory: Inventory,
    checks: Sequence[Check],
    *,
    policy: Policy,
    senders: Mapping[str, Sender],
    now: datetime,
    run_id: str = "",
    scopes: Collection[Scope] = tuple(Scope),
    page: int,
) -> Iterator[list[Finding]]:
    """``evaluate``, ``page`` subjects at a time: each list holds the findings of the next subjects (subject by
    subject), so a caller that records them as they come holds a page of findings, not the run's."""
    judging = _Judging(inventory, checks, policy, senders, now, run_id)
    for scope in scopes:
        subjects = judging.subjects(scope)
        while chunk := list(itertools.islice(subjects, page)):
            found: list[Finding] = []
            judging.judge(scope, chunk, [found] * len(checks))
            yield found


class _Judging:
    """One evaluation's set-up: the tenants' run contexts, the coverage and the approved exceptions."""

    def __init__(self, inventory: Inventory, checks: Sequence[Check], policy: Policy, senders: Mapping[str, Sender],
                 now: datetime, run_id: str) -> None:
        self._inventory = inventory
        self._checks = checks
        self._tenants = {t.name: t for t in inventory.tenants}
        self._coverage = _Coverage(inventory.coverage)
        self._exceptions = {(e.check, e.subject): e for e in inventory.exceptions}
        self._contexts = {
            name: RunContext(tenant=t, policy=policy, now=now, senders=senders, inventory=inventory)
            for name, t in self._tenants.items()
        }
        self._now = now
        self._run_id = run_id

    def subjects(self, scope: Scope) -> Iterator[_Subject]:
        """The subjects of a scope, in inventory order."""
        return _subjects(scope, self._inventory, self._tenants)

    def judge(self, scope: Scope, subjects: Iterable[_Subject], into: Sequence[list[Finding]]) -> None:
        """Judge the subjects with the scope's checks, appending each check's findings to ``into`` at its index.

        Subject by subject, every check of the scope in turn: the checks of one domain read the same records, so
        the memoized parsers (DKIM keys, DMARC and SPF records) parse each once."""
        scoped = [(into[i], c, c.meta, rests_on(c), _needs(c), c.meta.id + "\x1f") for i, c in _root_first(
            [(i, c) for i, c in enumerate(self._checks) if c.meta.scope is scope])]
        if not scoped:
            return
        coverage, exceptions, now, run_id = self._coverage, self._exceptions, self._now, self._run_id
        for subject in subjects:
            ctx = self._contexts[subject.tenant.name]
            causes: dict[str, tuple[str, str]] = {}  # check id -> (root finding id, root check id) it stands for
            named = f"{subject.tenant.name}\x1f{subject.name}\x1f"
            for found, check, meta, roots, needs, check_named in scoped:
                cause = next((causes[r] for r in roots if r in causes), None) if causes else None
                missing = _missing_fact(needs, subject, coverage) if needs else None
                results = [missing] if missing is not None else _run_one(check, subject, ctx)
                for result in results:
                    finding, blocks = _finding(meta, subject, check_named + named, result, cause, exceptions, now,
                                               run_id)
                    found.append(finding)
                    if cause is None and blocks and finding.status in _FAILING:
                        causes.setdefault(meta.id, (finding.id, meta.id))
                if cause is not None:
                    causes[meta.id] = cause  # what rests on a skipped check rests on its root


def _finding(
    meta: CheckMeta,
    subject: _Subject,
    named: str,
    result: Result,
    cause: tuple[str, str] | None,
    exceptions: Mapping[tuple[str, str], PolicyException],
    now: datetime,
    run_id: str,
) -> tuple[Finding, bool]:
    """One result of a check on a subject as a finding (after root causes and exceptions), with whether its
    failure blocks the checks resting on it. ``named`` is what ``fingerprint`` joins before the item, joined
    once per check and subject.

    With ``cause`` (the failing root finding's id and check), a failure or error only restates the root: it
    is ``skipped`` and names the root in ``caused_by`` (decided before exceptions, which cover real failures).
    """
    caused_by = ""
    if cause is not None and result.status in _RESTATING:
        caused_by = cause[0]
        why = f"only restates {cause[1]}, which fails on this subject: see that finding"
        result = Result(Status.SKIPPED, result.evidence, result.item, f"{why} ({result.reason})" if result.reason else why)
    if exceptions and result.status is Status.FAIL:
        result = _apply_exception(result, meta.id, subject.name, exceptions, now)
    remediation = (
        Remediation(meta.remediation, {"subject": subject.name, **({"item": result.item} if result.item else {})})
        if meta.remediation and result.status in _FAILING
        else None
    )
    finding = _new_finding(
        _fingerprint(named, result.item), meta.id, result.status,
        meta.severity, subject.tenant.name, subject.domain, subject.name, meta.title, result.item,
        dict(result.evidence), result.reason, remediation, run_id, caused_by)
    return finding, result.blocks


def checks_by_id(checks: Iterable[Check]) -> dict[str, Check]:
    """Index checks by id."""
    return {c.meta.id: c for c in checks}
