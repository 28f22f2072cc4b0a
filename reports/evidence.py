"""The evidence pack: findings, controls, changes, inventory and exceptions as CSV over a time range, the same
tables as one workbook, and a hashed manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from checks.controls import Catalogue
from checks.registry import Sender
from reports.changelog import change_record
from reports.controls import CONTROL_COLUMNS, control_statuses, tenant_providers
from reports.csv_out import write_csv
from reports.dmarc_sources import SOURCE_COLUMNS, source_rows
from reports.html import exception_rows
from reports.manifest import sha256_file
from reports.workbook import WORKBOOK, sheet_titles, write_workbook
from reports.records import COLUMNS, finding_record
from scanner import __version__
from scanner.errors import MailwardenError
from scanner.model import Finding, Status
from scanner.aggregate.store import source_traffic
from scanner.store.database import RunRecord, Store, canonical, content_hash, jobs

CHANGE_COLUMNS = (
    "at", "source", "run_id", "job_id", "tenant", "domain", "subject", "object_type", "object_key", "field",
    "action", "before", "after",
)
"""changes.csv columns, in order: the change log's fields (scans' and remediation jobs' changes alike)."""
INVENTORY_COLUMNS = ("run_id", "kind", "tenant", "key", "sha256", "body")
"""inventory.csv columns, in order."""
EXCEPTION_COLUMNS = (
    "check", "subject", "reason", "approved_by", "expires", "first_run", "last_run", "expired_at_last_run",
    "covered_at_last_run",
)
"""exceptions.csv columns, in order."""
REMEDIATION_COLUMNS = (
    "job_id", "created", "finished", "state", "action", "tenant", "domain", "subject", "check", "finding", "run_id",
    "actor", "reason", "undo_of", "before", "after", "error",
)
"""remediation_log.csv columns, in order."""
PACK_COLUMNS: Mapping[str, Sequence[str]] = {
    "findings.csv": COLUMNS,
    "controls.csv": CONTROL_COLUMNS,
    "changes.csv": CHANGE_COLUMNS,
    "inventory.csv": INVENTORY_COLUMNS,
    "exceptions.csv": EXCEPTION_COLUMNS,
    "remediation_log.csv": REMEDIATION_COLUMNS,
    "dmarc_sources.csv": SOURCE_COLUMNS,
}
"""Every file of the pack with its columns; part of the evidence contract documented in README.md."""
FINISHED = ("complete", "partial")


class EvidenceError(MailwardenError):
    """The evidence pack could not be written, or does not match its manifest."""


@dataclass(frozen=True, slots=True)
class Period:
    """The time range a pack covers: runs started at or after ``since`` and at or before ``until``."""

    since: datetime | None
    until: datetime | None

    @classmethod
    def of(cls, since: date | datetime | None, until: date | datetime | None) -> Period:
        """A period from dates (``until`` inclusive, to the end of its day) or aware datetimes, in UTC."""
        def moment(value: date | datetime | None, end: bool) -> datetime | None:
            if value is None:
                return None
            if not isinstance(value, datetime):
                return datetime.combine(value, time.max if end else time.min, tzinfo=UTC)
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return cls(moment(since, False), moment(until, True))

    def holds(self, when: datetime) -> bool:
        """True when ``when`` falls inside the period."""
        return (self.since is None or when >= self.since) and (self.until is None or when <= self.until)


def select_runs(store: Store, period: Period) -> list[RunRecord]:
    """Finished runs (complete or partial) that started inside the period, oldest first."""
    return [r for r in store.runs() if r.state in FINISHED and period.holds(r.started)]


def _tenant_of(kind: str, key: str) -> str:
    # Snapshot keys are "tenant/name" for domains, mailboxes and people; exceptions are "check/subject".
    return "" if kind == "exception" else key.partition("/")[0]


def logged_changes(store: Store, period: Period, tenant: str | None) -> Iterator[dict[str, Any]]:
    """The change log's rows inside the period: what scans saw change, and what remediation jobs changed.

    The change log never records a partial crawl's unseen objects as removed, so neither does this file.
    """
    for change in store.changes(since=period.since, tenant=tenant):
        if period.until is not None and change.at > period.until:
            continue
        record = change_record(change)
        yield {**record, "before": _text(change.before), "after": _text(change.after),
               "run_id": change.run_id or "", "job_id": change.job_id or ""}


