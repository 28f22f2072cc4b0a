"""One flat, documented record per finding: the shape findings.json and findings.csv share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

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


def row_record(row: Any) -> dict[str, Any]:
    """The same record from a stored row (``Store.iter_rows``: evidence and remediation as JSON text), without
    building a Finding: what findings.json and findings.csv are written from."""
    remediation = orjson.loads(row.remediation) if row.remediation else None
    return {
        "id": row.fingerprint,
        "check": row.check_id,
        "status": row.status,
        "severity": row.severity,
        "tenant": row.tenant,
        "domain": row.domain,
        "subject": row.subject,
        "item": row.item,
        "title": row.title,
        "reason": row.reason,
        "evidence": orjson.loads(row.evidence),
        "remediation": {"action": remediation["action"], "params": remediation["params"]} if remediation else None,
        "first_seen": _iso(row.first_seen),
        "last_seen": _iso(row.last_seen),
        "run_id": row.run_id,
        "caused_by": row.caused_by or "",
    }


def _iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (SQLite gives it back without its zone; everything stored is UTC)."""
    if value is None:
        return None
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()
