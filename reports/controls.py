"""Per-control status: a run's findings judged by framework control, for every tenant the framework covers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks.controls import Catalogue, Control, Framework
from scanner.model import Finding, Status

PASS, FAIL, NOT_ASSESSED, EXCEPTED = "pass", "fail", "not assessed", "excepted"
DNS_ONLY = "none (DNS only)"
CONTROL_COLUMNS = (
    "framework", "version", "control", "title", "run_id", "tenant", "status", "failing_subjects", "finding_ids",
    "checks", "coverage", "note", "reason",
)
"""controls.csv columns, in order; part of the evidence contract documented in README.md."""
CATALOGUE_COLUMNS = ("framework", "version", "control", "title", "checks", "coverage", "note")
"""The columns of ``mailwarden controls --format csv`` (and the keys of its JSON objects)."""
_NAMED_REASONS = 3


@dataclass(slots=True)
class _Tally:
    failing: set[str] = field(default_factory=set)
    roots: set[str] = field(default_factory=set)
    unknown: dict[str, None] = field(default_factory=dict)  # reasons, in order, without repeats
    excepted: int = 0
    seen: int = 0


@dataclass(frozen=True, slots=True)
class ControlStatus:
    """One control's verdict for one tenant in one run, with the root findings behind a failure."""

    framework: Framework
    control: Control
    tenant: str
    status: str
    failing_subjects: tuple[str, ...] = ()
    finding_ids: tuple[str, ...] = ()
    reason: str = ""

    def record(self, run_id: str) -> dict[str, Any]:
        """The controls.csv row."""
        return {
            "framework": self.framework.id, "version": self.framework.version, "control": self.control.id,
            "title": self.control.title, "run_id": run_id, "tenant": self.tenant, "status": self.status,
            "failing_subjects": len(self.failing_subjects), "finding_ids": " ".join(self.finding_ids),
            "checks": " ".join(self.control.checks), "coverage": self.control.coverage, "note": self.control.note,
            "reason": self.reason,
        }


def applies(framework: Framework, provider: str) -> bool:
    """Whether a framework speaks to a tenant: provider-specific baselines to their provider's tenants and
    to DNS-only ones (whose DNS controls apply; their mailbox controls come out not assessed)."""
    return not framework.providers or provider == DNS_ONLY or provider in framework.providers


def control_statuses(
    catalogue: Catalogue, findings: Iterable[Finding], tenants: Mapping[str, str],
    frameworks: Iterable[Framework] | None = None, *, passed: Mapping[tuple[str, str], int] | None = None,
) -> list[ControlStatus]:
    """Every (framework, control, tenant) verdict for one run; ``tenants`` maps each tenant to its provider.

    ``pass`` only when every mapped check passed for every subject; ``fail`` when any subject fails
    (a finding skipped because a more basic one failed counts, under its root finding's id); ``not assessed``
    when a mapped check could not decide (error, unsupported) or judged nothing; ``excepted`` when the only
    failures are covered by approved exceptions. ``passed`` counts passes per (check, tenant) when ``findings``
    holds none (the store's counts: a report does not read every pass).
    """
    tally = ControlTally(catalogue, tenants, frameworks, passed=passed)
    for finding in findings:
        tally.add(finding)
    return tally.statuses()


