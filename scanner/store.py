"""The store (SQLAlchemy Core): runs, content-hashed snapshots, findings and their lifecycle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scanner.errors import StoreError
from scanner.model import Finding, Remediation, Severity, Status

metadata = sa.MetaData()

meta_table = sa.Table(
    "mw_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("started", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("state", sa.String(16), nullable=False),  # running, complete, partial, failed, interrupted
    sa.Column("scope", sa.JSON, nullable=False),  # per tenant: complete / partial / failed, with problems
    sa.Column("config_digest", sa.String(64), nullable=False),
    sa.Column("tool_version", sa.String(32), nullable=False),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("hash", sa.String(64), sa.ForeignKey("objects.hash"), nullable=False),
)

findings = sa.Table(
    "findings",
    metadata,
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("check_id", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False, index=True),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("item", sa.String(512), nullable=False),
    sa.Column("is_open", sa.Boolean, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True)),
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolved_run", sa.String(40)),
)

run_findings = sa.Table(
    "run_findings",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("fingerprint", sa.String(40), sa.ForeignKey("findings.fingerprint"), primary_key=True),
    sa.Column("check_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("item", sa.String(512), nullable=False),
    sa.Column("title", sa.String(255), nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("remediation", sa.JSON),
    sa.Column("event", sa.String(16), nullable=False),  # new, persisting, reopened, resolved, or ""
)


def _migration_1(conn: Connection) -> None:
    """Version 1: runs, objects, snapshots, findings, run_findings."""
    metadata.create_all(conn, tables=[runs, objects, snapshots, findings, run_findings])


MIGRATIONS: Sequence[Callable[[Connection], None]] = (_migration_1,)
"""Schema migrations in order; the store's version is how many have been applied. Append, never edit."""

PRESENT = (Status.FAIL, Status.EXCEPTED)
"""Statuses that mean the condition exists (an open finding)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored."""

    id: str
    started: datetime
    finished: datetime | None
    state: str
    scope: dict[str, Any]
    config_digest: str
    tool_version: str