def remediation_rows(store: Store, period: Period, tenant: str | None) -> Iterator[dict[str, Any]]:
    """Every remediation job created inside the period, with who asked, why, and its before and after."""
    query = sa.select(jobs).order_by(jobs.c.created, jobs.c.id)
    if period.since is not None:
        query = query.where(jobs.c.created >= period.since)
    if period.until is not None:
        query = query.where(jobs.c.created <= period.until)
    if tenant is not None:
        query = query.where(jobs.c.tenant == tenant)
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            yield {
                "job_id": row.id, "created": _when(_aware(row.created)), "finished": _when(_aware(row.finished)),
                "state": row.state, "action": row.action, "tenant": row.tenant, "domain": row.domain,
                "subject": row.subject, "check": row.check_id, "finding": row.finding, "run_id": row.run_id,
                "actor": row.actor, "reason": row.reason, "undo_of": row.undo_of or "",
                "before": _text(row.before), "after": _text(row.after), "error": row.error or "",
            }


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else canonical(value)


def _inventory_rows(store: Store, run: RunRecord, tenant: str | None) -> Iterator[dict[str, Any]]:
    for (kind, key), body in sorted(store.snapshot(run.id).items()):
        owner = _tenant_of(kind, key)
        if kind == "exception" or (tenant is not None and owner != tenant):
            continue
        text = canonical(body)
        yield {"run_id": run.id, "kind": kind, "tenant": owner, "key": key, "sha256": content_hash(text),
               "body": text}


def _exception_rows(
    store: Store, runs: Sequence[RunRecord], findings: Mapping[str, Sequence[Finding]], tenant: str | None
) -> list[dict[str, Any]]:
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        snapshot = store.snapshot(run.id, "exception").values()
        run_findings = findings[run.id]
        subjects = {f.subject.lower() for f in run_findings} | {f.domain for f in run_findings}
        for row in exception_rows(snapshot, run_findings, run):
            if tenant is not None and str(row["subject"]).lower() not in subjects:
                continue
            key = (row["check"], row["subject"], row["reason"], row["approved_by"], row["expires"])
            entry = seen.setdefault(key, {
                "check": row["check"], "subject": row["subject"], "reason": row["reason"],
                "approved_by": row["approved_by"], "expires": row["expires"], "first_run": run.id,
            })
            entry["last_run"] = run.id
            entry["expired_at_last_run"] = "yes" if row["expired"] else "no"
            entry["covered_at_last_run"] = sum(1 for status, _, _ in row["covers"] if status == Status.EXCEPTED.value)
    return sorted(seen.values(), key=lambda e: (e["check"], e["subject"], e["expires"]))


def _source_rows(store: Store, period: Period, run: RunRecord, tenant: str | None,
                 senders: Mapping[str, Sender]) -> list[dict[str, Any]]:
    """The sources the period's DMARC aggregate reports name (one tenant's domains and their subdomains)."""
    traffic = source_traffic(store, since=period.since, until=period.until)
    if tenant is not None:
        owned = [key.partition("/")[2] for key in (k for _, k in store.snapshot(run.id, "domain"))
                 if key.partition("/")[0] == tenant]
        traffic = [t for t in traffic if any(t.domain == d or t.domain.endswith("." + d) for d in owned)]
    return source_rows(traffic, senders)
def _control_rows(
    catalogue: Catalogue, framework: str | None, runs: Sequence[RunRecord], findings: Mapping[str, Sequence[Finding]],
    tenant: str | None,
) -> Iterator[dict[str, Any]]:
    chosen = [catalogue.framework(framework)] if framework else None
    for run in runs:
        tenants = {name: provider for name, provider in tenant_providers(run.scope).items()
                   if tenant is None or name == tenant}
        for verdict in control_statuses(catalogue, findings[run.id], tenants, chosen):
            yield verdict.record(run.id)