class ControlTally:
    """``control_statuses`` for findings that stream past one at a time (``add``), none of them held.

    ``ids=False`` leaves out the root findings' ids (each verdict's ``finding_ids`` is empty): a report shows how
    many subjects fail a control, not which findings, and a set of ids per control and tenant is not kept for it.
    """

    def __init__(
        self, catalogue: Catalogue, tenants: Mapping[str, str], frameworks: Iterable[Framework] | None = None, *,
        passed: Mapping[tuple[str, str], int] | None = None, ids: bool = True,
    ) -> None:
        self._frameworks = tuple(frameworks) if frameworks is not None else catalogue.frameworks
        self._tenants = tenants
        self._passed = passed or {}
        self._ids = ids
        self._by_check: dict[str, list[tuple[str, str]]] = {}
        for framework in self._frameworks:
            for control in framework.controls:
                for check_id in control.checks:
                    self._by_check.setdefault(check_id, []).append((framework.id, control.id))
        self._tallies: dict[tuple[str, str, str], _Tally] = {}

    def add(self, finding: Finding) -> None:
        """Count one finding towards each control its check is mapped to."""
        for framework_id, control_id in self._by_check.get(finding.check, ()):
            tally = self._tallies.setdefault((framework_id, control_id, finding.tenant), _Tally())
            tally.seen += 1
            if finding.status is Status.FAIL:
                tally.failing.add(finding.subject)
                if self._ids:
                    tally.roots.add(finding.id)
            elif finding.status is Status.SKIPPED:
                tally.failing.add(finding.subject)
                if self._ids:
                    tally.roots.add(finding.caused_by or finding.id)
            elif finding.status in (Status.ERROR, Status.UNSUPPORTED):
                tally.unknown[f"{finding.check}: {finding.reason}" if finding.reason else finding.check] = None
            elif finding.status is Status.EXCEPTED:
                tally.excepted += 1

    def statuses(self) -> list[ControlStatus]:
        """The verdicts of the findings added so far and the passes counted."""
        for (check_id, tenant), n in self._passed.items():
            for framework_id, control_id in self._by_check.get(check_id, ()):
                self._tallies.setdefault((framework_id, control_id, tenant), _Tally()).seen += n
        self._passed = {}
        return list(_verdicts(self._frameworks, self._tallies, self._tenants))


def _verdicts(
    frameworks: Iterable[Framework], tallies: Mapping[tuple[str, str, str], _Tally], tenants: Mapping[str, str]
) -> Iterator[ControlStatus]:
    for framework in frameworks:
        for control in framework.controls:
            for tenant in sorted(tenants):
                if not applies(framework, tenants[tenant]):
                    continue
                tally = tallies.get((framework.id, control.id, tenant))
                if tally is None or tally.seen == 0:
                    yield ControlStatus(framework, control, tenant, NOT_ASSESSED,
                                        reason="no finding of the mapped checks in this run")
                elif tally.failing:
                    yield ControlStatus(framework, control, tenant, FAIL, tuple(sorted(tally.failing)),
                                        tuple(sorted(tally.roots)))
                elif tally.unknown:
                    reasons = list(tally.unknown)
                    more = f" (+{len(reasons) - _NAMED_REASONS} more)" if len(reasons) > _NAMED_REASONS else ""
                    yield ControlStatus(framework, control, tenant, NOT_ASSESSED,
                                        reason="; ".join(reasons[:_NAMED_REASONS]) + more)
                elif tally.excepted:
                    yield ControlStatus(framework, control, tenant, EXCEPTED,
                                        reason=f"{tally.excepted} failing finding(s) covered by approved exceptions")
                else:
                    yield ControlStatus(framework, control, tenant, PASS)


def tenant_providers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Each tenant of a run's scope with its provider (as the run recorded it)."""
    tenants = scope.get("tenants", {}) if isinstance(scope, Mapping) else {}
    return {name: str((entry or {}).get("provider") or DNS_ONLY) for name, entry in tenants.items()}


def catalogue_rows(catalogue: Catalogue, frameworks: Iterable[Framework] | None = None) -> list[dict[str, str]]:
    """The catalogue as flat rows: one per control, with its checks and coverage."""
    return [
        {"framework": f.id, "version": f.version, "control": c.id, "title": c.title, "checks": " ".join(c.checks),
         "coverage": c.coverage, "note": c.note}
        for f in (frameworks if frameworks is not None else catalogue.frameworks) for c in f.controls
    ]


def control_matrix(statuses: Sequence[ControlStatus]) -> list[dict[str, Any]]:
    """Verdicts as the report shows them: per framework, a row per control and a column per tenant."""
    frameworks: dict[str, dict[str, Any]] = {}
    for verdict in statuses:
        framework = frameworks.setdefault(verdict.framework.id, {
            "id": verdict.framework.id, "name": verdict.framework.name, "version": verdict.framework.version,
            "tenants": [], "rows": {}, "totals": {},
        })
        if verdict.tenant not in framework["tenants"]:
            framework["tenants"].append(verdict.tenant)
        row = framework["rows"].setdefault(verdict.control.id, {"control": verdict.control, "cells": []})
        row["cells"].append(verdict)
        framework["totals"][verdict.status] = framework["totals"].get(verdict.status, 0) + 1
    order = (FAIL, NOT_ASSESSED, EXCEPTED, PASS)
    return [
        {**f, "rows": list(f["rows"].values()),
         "totals": [(status, f["totals"][status]) for status in order if status in f["totals"]]}
        for f in frameworks.values()
    ]
