"""report.html: a self-contained, escaped HTML report rendered from stored findings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import jinja2

from scanner.model import Finding, Severity, Status
from scanner.store import RunRecord

TEMPLATES = Path(__file__).resolve().parent / "templates"
SHOWN = (Status.FAIL, Status.ERROR, Status.EXCEPTED, Status.UNSUPPORTED)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is escaped, whatever a TXT record or display name holds
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def exception_rows(
    exceptions: Iterable[Mapping[str, Any]], findings: Sequence[Finding], run: RunRecord
) -> list[dict[str, Any]]:
    """Each exception of the run's snapshot with the findings it covers and whether it has ended.

    Whether it expired comes from the run's ``exception.expired`` finding for it (judged as of the
    run's evaluation date); without one, from its expiry date against the run's start.
    """
    rows = []
    for exception in sorted(exceptions, key=lambda e: (str(e["check"]), str(e["subject"]))):
        key = f"{exception['check']}/{exception['subject']}"
        expires = date.fromisoformat(str(exception["expires"]))
        covered = [
            f for f in findings
            if f.check == exception["check"] and f.subject.lower() == str(exception["subject"]).lower()
        ]
        verdicts = {f.check: f for f in findings if f.item == key and f.check.startswith("exception.")}
        expired_finding = verdicts.get("exception.expired")
        expired = (
            expired_finding.status in (Status.FAIL, Status.EXCEPTED)
            if expired_finding is not None
            else expires < run.started.date()
        )
        unknown = verdicts.get("exception.unknown_subject")
        rows.append({
            "check": exception["check"],
            "subject": exception["subject"],
            "reason": exception["reason"],
            "approved_by": exception["approved_by"],
            "expires": expires.isoformat(),
            "expired": expired,
            "unknown_subject": unknown is not None and unknown.status in (Status.FAIL, Status.EXCEPTED),
            "covers": [(f.status.value, f.subject, f.item) for f in covered],
        })
    return rows


def render_html(
    run: RunRecord,
    findings: Sequence[Finding],
    events: Mapping[str, Sequence[str]],
    path: Path,
    exceptions: Iterable[Mapping[str, Any]] = (),
) -> Path:
    """Write the report for one run; ``exceptions`` are the run's snapshot of kind "exception"."""
    by_status = Counter(f.status.value for f in findings)
    failing = [f for f in findings if f.status is Status.FAIL]
    by_severity = Counter(f.severity.value for f in failing)
    per_tenant: dict[str, Counter[str]] = {}
    for f in findings:
        per_tenant.setdefault(f.tenant, Counter())[f.status.value] += 1
    shown = sorted(
        (f for f in findings if f.status in SHOWN),
        key=lambda f: (SHOWN.index(f.status), -f.severity.rank, f.tenant, f.subject, f.check),
    )
    new = set(events.get("new", ())) | set(events.get("reopened", ()))
    html = _environment().get_template("report.html.j2").render(
        run=run,
        by_status=by_status,
        by_severity=[(s.value, by_severity.get(s.value, 0)) for s in reversed(Severity)],
        statuses=[s.value for s in Status],
        per_tenant=sorted(per_tenant.items()),
        findings=shown,
        passed=by_status.get("pass", 0),
        new=new,
        resolved=len(events.get("resolved", ())),
        exceptions=exception_rows(exceptions, findings, run),
    )
    path.write_text(html, encoding="utf-8")
    return path
