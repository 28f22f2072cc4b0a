"""Root causes and posture: what the report, the email and the console put first.

A root cause is one failing check on one subject (its items together), with the findings that only
restate it (``status == "skipped"``, ``caused_by`` naming it) listed under it, and the one action that
fixes it. The posture score is the severity-weighted share of decided root checks that pass, in the
manner of Microsoft Secure Score's points achieved over points possible, so a person can recompute it
from the counts the page shows.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from remediation.actions import publish_records
from reports.actions import ActionChange, action_change, remediation_link
from remediation.links import Signer
from scanner.model import Finding, Severity, Status

WEIGHTS: Mapping[Severity, int] = {
    Severity.CRITICAL: 10, Severity.HIGH: 5, Severity.MEDIUM: 3, Severity.LOW: 1, Severity.INFO: 0,
}
"""Points a check is worth on one subject, by severity: what the posture score weighs."""
_RANK = {s: s.rank for s in Severity}  # Severity.rank looks its position up on every call
_DMARC_STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}
_POLICY = re.compile(r"(?:^|;)\s*p\s*=\s*([a-z]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Posture:
    """One tenant's score: points earned (passing root checks) over points possible (passing, failing, error)."""

    tenant: str
    earned: int
    possible: int
    failing: int
    errors: int
    unsupported: int
    excepted: int
    skipped: int
    previous: int | None = None

    @property
    def score(self) -> int | None:
        """0-100, or None when nothing could be weighed."""
        return round(100 * self.earned / self.possible) if self.possible else None

    @property
    def change(self) -> int | None:
        """Points of score gained (positive) or lost since the previous run; None without one."""
        if self.previous is None or self.score is None:
            return None
        return self.score - self.previous


Counts = Mapping[tuple[str, str, str], int]
"""Findings of a run by (tenant, status, severity)."""


def finding_counts(findings: Iterable[Finding]) -> Counter[tuple[str, str, str]]:
    """Findings by (tenant, status, severity): what a score and a trend point need."""
    counted = Counter((f.tenant, f.status, f.severity) for f in findings)
    return Counter({(tenant, status.value, severity.value): n for (tenant, status, severity), n in counted.items()})


def postures(counts: Counts, previous: Counts | None = None, tenants: Iterable[str] = ()) -> list[Posture]:
    """Each tenant's posture, with the previous run's score when there is one."""
    names = sorted({t for t, _, _ in counts} | set(tenants))
    before = {p.tenant: p.score for p in postures(previous, None, names)} if previous is not None else {}
    # each tenant's counts apart first: five hundred tenants would otherwise each walk every tenant's counts
    by_tenant: dict[str, list[tuple[str, str, int]]] = {}
    for (t, status, severity), n in counts.items():
        by_tenant.setdefault(t, []).append((status, severity, n))
    result = []
    for tenant in names:
        earned = possible = 0
        by_status: Counter[str] = Counter()
        for status, severity, n in by_tenant.get(tenant, ()):
            by_status[status] += n
            weight = WEIGHTS[Severity(severity)] * n
            # Unknown is never a pass: an error costs its points like a failure; unsupported and
            # excepted are left out (shown beside the score), skipped restates a counted cause.
            if status in (Status.PASS.value, Status.FAIL.value, Status.ERROR.value):
                possible += weight
            if status == Status.PASS.value:
                earned += weight
        result.append(Posture(
            tenant, earned, possible, by_status["fail"], by_status["error"], by_status["unsupported"],
            by_status["excepted"], by_status["skipped"], before.get(tenant) if previous is not None else None,
        ))
    return result


@dataclass(slots=True)
class RootCause:
    """One failing check on one subject, the findings that follow from it, and the action that fixes it."""

    findings: list[Finding]
    dependants: list[Finding] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    change: ActionChange | None = None
    links: list[str] = field(default_factory=list)
    note: str = ""
    superseded_by: str = ""

    @property
    def first(self) -> Finding:
        """The finding that names the cause."""
        return self.findings[0]

    @property
    def severity(self) -> Severity:
        """The highest severity among the cause's findings."""
        return max((f.severity for f in self.findings), key=_RANK.__getitem__)

    @property
    def reach(self) -> int:
        """How many findings this one fix settles: the cause's items and its dependants."""
        return len(self.findings) + len(self.dependants)

    @property
    def key(self) -> str:
        """A stable anchor for the cause (the first finding's id)."""
        return self.first.id


FindingsNamed = Callable[[Collection[str]], Iterable[Finding]]
"""Reads the findings with these ids again, in any order (``Store.findings_named`` of one run, or ``among``)."""


