"""One flat, documented record per finding: the shape findings.json and findings.csv share."""

from __future__ import annotations

from typing import Any

from scanner.model import Finding

COLUMNS = (
    "id", "check", "status", "severity", "tenant", "domain", "subject", "item", "title", "reason",
    "evidence", "remediation", "first_seen", "last_seen", "run_id", "caused_by",
)
"""findings.csv columns, in order; part of the evidence contract."""


def finding_record(finding: Finding) -> dict[str, Any]:
    """A finding as the JSON object DESIGN.md documents."""
    return {
        "id": finding.id,
        "check": finding.check,
        "status": finding.status.value,
        "severity": finding.severity.value,
        "tenant": finding.tenant,
        "domain": finding.domain,
        "subject": finding.subject,
        "item": finding.item,
        "title": finding.title,
        "reason": finding.reason,
        "evidence": dict(finding.evidence),
        "remediation": (
            {"action": finding.remediation.action, "params": dict(finding.remediation.params)}
            if finding.remediation
            else None
        ),
        "first_seen": finding.first_seen.isoformat() if finding.first_seen else None,
        "last_seen": finding.last_seen.isoformat() if finding.last_seen else None,
        "run_id": finding.run_id,
        "caused_by": finding.caused_by,  # with status skipped: the id of the root finding it restates
    }