def content_hash(body: str) -> str:
    """SHA-256 of an object's canonical JSON."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def canonical(value: object) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything stored is UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Store:
    """Runs, snapshots and findings in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        try:
            self.engine: Engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreError(f"the store URL is not usable: {exc}") from None
        try:
            self.migrate()
        except sa.exc.SQLAlchemyError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreError(f"cannot open the store at {where}: {getattr(exc, 'orig', None) or exc}") from None

    @property
    def version(self) -> int:
        """The schema version: the number of migrations applied."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("mw_meta"):
                return 0
            value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        return int(value or 0)

    def migrate(self) -> None:
        """Apply every migration the database has not seen, in one transaction."""
        with self.engine.begin() as conn:
            metadata.create_all(conn, tables=[meta_table])
            current = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
            version = int(current or 0)
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store's schema version {version} is newer than this mailwarden knows "
                    f"({len(MIGRATIONS)}): upgrade mailwarden"
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            if current is None:
                conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(len(MIGRATIONS))))
            else:
                conn.execute(
                    sa.update(meta_table).where(meta_table.c.key == "schema_version").values(value=str(len(MIGRATIONS)))
                )

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # runs

    def start_run(self, run_id: str, started: datetime, config_digest: str, tool_version: str) -> None:
        """Record that a run began."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(runs).values(
                    id=run_id, started=started, state="running", scope={}, config_digest=config_digest,
                    tool_version=tool_version,
                )
            )

    def finish_run(self, run_id: str, finished: datetime, state: str, scope: dict[str, Any]) -> None:
        """Record how a run ended: complete, partial (with what failed) or failed."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(finished=finished, state=state, scope=scope))

    def run(self, run_id: str) -> RunRecord:
        """One stored run."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).one_or_none()
        if row is None:
            raise StoreError(f"no run {run_id!r} in the store")
        return RunRecord(row.id, _utc(row.started), _utc(row.finished), row.state, row.scope,  # type: ignore[arg-type]
                         row.config_digest, row.tool_version)

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started, runs.c.id)).all()
        return [RunRecord(r.id, _utc(r.started), _utc(r.finished), r.state, r.scope, r.config_digest,  # type: ignore[arg-type]
                          r.tool_version) for r in rows]

    # snapshots

    def save_snapshot(self, run_id: str, items: Iterable[tuple[str, str, object]]) -> int:
        """Store what a run saw, one object per (kind, key); returns how many bodies were new to the store."""
        bodies: dict[str, tuple[str, str]] = {}
        refs: list[dict[str, str]] = []
        for kind, key, value in items:
            body = canonical(value)
            digest = content_hash(body)
            bodies[digest] = (kind, body)
            refs.append({"run_id": run_id, "kind": kind, "key": key, "hash": digest})
        with self.engine.begin() as conn:
            known: set[str] = set()
            hashes = list(bodies)
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                known.update(conn.execute(sa.select(objects.c.hash).where(objects.c.hash.in_(chunk))).scalars())
            new = [{"hash": h, "kind": k, "body": b} for h, (k, b) in bodies.items() if h not in known]
            if new:
                conn.execute(sa.insert(objects), new)
            if refs:
                conn.execute(sa.insert(snapshots), refs)
        return len(new)

    def snapshot(self, run_id: str, kind: str | None = None) -> dict[tuple[str, str], Any]:
        """The objects a run saw, keyed by (kind, key)."""
        query = (
            sa.select(snapshots.c.kind, snapshots.c.key, objects.c.body)
            .join(objects, objects.c.hash == snapshots.c.hash)
            .where(snapshots.c.run_id == run_id)
        )
        if kind is not None:
            query = query.where(snapshots.c.kind == kind)
        with self.engine.connect() as conn:
            return {(r.kind, r.key): json.loads(r.body) for r in conn.execute(query)}

    def object_count(self) -> int:
        """How many distinct object bodies the store holds."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(objects)).scalar_one())

    # findings

    def record_findings(
        self, run_id: str, results: Sequence[Finding], now: datetime, complete_tenants: Iterable[str]
    ) -> list[Finding]:
        """Store a run's findings and advance each one's lifecycle; returns them with first and last seen.

        A finding opens when its check fails (or is excepted) and resolves when the check passes on the
        subject, or when the subject is gone from a tenant this run saw completely. Errors and
        unsupported results change nothing: unknown is never a resolution.
        """
        complete = set(complete_tenants)
        tenants = {f.tenant for f in results} | complete
        with self.engine.begin() as conn:
            existing = {
                row.fingerprint: row
                for row in conn.execute(sa.select(findings).where(findings.c.tenant.in_(tenants)))
            } if tenants else {}
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            stored: list[dict[str, Any]] = []
            out: list[Finding] = []
            seen: set[str] = set()
            for finding in results:
                seen.add(finding.id)
                row = existing.get(finding.id)
                first = _utc(row.first_seen) if row is not None else None
                last = _utc(row.last_seen) if row is not None else None
                was_open = bool(row is not None and row.is_open)
                event = ""
                if finding.status in PRESENT:
                    event = "persisting" if was_open else ("reopened" if first is not None else "new")
                    if event != "persisting":
                        first = first if event == "reopened" else now
                    last = now
                    change = {"is_open": True, "first_seen": first, "last_seen": last, "resolved_at": None,
                              "resolved_run": None}
                elif finding.status is Status.PASS and was_open:
                    event = "resolved"
                    change = {"is_open": False, "resolved_at": now, "resolved_run": run_id}
                else:
                    change = {}
                if row is None:
                    inserts.append({"fingerprint": finding.id, "check_id": finding.check, "tenant": finding.tenant,
                                    "subject": finding.subject, "item": finding.item, "is_open": False,
                                    "first_seen": None, "last_seen": None, "resolved_at": None,
                                    "resolved_run": None, **change})
                elif change:
                    updates.append({"fp": finding.id, **{k: change.get(k, getattr(row, k)) for k in _MUTABLE}})
                stored.append(_run_row(run_id, finding, event))
                out.append(replace(finding, run_id=run_id, first_seen=first, last_seen=last))
            for fingerprint, row in existing.items():
                if row.is_open and fingerprint not in seen and row.tenant in complete:
                    # The subject (or the check) is gone from a tenant this run saw completely.
                    updates.append({"fp": fingerprint, "is_open": False, "first_seen": row.first_seen,
                                    "last_seen": row.last_seen, "resolved_at": now, "resolved_run": run_id})
            if inserts:
                conn.execute(sa.insert(findings), inserts)
            if updates:
                conn.execute(
                    sa.update(findings).where(findings.c.fingerprint == sa.bindparam("fp")),
                    updates,
                )
            if stored:
                conn.execute(sa.insert(run_findings), stored)
        return out

    def findings_for_run(self, run_id: str) -> list[Finding]:
        """A run's findings as stored, with their lifecycle times."""
        query = (
            sa.select(run_findings, findings.c.first_seen, findings.c.last_seen)
            .join(findings, findings.c.fingerprint == run_findings.c.fingerprint)
            .where(run_findings.c.run_id == run_id)
            .order_by(run_findings.c.tenant, run_findings.c.domain, run_findings.c.subject, run_findings.c.check_id,
                      run_findings.c.item)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_finding(row) for row in rows]

    def lifecycle_events(self, run_id: str) -> dict[str, list[str]]:
        """Fingerprints that were new, reopened or resolved in a run."""
        events: dict[str, list[str]] = {"new": [], "reopened": [], "resolved": []}
        with self.engine.connect() as conn:
            for row in conn.execute(
                sa.select(run_findings.c.fingerprint, run_findings.c.event).where(
                    run_findings.c.run_id == run_id, run_findings.c.event.in_(("new", "reopened"))
                )
            ):
                events[row.event].append(row.fingerprint)
            events["resolved"] = list(
                conn.execute(sa.select(findings.c.fingerprint).where(findings.c.resolved_run == run_id)).scalars()
            )
        return events


_MUTABLE = ("is_open", "first_seen", "last_seen", "resolved_at", "resolved_run")


def _run_row(run_id: str, finding: Finding, event: str) -> dict[str, Any]:
    remediation = (
        {"action": finding.remediation.action, "params": dict(finding.remediation.params)}
        if finding.remediation
        else None
    )
    return {
        "run_id": run_id, "fingerprint": finding.id, "check_id": finding.check, "status": finding.status.value,
        "severity": finding.severity.value, "tenant": finding.tenant, "domain": finding.domain,
        "subject": finding.subject, "item": finding.item, "title": finding.title,
        "evidence": json.loads(canonical(finding.evidence)), "reason": finding.reason, "remediation": remediation,
        "event": event,
    }


def _finding(row: Any) -> Finding:
    remediation = Remediation(row.remediation["action"], row.remediation["params"]) if row.remediation else None
    return Finding(
        id=row.fingerprint, check=row.check_id, status=Status(row.status), severity=Severity(row.severity),
        tenant=row.tenant, domain=row.domain, subject=row.subject, item=row.item, title=row.title,
        evidence=row.evidence, reason=row.reason, remediation=remediation, run_id=row.run_id,
        first_seen=_utc(row.first_seen), last_seen=_utc(row.last_seen),
    )