@dataclass(slots=True)
class _Cause:
    """What ranking and ``reconcile`` need of one root cause, without its findings: a few hundred bytes."""

    tenant: str
    check: str
    subject: str
    severity: Severity
    first: str
    """The id of the finding read first, which names the cause."""
    actionable: bool
    """Whether that finding has a remediation action."""
    more: list[str] | None = None
    """The ids of its other findings, in the order read."""
    publish: list[str] | None = None
    dependants: list[tuple[int, str]] | None = None
    """(when read, id) of the findings that follow from it."""
    note: str = ""
    superseded_by: str = ""

    @property
    def key(self) -> str:
        """The cause's anchor, as ``RootCause.key``."""
        return self.first

    @property
    def ids(self) -> list[str]:
        """Its findings' ids, in the order read."""
        return [self.first, *(self.more or ())]

    def rank(self) -> tuple[int, int, str, str, str]:
        """Where the cause stands: most severe first, then widest reach, then by tenant, subject and check."""
        reach = 1 + len(self.more or ()) + len(self.dependants or ())
        return (-_RANK[self.severity], -reach, self.tenant, self.subject, self.check)


class CauseIndex:
    """The root causes of findings read once, kept as compact figures (``_Cause``) rather than findings.

    Ranking needs only each cause's severity, reach and names, and ``reconcile`` its records to publish; the
    findings of the causes shown are read again by id (``causes``), so memory grows with the causes, a few hundred
    bytes each, not with what their findings hold.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], dict[str, _Cause]] = {}
        self._following: dict[str, list[tuple[int, str]]] = {}  # caused_by: (when read, id) of what follows from it
        self._read = 0
        self._settled: list[_Cause] | None = None

    def add(self, f: Finding) -> None:
        """Read one finding (any status: only failing ones and those naming a cause are kept)."""
        self._read += 1
        if f.status is Status.FAIL and not f.caused_by:
            by_subject = self._groups.setdefault((f.tenant, f.check), {})
            cause = by_subject.get(f.subject)
            if cause is None:
                cause = by_subject[f.subject] = _Cause(f.tenant, f.check, f.subject, f.severity, f.id,
                                                       f.remediation is not None)
            else:
                if _RANK[f.severity] > _RANK[cause.severity]:
                    cause.severity = f.severity
                if cause.more is None:
                    cause.more = []
                cause.more.append(f.id)
            for record in publish_records(f.evidence):
                if cause.publish is None:
                    cause.publish = []
                if record not in cause.publish:
                    cause.publish.append(record)
        elif f.caused_by and f.status in (Status.SKIPPED, Status.FAIL):
            self._following.setdefault(f.caused_by, []).append((self._read, f.id))

    def _causes(self) -> list[_Cause]:
        """Every cause with its dependants, once all findings are read; ``reconcile``d in rank order."""
        if self._settled is None:
            causes = [c for by_subject in self._groups.values() for c in by_subject.values()]
            for cause in causes:
                for id_ in cause.ids:
                    following = self._following.get(id_)
                    if following:
                        cause.dependants = sorted([*(cause.dependants or ()), *following])
            reconcile(sorted((c for c in causes if c.publish), key=_Cause.rank))
            self._groups, self._following, self._settled = {}, {}, causes
        return self._settled

    def __len__(self) -> int:
        return len(self._causes())

    @property
    def dependants(self) -> int:
        """How many findings follow from the causes."""
        return sum(len(c.dependants or ()) for c in self._causes())

    def families(self) -> Counter[str]:
        """Failing findings of the causes by check family (the part of the check id before the dot)."""
        families: Counter[str] = Counter()
        for cause in self._causes():
            families[cause.check.partition(".")[0]] += 1 + len(cause.more or ())
        return families

    def first_actionable(self) -> str | None:
        """The check of the highest-ranked cause whose finding has a remediation action, or None."""
        actionable = [c for c in self._causes() if c.actionable]
        return min(actionable, key=_Cause.rank).check if actionable else None

    def causes(self, findings_named: FindingsNamed, signer: Signer | None = None,
               limit: int | None = None) -> list[RootCause]:
        """The ``limit`` highest-ranked causes (all without one) in full, their findings read again by id."""
        ranked = self._causes()
        top = sorted(ranked, key=_Cause.rank) if limit is None else heapq.nsmallest(limit, ranked, key=_Cause.rank)
        wanted = [id_ for c in top for id_ in [*c.ids, *(i for _, i in c.dependants or ())]]
        found = {f.id: f for f in findings_named(wanted)}
        shown = []
        for compact in top:
            cause = RootCause([found[i] for i in compact.ids], [found[i] for _, i in compact.dependants or ()],
                              list(compact.publish or ()), note=compact.note, superseded_by=compact.superseded_by)
            if cause.first.remediation is not None:
                cause.change = action_change(cause.first)
            if signer is not None:
                cause.links = [link for f in cause.findings if (link := remediation_link(f, signer))]
            shown.append(cause)
        return shown


def among(findings: Sequence[Finding]) -> FindingsNamed:
    """``FindingsNamed`` for findings held in memory."""
    def named(ids: Collection[str]) -> list[Finding]:
        wanted = set(ids)
        return [f for f in findings if f.id in wanted]
    return named


def root_causes(findings: Sequence[Finding], signer: Signer | None = None) -> list[RootCause]:
    """Failing findings grouped by tenant, check and subject, most severe and widest reach first.

    A skipped finding (or any finding naming a ``caused_by``) is listed under its cause, never as one
    of its own. Two causes of one domain that propose different records for one DNS name get one
    record to publish, with the reason (``reconcile``).
    """
    index = CauseIndex()
    for f in findings:
        index.add(f)
    return index.causes(among(findings), signer)


def _owner(record: str) -> tuple[str, str] | None:
    """The DNS name and type a publish line is for (``_dmarc.x.example. TXT "..."``), or None."""
    parts = record.split(None, 2)
    if len(parts) < 3 or not parts[0].endswith("."):
        return None
    return parts[0].lower(), parts[1].upper()


def _dmarc_policy(record: str) -> int:
    text = record.split(None, 2)[2].strip().strip('"')
    match = _POLICY.search(text)
    return _DMARC_STRENGTH.get(match.group(1).lower(), -1) if match else -1


def reconcile(causes: Sequence[_Cause]) -> None:
    """Give one record per DNS name when causes propose different ones; the other causes point to it.

    A DNS name holds one DMARC record (RFC 9989 §4.7: more than one is as good as none), so two
    proposals for ``_dmarc.<domain>`` (say ``dmarc.policy_weak``'s policy minimum and
    ``drift.dns_weakened``'s restoring last week's record) cannot both be published: the one with the
    stronger ``p=`` wins, because it meets the policy minimum; at equal strength the drift restore wins,
    because it keeps what the domain had (its reporting addresses and tags).
    """
    proposals: dict[tuple[str, str, str], list[tuple[_Cause, str]]] = {}
    for cause in causes:
        for record in cause.publish or ():
            owner = _owner(record)
            if owner is not None:
                proposals.setdefault((cause.tenant, *owner), []).append((cause, record))
    for (_, name, rdtype), offered in proposals.items():
        # Only a name that holds one record of its kind conflicts: other TXT names may hold several.
        if len({record for _, record in offered}) < 2:
            continue
        if name.startswith("_dmarc."):
            def rank(pair: tuple[_Cause, str]) -> tuple[int, bool, int]:
                return (_dmarc_policy(pair[1]), pair[0].check.startswith("drift."), _RANK[pair[0].severity])

            why = ("it sets the stronger policy (p=), so it also meets [policy] dmarc_min_policy"
                   if len({_dmarc_policy(r) for _, r in offered}) > 1
                   else "it restores the record the domain had, with its reporting addresses, at the same policy")
        elif "._domainkey." in name:
            # RFC 6376 §3.6.1: a selector publishes one key record; the DKIM check's proposal is about the key
            def rank(pair: tuple[_Cause, str]) -> tuple[int, bool, int]:
                return (0, pair[0].check.startswith("dkim."), _RANK[pair[0].severity])

            why = "a selector publishes one key, and this is the record the DKIM check asks for"
        else:
            continue
        chosen_cause, chosen = max(offered, key=rank)
        others = sorted({c.check for c, r in offered if r != chosen})
        chosen_cause.note = (f"Publish this one record at {name} {rdtype}: {', '.join(others)} proposed a different "
                             f"one; {why}. A name holds one such record, so publish it once.")
        for cause, record in offered:
            if record != chosen and cause is not chosen_cause:
                cause.publish = [r for r in cause.publish or () if r != record]
                said = (f"The record {chosen_cause.check} proposes for {name} fixes this too ({why}): "
                        "publish that one, not a second record.")
                cause.note = f"{cause.note} {said}".strip()
                if not cause.publish:
                    cause.superseded_by = chosen_cause.key
