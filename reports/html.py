"""report.html: a self-contained, escaped HTML report rendered from stored findings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def render_html(run: RunRecord, findings: Sequence[Finding], events: Mapping[str, Sequence[str]], path: Path) -> Path:
    """Write the report for one run."""
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
    )
    path.write_text(html, encoding="utf-8")
    return path
