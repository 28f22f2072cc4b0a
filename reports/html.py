"""report.html: one self-contained, escaped HTML file rendered from the store (no CDN, works from file://)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from checks.controls import load_catalogue
from checks.registry import Sender
from reports.actions import action_change, link_signer, remediation_link
from reports.controls import ControlStatus, control_matrix, control_statuses, tenant_providers
from reports.dmarc_sources import senders_seen
from remediation.links import Signer
from scanner.config import RemediationConfig
from scanner.model import Finding, Severity, Status
from scanner.dmarc_store import daily_traffic, latest_report_end, source_traffic
from scanner.store import RunRecord, Store

TEMPLATES = Path(__file__).resolve().parent / "templates"
SHOWN = (Status.FAIL, Status.ERROR, Status.EXCEPTED, Status.UNSUPPORTED)
TREND_RUNS = 12
"""How many runs (this one included) the trend chart shows."""
LISTED = 50
"""How many new and resolved findings the summary names before saying how many more."""


def environment() -> jinja2.Environment:
    """The reports' jinja2 environment: autoescape on for every HTML template, strict about undefined names."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        # every value is escaped, whatever a TXT record or display name holds; .txt templates are plain text
        autoescape=jinja2.select_autoescape(disabled_extensions=("txt.j2",), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def script_json(value: object) -> Markup:
    """JSON safe inside a ``<script type="application/json">`` element.

    HTML §13.2.5 (script data states): ``</script`` ends the element and ``<!--`` changes how the
    parser reads on, so every ``<``, ``>`` and ``&`` is written as a JSON ``\\u`` escape; JSON.parse
    reads them back unchanged.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)  # noqa: S704 - escaped for the script-data context just above


def _csp_hash(script: str) -> str:
    # CSP Level 3 §8.4: a 'sha256-…' source allows exactly the inline script with that text; anything
    # injected despite the escaping would not run.
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """One run's counts for the trend chart."""

    run_id: str
    started: str
    counts: Mapping[str, int]


def exception_rows(
    exceptions: Iterable[Mapping[str, Any]], findings: Sequence[Finding], run: RunRecord
) -> list[dict[str, Any]]:
    """Each exception of the run's snapshot with the findings it covers and whether it has ended.

    Whether it expired comes from the run's ``exception.expired`` finding for it (judged as of the
    run's evaluation date); without one, from its expiry date against the run's start.
    """
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    rows = []
    for exception in sorted(exceptions, key=lambda e: (str(e["check"]), str(e["subject"]))):
        key = f"{exception['check']}/{exception['subject']}"
        expires = date.fromisoformat(str(exception["expires"]))
        covered = [
            f for f in by_check.get(str(exception["check"]), ())
            if f.subject.lower() == str(exception["subject"]).lower()
        ]
        verdicts = {
            f.check: f for check in ("exception.expired", "exception.unknown_subject")
            for f in by_check.get(check, ()) if f.item == key
        }
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


def status_counts(findings: Iterable[Finding]) -> Counter[str]:
    """How many findings have each status."""
    return Counter(f.status.value for f in findings)


def trend(store: Store, run: RunRecord, events: Mapping[str, Sequence[str]]) -> list[TrendPoint]:
    """New (or reopened) and resolved findings per run, for the recent finished runs up to this one.

    Read from ``Store.lifecycle_events``, a query of one run's events each, so the chart costs next to
    nothing at any size; counts by status for earlier runs would need every earlier run's findings.
    """
    earlier = [r for r in store.runs() if r.started <= run.started and r.id != run.id
               and r.state in ("complete", "partial")][-(TREND_RUNS - 1):]
    points = []
    for record in earlier:
        points.append(_point(record, store.lifecycle_events(record.id)))
    points.append(_point(run, events))
    return points


def _point(run: RunRecord, events: Mapping[str, Sequence[str]]) -> TrendPoint:
    return TrendPoint(run.id, run.started.date().isoformat(), {
        "new": len(events.get("new", ())) + len(events.get("reopened", ())),
        "resolved": len(events.get("resolved", ())),
    })


def trend_svg(points: Sequence[TrendPoint], width: int = 560, height: int = 140) -> dict[str, Any]:
    """Polylines and dots (numbers only) for the chart of new and resolved findings per run."""
    series = ("new", "resolved")
    top = max([max((p.counts.get(s, 0) for s in series), default=0) for p in points] + [1])
    left, bottom, right, upper = 40, height - 20, width - 10, 10
    step = (right - left) / max(len(points) - 1, 1)

    def xy(i: int, value: int) -> str:
        return f"{left + i * step:.1f},{bottom - (bottom - upper) * value / top:.1f}"

    return {
        "width": width, "height": height, "left": left, "bottom": bottom, "right": right, "upper": upper,
        "top": top,
        "lines": [(s, " ".join(xy(i, p.counts.get(s, 0)) for i, p in enumerate(points))) for s in series],
        "dots": [(s, [(xy(i, p.counts.get(s, 0)).split(","), p.counts.get(s, 0), p.started)
                      for i, p in enumerate(points)]) for s in series],
        "labels": [(f"{left + i * step:.1f}", p.started) for i, p in enumerate(points)],
    }


def _event_flags(events: Mapping[str, Sequence[str]]) -> dict[str, int]:
    flags = {fp: 1 for fp in events.get("new", ())}
    flags.update({fp: 2 for fp in events.get("reopened", ())})
    return flags


def report_data(
    findings: Sequence[Finding],
    events: Mapping[str, Sequence[str]],
    domains: Mapping[tuple[str, str], Any],
    display_names: Mapping[str, str] | None = None,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """The findings and each domain's DNS as seen, compacted for the page's script (strings interned)."""
    statuses = [s.value for s in Status]
    severities = [s.value for s in Severity]
    tenants: dict[str, int] = {}
    names: dict[str, int] = {}
    checks: dict[str, int] = {}
    titles: list[str] = []
    flags = _event_flags(events)
    rows = []
    status_index = {s: i for i, s in enumerate(Status)}
    severity_index = {s: i for i, s in enumerate(Severity)}
    for f in findings:
        check_i = checks.setdefault(f.check, len(checks))
        if check_i == len(titles):
            titles.append(f.title)
        change = action_change(f)
        rows.append([
            f.id, check_i, status_index[f.status], severity_index[f.severity],
            tenants.setdefault(f.tenant, len(tenants)), names.setdefault(f.domain, len(names)),
            f.subject, f.item, f.reason, f.evidence,
            [change.action, change.summary, change.before, change.after] if change else None,
            remediation_link(f, signer) if change else None,
            f.first_seen.isoformat() if f.first_seen else "",
            flags.get(f.id, 0),
        ])
    dns: dict[str, Any] = {}
    for (_, key), body in sorted(domains.items()):
        name = str(body.get("name", key.partition("/")[2]))
        names.setdefault(name, len(names))
        tenants.setdefault(str(body.get("tenant", "")), len(tenants))
        answers = (body.get("dns") or {}).get("answers") or {}
        dns.setdefault(name, {
            "tenant": body.get("tenant", ""),
            "parked": bool(body.get("parked")),
            "catch_all": body.get("catch_all"),
            "answers": [
                [purpose, a.get("name", ""), a.get("rdtype", ""), a.get("outcome", ""), a.get("records", []),
                 a.get("error")]
                for purpose, a in sorted(answers.items())
            ],
        })
    display_names = display_names or {}
    subjects = {f.subject for f in findings}
    return {
        "names": {subject: name for subject, name in display_names.items() if name and subject in subjects},
        "statuses": statuses,
        "severities": severities,
        "tenants": list(tenants),
        "domains": list(names),
        "checks": [[c, t] for c, t in zip(checks, titles, strict=True)],
        "findings": rows,
        "dns": dns,
    }


def _named(fingerprints: Iterable[str], findings: Sequence[Finding]) -> list[Finding]:
    wanted = set(fingerprints)
    return sorted((f for f in findings if f.id in wanted), key=lambda f: (-f.severity.rank, f.tenant, f.subject, f.check))


def dmarc_view(store: Store, run: RunRecord, senders: Mapping[str, Sender], window_days: int) -> list[dict[str, Any]]:
    """The run's domains' reported traffic over the window up to the newest report, as imported by the run's end."""
    domains = [key.partition("/")[2] for _, key in store.snapshot(run.id, "domain")]
    if not domains:
        return []
    seen_by = run.finished or run.started
    # The window ends at the newest report the run could see (reports arrive a day or more after the
    # mail they describe), never after the run started.
    latest = latest_report_end(store, domains, imported_before=seen_by, not_after=run.started)
    if latest is None:
        return []
    until = min(run.started, latest)
    since = until - timedelta(days=window_days)
    traffic = source_traffic(store, since=since, until=until, domains=domains, imported_before=seen_by)
    days = daily_traffic(store, since=since, until=until, domains=domains, imported_before=seen_by)
    return senders_seen(traffic, days, senders, since.date(), until.date())


def render_report(
    store: Store, run: RunRecord, findings: Sequence[Finding], events: Mapping[str, Sequence[str]], path: Path,
    remediation: RemediationConfig | None = None, *, senders: Mapping[str, Sender] | None = None,
    dmarc_window_days: int = 14,
) -> Path:
    """Write report.html for a stored run, reading its history, snapshot and exceptions from the store.

    With ``remediation`` (the ``[remediation]`` config) naming a base URL and a secret, each failing
    finding with a job carries its signed link. ``senders`` (the sender catalogue) names the sources the
    DMARC aggregate reports show over the ``dmarc_window_days`` before the run.
    """
    points = trend(store, run, events)
    statuses = control_statuses(load_catalogue(), findings, tenant_providers(run.scope))
    return render_html(
        run, findings, events, path,
        exceptions=store.snapshot(run.id, "exception").values(),
        domains=store.snapshot(run.id, "domain"),
        display_names={
            str(body.get("address", "")): str(body.get("display_name") or "")
            for body in store.snapshot(run.id, "mailbox").values()
        },
        points=points,
        signer=link_signer(remediation),
        dmarc_sources=dmarc_view(store, run, senders or {}, dmarc_window_days),
        dmarc_window=f"the {dmarc_window_days} days up to the newest report",
        controls=statuses,
    )


def render_html(
    run: RunRecord,
    findings: Sequence[Finding],
    events: Mapping[str, Sequence[str]],
    path: Path,
    exceptions: Iterable[Mapping[str, Any]] = (),
    domains: Mapping[tuple[str, str], Any] | None = None,
    points: Sequence[TrendPoint] = (),
    display_names: Mapping[str, str] | None = None,
    signer: Signer | None = None,
    dmarc_sources: Sequence[Mapping[str, Any]] = (),
    dmarc_window: str = "",
    controls: Sequence[ControlStatus] = (),
) -> Path:
    """Write the report for one run; ``exceptions`` and ``domains`` are the run's snapshot of those kinds.

    ``display_names`` maps a mailbox address to the name its provider shows, for the findings table.
    """
    by_status = status_counts(findings)
    failing = [f for f in findings if f.status is Status.FAIL]
    by_severity = Counter(f.severity.value for f in failing)
    per_tenant: dict[str, Counter[str]] = {}
    for f in findings:
        counts = per_tenant.setdefault(f.tenant, Counter())
        counts[f.status.value] += 1
        if f.status is Status.FAIL:
            counts["sev:" + f.severity.value] += 1
    for tenant in run.scope.get("tenants", {}):
        per_tenant.setdefault(tenant, Counter())
    new = _named(list(events.get("new", ())) + list(events.get("reopened", ())), findings)
    resolved = _named(events.get("resolved", ()), findings)  # a subject gone from the inventory is counted, not named
    resolved_count = len(events.get("resolved", ()))
    unsupported: dict[tuple[str, str], Counter[str]] = {}
    for f in findings:
        if f.status in (Status.UNSUPPORTED, Status.ERROR):
            unsupported.setdefault((f.tenant, f.check), Counter())[f.status.value] += 1
    script = (TEMPLATES / "report.js").read_text(encoding="utf-8")
    points = list(points) or [_point(run, events)]
    html = environment().get_template("report.html.j2").render(
        run=run,
        by_status=by_status,
        by_severity=[(s.value, by_severity.get(s.value, 0)) for s in reversed(Severity)],
        severities=[s.value for s in reversed(Severity)],
        statuses=[s.value for s in Status],
        per_tenant=sorted(per_tenant.items()),
        needing=sum(by_status.get(s.value, 0) for s in SHOWN),
        passed=by_status.get("pass", 0),
        new=new[:LISTED],
        new_count=len(new),
        resolved=resolved[:LISTED],
        resolved_count=resolved_count,
        trend=trend_svg(points),
        points=points,
        coverage_checks=sorted((t, c, dict(n)) for (t, c), n in unsupported.items()),
        exceptions=exception_rows(exceptions, findings, run),
        dmarc_sources=dmarc_sources,
        dmarc_window=dmarc_window or "no window",
        controls=control_matrix(controls),
        data=script_json(report_data(findings, events, domains or {}, display_names, signer)),
        css=Markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),  # noqa: S704 - our own file
        js=Markup(script),  # noqa: S704 - our own file
        script_hash=_csp_hash("\n" + script + "\n"),
    )
    path.write_text(html, encoding="utf-8")
    return path