def write_evidence(
    store: Store, out_dir: Path, period: Period, *, tenant: str | None = None, config_digest: str = "",
    senders: Mapping[str, Sender] | None = None, catalogue: Catalogue | None = None, framework: str | None = None,
) -> list[Path]:
    """Write the evidence pack for the runs inside ``period`` (one tenant's, or all) and its manifest.

    With ``framework``, the pack holds that framework's controls and only the findings of the checks
    behind them. Without a ``catalogue``, controls.csv has its header and no rows.
    """
    runs = select_runs(store, period)
    if not runs:
        raise EvidenceError(f"no finished run in the store {_period_words(period.since, period.until)}")
    behind: set[str] | None = None
    if framework is not None:
        if catalogue is None:
            raise EvidenceError("a pack for one framework needs the control catalogue")
        behind = {check for control in catalogue.framework(framework).controls for check in control.checks}
    out_dir.mkdir(parents=True, exist_ok=True)
    findings = {
        run.id: [f for f in store.findings_for_run(run.id)
                 if (tenant is None or f.tenant == tenant) and (behind is None or f.check in behind)]
        for run in runs
    }
    rows: dict[str, int] = {}
    rows["findings.csv"] = write_csv(out_dir / "findings.csv", COLUMNS,
                                     (finding_record(f) for run in runs for f in findings[run.id]))
    rows["controls.csv"] = write_csv(
        out_dir / "controls.csv", CONTROL_COLUMNS,
        _control_rows(catalogue, framework, runs, findings, tenant) if catalogue is not None else (),
    )
    rows["changes.csv"] = write_csv(out_dir / "changes.csv", CHANGE_COLUMNS, logged_changes(store, period, tenant))
    rows["inventory.csv"] = write_csv(out_dir / "inventory.csv", INVENTORY_COLUMNS,
                                      _inventory_rows(store, runs[-1], tenant))
    rows["exceptions.csv"] = write_csv(out_dir / "exceptions.csv", EXCEPTION_COLUMNS,
                                       _exception_rows(store, runs, findings, tenant))
    rows["remediation_log.csv"] = write_csv(out_dir / "remediation_log.csv", REMEDIATION_COLUMNS,
                                            remediation_rows(store, period, tenant))
    rows["dmarc_sources.csv"] = write_csv(out_dir / "dmarc_sources.csv", SOURCE_COLUMNS,
                                          _source_rows(store, period, runs[-1], tenant, senders or {}))
    files = [out_dir / name for name in PACK_COLUMNS]
    summary = {
        "period": f"{_when(period.since) or 'the first run'} to {_when(period.until) or 'the last run'}",
        "tenant": tenant or "all tenants", "framework": framework or "all frameworks", "runs": len(runs),
        "first run started": runs[0].started.isoformat(), "last run started": runs[-1].started.isoformat(),
    }
    files.append(write_workbook(out_dir / WORKBOOK, summary, files, rows, runs[-1].finished or runs[-1].started))
    manifest = {
        "kind": "mailwarden evidence pack",
        "tool_version": __version__,
        "created": datetime.now(UTC).isoformat(),
        "period": {"since": _when(period.since), "until": _when(period.until),
                   "first_run_started": runs[0].started.isoformat(), "last_run_started": runs[-1].started.isoformat()},
        "tenant": tenant,
        "framework": framework,
        "config_sha256": config_digest,
        "runs": [{"id": r.id, "started": r.started.isoformat(), "finished": r.finished.isoformat() if r.finished else None,
                  "state": r.state, "config_sha256": r.config_digest, "tool_version": r.tool_version} for r in runs],
        "files": {f.name: _entry(f, rows) for f in files},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return [*files, out_dir / "manifest.json"]


def _entry(path: Path, rows: Mapping[str, int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.name == WORKBOOK:
        entry["sheets"] = sheet_titles(path)
    else:
        entry["rows"], entry["columns"] = rows[path.name], list(PACK_COLUMNS[path.name])
    return entry


def foreign_entries(out_dir: Path) -> list[str]:
    """What in ``out_dir`` is not part of an evidence pack (an earlier pack may be overwritten, nothing else)."""
    if not out_dir.is_dir():
        return []
    pack = {*PACK_COLUMNS, WORKBOOK, "manifest.json"}
    return sorted(p.name for p in out_dir.iterdir() if p.name not in pack or not p.is_file())


def _period_words(since: datetime | None, until: datetime | None) -> str:
    """The period in words: "between A and B", "since A", "until B" or "at all"."""
    if since is not None and until is not None:
        return f"between {since.isoformat()} and {until.isoformat()}"
    if since is not None:
        return f"since {since.isoformat()}"
    return f"until {until.isoformat()}" if until is not None else "at all"


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def verify_evidence(directory: Path) -> list[str]:
    """Problems with a pack: a file changed, missing or not in its manifest; empty when every hash matches.

    A folder inside that holds its own manifest.json (another run's outputs) is verified the same way.
    """
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        listed: Mapping[str, Mapping[str, Any]] = manifest["files"]
    except FileNotFoundError:
        return [f"{directory / 'manifest.json'}: missing"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{directory / 'manifest.json'}: not a valid manifest ({exc})"]
    problems = []
    for name, entry in sorted(listed.items()):
        path = directory / name
        if Path(name).name != name:
            problems.append(f"{name}: not a plain file name in the manifest")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{path}: SHA-256 differs from the manifest (the file was changed)")
        elif name == WORKBOOK:
            try:
                titles = sheet_titles(path)
            except Exception as exc:  # noqa: BLE001 - any way a workbook fails to open is the reviewer's to see
                problems.append(f"{path}: not a readable workbook ({type(exc).__name__}: {exc})")
            else:
                if titles != entry.get("sheets"):
                    problems.append(f"{path}: its sheets {titles} are not the manifest's {entry.get('sheets')}")
    for path in sorted(directory.iterdir()):
        if path.name == "manifest.json" or path.name in listed:
            continue
        if path.is_dir() and not path.is_symlink() and (path / "manifest.json").is_file():
            # a run folder inside another (the demo's after-change/) is checked against its own manifest
            problems.extend(verify_evidence(path))
        else:
            problems.append(f"{path}: not listed in the manifest")
    return problems
