"""The store (SQLAlchemy Core): runs, content-hashed snapshots, findings and their lifecycle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scanner.store.changes import FAILED, FieldChange, object_changes
from scanner.store.plain import BUSY_TIMEOUT
from scanner.errors import StoreError
from scanner.model import (
    DnsAnswer,
    DomainState,
    Finding,
    Forward,
    ForwardMechanism,
    Mailbox,
    Outcome,
    PreviousState,
    Remediation,
    Severity,
    Status,
    mailbox_from_plain,
    plain,
)

if TYPE_CHECKING:
    from scanner.store.writer import RecordingProcess

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
    sa.Column("recorded", sa.DateTime(timezone=True)),  # when its findings were committed; NULL: not a baseline
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
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("item", sa.String(512), nullable=False),
    sa.Column("is_open", sa.Boolean, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True)),
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolved_run", sa.String(40)),
    sa.Column("domain", sa.String(255)),  # the domain and title its latest pass recorded (null until one did)
    sa.Column("title", sa.String(255)),
)
"""Each finding's lifecycle, and the domain and title of its latest pass (a pass's row in ``run_passes`` has
neither)."""

sa.Index("ix_findings_open_tenant", findings.c.tenant, sqlite_where=findings.c.is_open.is_(True),
         postgresql_where=findings.c.is_open.is_(True))
# Only open findings are indexed by tenant (the run's end resolves those of subjects gone): most findings are
# passes, and a scan inserts hundreds of thousands of them.

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
    sa.Column("first_seen", sa.DateTime(timezone=True)),  # the lifecycle as it stood when the run ended
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("caused_by", sa.String(40), nullable=False, server_default=""),  # skipped: the root finding's id
)


run_order = sa.Table(
    "run_order",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
)
"""Each run's position: snapshot versions are ordered by it (times can tie, ids need not sort)."""

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("scope", sa.String(128), nullable=False),  # the tenant; "" for objects from the config
    sa.Column("hash", sa.String(64)),  # NULL when deleted
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Index("ix_versions_seq", "seq"),
)
"""Delta snapshots: a row only where an object appeared, changed or disappeared in a run.

The state as of run R is, per (kind, key), the row with the highest seq <= R's seq, unless deleted.
No foreign key to runs: after a prune, the rows below the oldest kept run are its base state.
"""

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # scan (derived from snapshots) or job (remediation)
    sa.Column("run_id", sa.String(40)),
    sa.Column("job_id", sa.String(64)),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("object_type", sa.String(32), nullable=False),
    sa.Column("object_key", sa.String(1024), nullable=False),
    sa.Column("field", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("before", sa.JSON),
    sa.Column("after", sa.JSON),
    sa.Index("ix_changes_domain_at", "domain", "at"),
    sa.Index("ix_changes_subject_at", "subject", "at"),
    sa.Index("ix_changes_tenant_at", "tenant", "at"),
    sa.Index("ix_changes_at", "at"),
    sa.Index("ix_changes_run", "run_id"),
)
"""The change log: one row per object field that changed, with when, which run or job, before and after."""

CONFIG_SCOPE = ""
"""The scope of objects read from the config (exceptions): every run that loaded the config saw all of them."""


def _migration_1(conn: Connection) -> None:
    """Version 1: runs, objects, snapshots, findings, run_findings."""
    metadata.create_all(conn, tables=[runs, objects, snapshots, findings, run_findings])


def _migration_2(conn: Connection) -> None:
    """Version 2: delta snapshots (versions), run order and the change log; replays and drops ``snapshots``."""
    metadata.create_all(conn, tables=[run_order, versions, changes])
    rows = conn.execute(sa.select(runs.c.id, runs.c.started, runs.c.scope).order_by(runs.c.started, runs.c.id)).all()
    for seq, row in enumerate(rows, start=1):
        conn.execute(sa.insert(run_order).values(run_id=row.id, seq=seq))
        seen = conn.execute(
            sa.select(snapshots.c.kind, snapshots.c.key, snapshots.c.hash).where(snapshots.c.run_id == row.id)
        ).all()
        if not seen:
            continue
        tenants = (row.scope or {}).get("tenants", {})
        # Version 1 recorded no per-object scope: a key's tenant is the part before the first "/", and
        # only a tenant the run's scope marks complete may lose objects (unknown is never "deleted").
        complete = {name for name, t in tenants.items() if isinstance(t, dict) and t.get("state") == "complete"}
        complete.add(CONFIG_SCOPE)
        items = [(r.kind, r.key, r.hash, _legacy_scope(r.kind, r.key)) for r in seen]
        _record_delta(conn, row.id, seq, _utc(row.started) or datetime.now(UTC), items, complete)
    snapshots.drop(conn)


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False, index=True),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("issued", sa.JSON, nullable=False),  # the state the finding (or link) saw
    sa.Column("finding", sa.String(40), nullable=False),
    sa.Column("check_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("undo_of", sa.String(40)),
    sa.Column("link", sa.String(64), unique=True),  # the link nonce: a link starts at most one job
    sa.Column("state", sa.String(16), nullable=False),  # pending, running, done, already_done, failed, refused
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("before", sa.JSON),
    sa.Column("after", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("owner", sa.String(300)),  # host:pid of the process that created or runs it (version 5)
)
"""Remediation jobs: one action on one subject; claimed by a conditional update, so it runs once."""

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # intent or state
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
"""The audit log: append-only, each entry hashing the previous entry's hash (remediation/audit.py)."""


def _migration_3(conn: Connection) -> None:
    """Version 3: remediation jobs and the hash-chained audit log."""
    metadata.create_all(conn, tables=[jobs, audit])


staged = sa.Table(
    "staged",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("scope", sa.String(128), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
"""What a running scan has seen so far, written page by page as the adapters read; ``commit_snapshot`` folds
it into ``versions`` and ``objects`` (only the bodies that are new), the evaluation reads the mailboxes back
from it, and the run's end drops it."""


def _migration_4(conn: Connection) -> None:
    """Version 4: the staging table a scan streams what it sees into."""
    metadata.create_all(conn, tables=[staged])


run_resolved = sa.Table(
    "run_resolved",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
)
"""The findings each run resolved, kept when a finding later reopens (``findings.resolved_run`` moves on)."""


def _migration_5(conn: Connection) -> None:
    """Version 5: whole runs and immutable history: ``runs.recorded``, each run's own first and last seen,
    and the findings it resolved. Runs recorded before it: a finished run (or one with findings) was whole,
    and its lifecycle is frozen as it stands now."""
    inspector = sa.inspect(conn)
    have = {c["name"] for c in inspector.get_columns("runs")}
    if "recorded" not in have:
        conn.execute(sa.text("ALTER TABLE runs ADD COLUMN recorded TIMESTAMP"
                             + (" WITH TIME ZONE" if conn.dialect.name == "postgresql" else "")))
    have = {c["name"] for c in inspector.get_columns("run_findings")}
    for name in ("first_seen", "last_seen"):
        if name not in have:
            conn.execute(sa.text(f"ALTER TABLE run_findings ADD COLUMN {name} TIMESTAMP"
                                 + (" WITH TIME ZONE" if conn.dialect.name == "postgresql" else "")))
    metadata.create_all(conn, tables=[run_resolved])
    with_findings = sa.select(run_findings.c.run_id).where(run_findings.c.run_id == runs.c.id).exists()
    conn.execute(sa.update(runs).where(
        runs.c.recorded.is_(None), sa.or_(runs.c.state.in_(("complete", "partial")), with_findings)
    ).values(recorded=sa.func.coalesce(runs.c.finished, runs.c.started)))
    conn.execute(sa.update(run_findings).where(
        run_findings.c.fingerprint == findings.c.fingerprint, run_findings.c.first_seen.is_(None),
        run_findings.c.last_seen.is_(None),
    ).values(first_seen=findings.c.first_seen, last_seen=findings.c.last_seen))
    conn.execute(sa.insert(run_resolved).from_select(
        ["run_id", "fingerprint"],
        sa.select(findings.c.resolved_run, findings.c.fingerprint).where(findings.c.resolved_run.is_not(None)),
    ))


dmarc_reports = sa.Table(
    "dmarc_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_name", sa.String(255), nullable=False),
    sa.Column("report_id", sa.String(255), nullable=False),
    sa.Column("email", sa.String(255), nullable=False),
    sa.Column("begin", sa.DateTime(timezone=True), nullable=False),
    sa.Column("end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False),  # policy_published: the policy's domain
    sa.Column("policy", sa.JSON, nullable=False),  # policy_published as reported (p, sp, np, adkim, ...)
    sa.Column("schema", sa.String(64), nullable=False),  # the XML namespace; "" for RFC 7489 reports
    sa.Column("source", sa.String(1024), nullable=False),  # the file or mailbox message it came from
    sa.Column("imported", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("org_name", "report_id", name="uq_dmarc_reports_org_id"),
    sa.Index("ix_dmarc_reports_domain_end", "domain", "end"),
)
"""DMARC aggregate reports, one row each; a report seen again (same org and report id) is not stored twice."""

dmarc_records = sa.Table(
    "dmarc_records",
    metadata,
    sa.Column("report", sa.Integer, sa.ForeignKey("dmarc_reports.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source_ip", sa.String(45), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("disposition", sa.String(32), nullable=False),
    sa.Column("dkim", sa.String(16), nullable=False),  # policy_evaluated, lower case
    sa.Column("spf", sa.String(16), nullable=False),
    sa.Column("header_from", sa.String(255), nullable=False),
    sa.Column("envelope_from", sa.String(255), nullable=False),
    sa.Column("envelope_to", sa.String(255), nullable=False),
    sa.Column("auth", sa.JSON, nullable=False),  # the auth_results: method, domain, selector, scope, result
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Index("ix_dmarc_records_from_ip", "header_from", "source_ip"),
)
"""Each report's records: a source IP's messages, how DMARC judged them, and the identifiers."""

dmarc_ptr = sa.Table(
    "dmarc_ptr",
    metadata,
    sa.Column("ip", sa.String(45), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),  # "" when the address has no PTR record
    sa.Column("state", sa.String(16), nullable=False),  # confirmed (forward-confirmed), unconfirmed, absent
    sa.Column("looked_up", sa.DateTime(timezone=True), nullable=False),
)
"""The PTR name of each source IP the reports name, as last looked up."""


def _migration_6(conn: Connection) -> None:
    """Version 6: DMARC aggregate reports, their records, and the source IPs' PTR names."""
    metadata.create_all(conn, tables=[dmarc_reports, dmarc_records, dmarc_ptr])


job_claims = sa.Table(
    "job_claims",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("action", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(512), primary_key=True),
    sa.Column("target", sa.String(512), primary_key=True),  # "" for an action without targets
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
)
"""One row per change a pending or running job is making: the primary key lets one job at a time claim a change."""

AUDIT_KEYED_FROM = "audit_keyed_from"
"""The mw_meta key holding the first audit entry keyed with the audit key: earlier entries are the legacy chain."""


def _migration_7(conn: Connection) -> None:
    """Version 7: change claims, each job's owning process, and where the keyed audit chain begins."""
    metadata.create_all(conn, tables=[job_claims])
    if "owner" not in {c["name"] for c in sa.inspect(conn).get_columns("jobs")}:
        conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN owner VARCHAR(300)"))
    # Entries written so far were chained with plain SHA-256: `audit verify` checks them as the legacy chain
    # and keys every entry from here on.
    last = conn.execute(sa.select(sa.func.max(audit.c.seq))).scalar()
    conn.execute(sa.insert(meta_table).values(key=AUDIT_KEYED_FROM, value=str((last or 0) + 1)))


def _migration_caused_by(conn: Connection) -> None:
    """run_findings.caused_by: the root finding a skipped finding restates (issue 14); stores made by a version
    whose first migration already created the column are left as they are."""
    if "caused_by" not in {c["name"] for c in sa.inspect(conn).get_columns("run_findings")}:
        conn.execute(sa.text("ALTER TABLE run_findings ADD COLUMN caused_by VARCHAR(40) NOT NULL DEFAULT ''"))


evidence = sa.Table(
    "evidence",
    metadata,
    sa.Column("hash", sa.String(32), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON
    sqlite_with_rowid=False,
)
"""Passing findings' evidence, content-addressed: a body shared by many passes, or by the same pass run after
run (a domain whose SPF did not change), is stored once."""

run_passes = sa.Table(
    "run_passes",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("fingerprint", sa.String(40), sa.ForeignKey("findings.fingerprint"), primary_key=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("evidence", sa.String(32), sa.ForeignKey("evidence.hash"), nullable=False),
    sa.Column("resolved", sa.Boolean, nullable=False),  # this pass resolved the open finding
    sa.Column("first_seen", sa.DateTime(timezone=True)),  # the finding's lifecycle as this run left it
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sqlite_with_rowid=False,  # SQLite: the rows live in the primary key's b-tree, not beside a copy of it
)
"""A run's passing findings, compactly: which finding passed, with what severity and evidence (by hash); the
check, tenant and subject are the finding's (``findings``), and so are its domain and title, as its latest pass
recorded them.
Every other status keeps its full row in ``run_findings``."""

finding_context = sa.Table(
    "finding_context",
    sa.MetaData(),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("title", sa.String(255), nullable=False),
    sqlite_with_rowid=False,
)
"""Versions 9 to 11: the domain and title of a finding as its latest pass recorded them, a table of its own (version
12 moved them into ``findings``)."""


def _migration_compact_passes(conn: Connection) -> None:
    """Version 9: compact passes (issue 17); moves the passes recorded in ``run_findings`` into ``run_passes``."""
    metadata.create_all(conn, tables=[evidence, run_passes])
    finding_context.create(conn, checkfirst=True)
    query = (sa.select(run_findings.c.run_id, run_findings.c.fingerprint, run_findings.c.severity,
                       run_findings.c.domain, run_findings.c.title, run_findings.c.evidence, run_findings.c.event,
                       run_findings.c.first_seen, run_findings.c.last_seen)
             .join(run_order, run_order.c.run_id == run_findings.c.run_id)
             .where(run_findings.c.status == Status.PASS.value).order_by(run_order.c.seq))
    stored: set[str] = set()
    context: dict[str, tuple[str, str]] = {}
    rows: list[dict[str, Any]] = []
    bodies: list[dict[str, str]] = []
    for row in conn.execute(query):
        encoded = canonical_bytes(row.evidence)
        digest, body = evidence_hash(encoded), encoded.decode("utf-8")
        if digest not in stored:
            stored.add(digest)
            bodies.append({"hash": digest, "body": body})
        context[row.fingerprint] = (row.domain, row.title)  # the latest run's, as the order is by run
        rows.append({"run_id": row.run_id, "fingerprint": row.fingerprint, "severity": row.severity,
                     "evidence": digest, "resolved": row.event == "resolved",
                     "first_seen": row.first_seen, "last_seen": row.last_seen})
        if len(rows) >= 5000:
            _move_passes(conn, bodies, rows)
            rows, bodies = [], []
    _move_passes(conn, bodies, rows)
    items = [{"fingerprint": fp, "domain": d, "title": t} for fp, (d, t) in context.items()]
    for start in range(0, len(items), 5000):
        conn.execute(sa.insert(finding_context), items[start : start + 5000])
    conn.execute(sa.delete(run_findings).where(run_findings.c.status == Status.PASS.value))


def _move_passes(conn: Connection, bodies: list[dict[str, str]], rows: list[dict[str, Any]]) -> None:
    if bodies:
        conn.execute(sa.insert(evidence), bodies)
    if rows:
        conn.execute(sa.insert(run_passes), rows)


run_pass_counts = sa.Table(
    "run_pass_counts",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("check_id", sa.String(128), primary_key=True),
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("severity", sa.String(16), primary_key=True),
    sa.Column("title", sa.String(255), nullable=False),  # the least of the passes' titles, as min() gives it
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("domains", sa.Text, nullable=False),  # a JSON object: each domain's passes, in code point order
    sqlite_with_rowid=False,
)
"""How many findings of a run passed per check, tenant and severity, with each domain's count packed in one row:
counted as the run records its passes, so a report reads a few dozen rows instead of grouping every pass. Runs
recorded before version 11 have none (``Store.pass_counts`` counts their passes)."""


def _migration_open_index(conn: Connection) -> None:
    """Version 10: findings indexed by tenant only while open (issue 17), so recording a pass maintains one index
    fewer; a store created by a version whose first migration made the new index already keeps it."""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_findings_tenant"))
    for index in findings.indexes:
        index.create(conn, checkfirst=True)


def _migration_pass_counts(conn: Connection) -> None:
    """Version 11: each run's pass counts, packed per check, tenant and severity (issue 17), kept by the runs
    recorded from now on."""
    metadata.create_all(conn, tables=[run_pass_counts])


def _migration_context_in_findings(conn: Connection) -> None:
    """Version 12: a finding's domain and title in its own row (issue 17), not in a table beside it: a new finding
    that passes is one insert, not two, and reading a pass joins one table fewer. A store created by a version
    whose first migration made the columns already has them (and one that lacks the table has nothing to move)."""
    inspector = sa.inspect(conn)
    present = {column["name"] for column in inspector.get_columns("findings")}
    for column in (findings.c.domain, findings.c.title):
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE findings ADD COLUMN {column.name} {kind}"))
    if not inspector.has_table(finding_context.name):
        return
    context = finding_context.alias("context")
    conn.execute(sa.update(findings).values({
        name: sa.select(context.c[name]).where(context.c.fingerprint == findings.c.fingerprint).scalar_subquery()
        for name in ("domain", "title")
    }).where(findings.c.fingerprint.in_(sa.select(context.c.fingerprint))))
    finding_context.drop(conn)


MIGRATIONS: Sequence[Callable[[Connection], None]] = (
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7,
    _migration_caused_by, _migration_compact_passes, _migration_open_index, _migration_pass_counts,
    _migration_context_in_findings,
)
"""Schema migrations in order; the store's version is how many have been applied. Append, never edit."""

PRESENT = (Status.FAIL, Status.EXCEPTED)
"""Statuses that mean the condition exists (an open finding)."""


class PassCount(NamedTuple):
    """How many findings of one check passed in a tenant at one severity in a run: ``count`` in all, and each
    domain's (``domains``, in code point order)."""

    check: str
    title: str
    tenant: str
    severity: Severity
    count: int
    domains: dict[str, int]


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
    recorded: datetime | None = None  # when its findings were committed; None: never, so not a baseline


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One change-log row: an object's field before and after, and which run (or job) saw it when."""

    at: datetime
    source: str
    run_id: str | None
    job_id: str | None
    tenant: str
    domain: str
    subject: str
    object_type: str
    object_key: str
    field: str
    action: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed."""

    runs: int
    versions: int
    objects: int
    findings: int


def _decoded(body: str) -> Any:
    """A stored JSON body decoded by orjson (a few times faster), or by ``json`` when orjson refuses it (the
    NaN or an integer past 64 bits that ``canonical`` may have written)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def content_hash(body: str) -> str:
    """SHA-256 of an object's canonical JSON."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def canonical(value: object) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def snapshot_text(value: object) -> str:
    """``canonical(plain(value))`` for what a snapshot keeps (the model's dataclasses, enums, times, tuples and
    dicts, or their plain form), encoded in C, about three times faster: orjson writes the dataclasses field by
    field, reads the text back and writes it again with its keys sorted.

    It is the same text, so an object keeps its content hash across versions: the model holds no float (orjson writes
    some differently) and no field named with a leading underscore (orjson leaves those out), which
    tests/scanner/store/test_snapshot_text.py checks of every dataclass a snapshot reaches. What orjson refuses (an
    integer past 64 bits, a key that is not a string) is encoded by ``canonical``."""
    try:
        return orjson.dumps(orjson.loads(orjson.dumps(value, default=_snapshot_rest,
                                                      option=orjson.OPT_PASSTHROUGH_DATETIME)),
                            option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except (orjson.JSONEncodeError, orjson.JSONDecodeError):
        return canonical(plain(value))


def _snapshot_rest(value: object) -> object:
    """What orjson does not encode itself, as ``plain`` makes it: times in ISO 8601, sets sorted, other mappings
    as dicts, anything else as its ``str`` (``canonical``'s default)."""
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, set | frozenset | Mapping):
        return plain(value)
    return str(value)


_ORJSON_CANONICAL = (orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                     | orjson.OPT_PASSTHROUGH_DATACLASS)


def canonical_bytes(value: object) -> bytes:
    """Canonical JSON as UTF-8, encoded by orjson: the same text as ``canonical`` for what findings carry
    (times, dataclasses and other unknown values become their ``str``, as there)."""
    return orjson.dumps(value, default=str, option=_ORJSON_CANONICAL)


def evidence_hash(body: bytes) -> str:
    """The content address of an evidence body (its canonical JSON as UTF-8): SHA-256, first 128 bits in hex."""
    return hashlib.sha256(body).hexdigest()[:32]


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything stored is UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StoreMissing(StoreError):
    """A read-only command was pointed at a store that does not exist (it never creates one)."""


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None: in memory, or not SQLite)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


class Store:
    """Runs, snapshots and findings in one SQL database (SQLite or PostgreSQL).

    One writer, many readers: SQLite runs in WAL mode with a busy timeout, so readers never wait for a
    scan and writers queue for the write lock; PostgreSQL is left as it is. Opening a store whose schema
    is current writes nothing. ``create=False`` (the read-only commands) refuses a store that does not
    exist instead of creating an empty one.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        try:
            self.engine: Engine = sa.create_engine(url, connect_args=_connect_args(url))
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreError(f"the store URL is not usable: {exc}") from None
        except ValueError:  # a part SQLAlchemy converts, such as the port; never echoed: the URL may hold a password
            raise StoreError("the store URL is not usable: not a database URL") from None
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            raise StoreError(f"the store must be SQLite or PostgreSQL, not {self.engine.dialect.name}")
        self.where = self.engine.url.render_as_string(hide_password=True)
        path = sqlite_file(self.engine)
        if not create and path is not None and not path.is_file():
            self.engine.dispose()
            raise StoreMissing(f"no store at {path}: run `mailwarden scan` first, or point [store] url at the store")
        if path is not None:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas(wal=create))
        try:
            if not create and self.version == 0:
                raise StoreMissing(f"no mailwarden store at {self.where}: run `mailwarden scan` first, or point "
                                   "[store] url at the store")
            self.migrate()
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the store at {self.where}: {getattr(exc, 'orig', None) or exc}") from None
        except StoreError:
            self.engine.dispose()
            raise

    @property
    def version(self) -> int:
        """The schema version: the number of migrations applied."""
        with self.engine.connect() as conn:
            return _schema_version(conn)

    def migrate(self) -> None:
        """Apply every migration the database has not seen, in one transaction; nothing is written when the
        schema is current. Two processes migrating (or creating) one store at once take turns: the first
        holds the write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock) and the second, once
        it has it, finds the work done."""
        if self.version == len(MIGRATIONS):
            return
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            metadata.create_all(conn, tables=[meta_table])
            version = _schema_version(conn)
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the store's schema version {version} is newer than this mailwarden knows "
                    f"({len(MIGRATIONS)}): upgrade mailwarden"
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            if version == 0:
                conn.execute(sa.delete(meta_table).where(meta_table.c.key == "schema_version"))
                conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(len(MIGRATIONS))))
            elif version < len(MIGRATIONS):
                conn.execute(
                    sa.update(meta_table).where(meta_table.c.key == "schema_version").values(value=str(len(MIGRATIONS)))
                )
            conn.commit()

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
            last = conn.execute(sa.select(sa.func.max(run_order.c.seq))).scalar()
            conn.execute(sa.insert(run_order).values(run_id=run_id, seq=int(last or 0) + 1))
            # Scans run one at a time (the lease): staging left by a killed one is of no use to anybody.
            conn.execute(sa.delete(staged))

    def finish_run(self, run_id: str, finished: datetime, state: str, scope: dict[str, Any]) -> None:
        """Record how a run ended: complete, partial (with what failed) or failed; its staging goes.

        A run that ends complete or partial is whole (a scan has recorded its findings by then)."""
        values: dict[str, Any] = {"finished": finished, "state": state, "scope": scope}
        if state in ("complete", "partial"):
            values["recorded"] = sa.func.coalesce(runs.c.recorded, finished)
        with self.engine.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))
            conn.execute(sa.delete(staged).where(staged.c.run_id == run_id))

    def fail_run(self, run_id: str, problem: str, *, state: str = "failed") -> None:
        """Record at once that a run failed (or was interrupted) after it began, keeping its scope and saying why.

        Whether it stays a baseline is not changed: that depends only on whether its findings were recorded."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(runs.c.scope, runs.c.finished).where(runs.c.id == run_id)).one_or_none()
            if row is None:
                return
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(
                state=state, finished=row.finished or datetime.now(UTC), scope={**(row.scope or {}), "problem": problem}))
            conn.execute(sa.delete(staged).where(staged.c.run_id == run_id))

    def run(self, run_id: str) -> RunRecord:
        """One stored run."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).one_or_none()
        if row is None:
            raise StoreError(f"no run {run_id!r} in the store")
        return RunRecord(row.id, _utc(row.started), _utc(row.finished), row.state, row.scope,  # type: ignore[arg-type]
                         row.config_digest, row.tool_version, _utc(row.recorded))

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started, runs.c.id)).all()
        return [RunRecord(r.id, _utc(r.started), _utc(r.finished), r.state, r.scope, r.config_digest,  # type: ignore[arg-type]
                          r.tool_version, _utc(r.recorded)) for r in rows]

    # snapshots

    def save_snapshot(
        self, run_id: str, items: Iterable[tuple[str, str, object] | tuple[str, str, object, str]],
        complete: Iterable[str] | None = None,
    ) -> int:
        """Record what a run saw as a delta against the state before it; returns how many bodies were new to the store.

        Each item is (kind, key, body) or (kind, key, body, scope); the scope is the tenant (default: the
        key up to its first "/"). ``complete`` names the scopes the run saw completely (None: all of them).
        Objects of other scopes are not recorded at all, so their state carries forward unchanged: a run
        that failed to see a tenant never records its objects as changed or deleted. A scan does the same
        in steps: ``stage`` page by page, then ``commit_snapshot``.
        """
        page: list[tuple[str, str, object, str]] = []
        for item in items:
            scope = item[3] if len(item) > 3 else _legacy_scope(item[0], item[1])  # type: ignore[misc]
            page.append((item[0], item[1], item[2], str(scope)))
            if len(page) >= STAGE_PAGE:
                self.stage(run_id, page)
                page = []
        self.stage(run_id, page)
        added = self.commit_snapshot(run_id, complete)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(staged).where(staged.c.run_id == run_id))
        return added

    def stage(self, run_id: str, items: Iterable[tuple[str, str, object, str]]) -> list[str]:
        """Keep a page of what a running scan saw, as (kind, key, body, scope); returns the keys this run had
        staged already (the first sighting stays)."""
        rows: dict[tuple[str, str], dict[str, str]] = {}
        repeated: list[str] = []
        for kind, key, value, scope in items:
            if (kind, key) in rows:
                repeated.append(key)
                continue
            body = snapshot_text(value)
            rows[(kind, key)] = {"run_id": run_id, "kind": kind, "key": key, "scope": scope,
                                 "hash": content_hash(body), "body": body}
        if not rows:
            return repeated
        with self.engine.begin() as conn:
            kept = _insert_new(conn, list(rows.values()))
        repeated += [row["key"] for ident, row in rows.items() if ident not in kept]
        return repeated

    def unstage(self, run_id: str, scope: str) -> None:
        """Forget what a running scan staged for one scope (a tenant whose collection failed)."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(staged).where(staged.c.run_id == run_id, staged.c.scope == scope))

    def keep_last_known(self, run_id: str, unread: Mapping[str, Collection[str]]) -> None:
        """Give staged mailboxes (keys ``tenant/address``) the last recorded value of each field (``forwards``,
        ``delegates``) their provider did not let this run read, so a gap is never recorded as a change (forwards
        removed) and the drift checks of a later run compare with what was last seen. Call before committing."""
        if not unread:
            return
        with self.engine.begin() as conn:
            seq, _ = self._position(conn, run_id)
            keys = sorted(unread)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                before = _bodies(conn, _state_rows(conn, seq - 1, "mailbox", chunk))
                rows = conn.execute(sa.select(staged.c.key, staged.c.body).where(
                    staged.c.run_id == run_id, staged.c.kind == "mailbox", staged.c.key.in_(chunk))).all()
                for row in rows:
                    old = before.get(("mailbox", row.key))
                    if old is None:
                        continue  # never recorded: nothing known to keep
                    body, known = json.loads(row.body), json.loads(old)
                    body.update({name: known[name] for name in unread[row.key] if name in known})
                    text = canonical(body)
                    conn.execute(sa.update(staged).where(
                        staged.c.run_id == run_id, staged.c.kind == "mailbox", staged.c.key == row.key,
                    ).values(body=text, hash=content_hash(text)))

    def commit_snapshot(self, run_id: str, complete: Iterable[str] | None = None) -> int:
        """Fold a run's staging into its delta: versions for what appeared or changed, and (in the scopes it saw
        completely, see ``save_snapshot``) for what went, with the bodies the store lacks and the change-log
        rows, in one transaction; returns how many bodies were new.

        The comparison with the state before the run is done by the database, so it takes no memory per object.
        """
        with self.engine.begin() as conn:
            seq, at = self._position(conn, run_id)
            hidden = _hidden(conn, seq)
            before = _live(seq - 1, hidden=hidden)
            known = set(conn.execute(sa.select(before.c.scope).distinct()).scalars())
            if known:
                known.add(CONFIG_SCOPE)  # the config was read by the earlier runs, even with no exceptions in it
            mine = staged.c.run_id == run_id
            scopes = set(complete) if complete is not None else known | set(
                conn.execute(sa.select(staged.c.scope).where(mine).distinct()).scalars())
            columns = ["kind", "key", "seq", "scope", "hash", "deleted"]
            same = sa.and_(before.c.kind == staged.c.kind, before.c.key == staged.c.key)
            conn.execute(sa.insert(versions).from_select(columns, sa.select(
                staged.c.kind, staged.c.key, sa.literal(seq), staged.c.scope, staged.c.hash, sa.literal(False),
            ).select_from(staged.outerjoin(before, same)).where(
                mine, staged.c.scope.in_(sorted(scopes)),
                sa.or_(before.c.hash.is_(None), before.c.hash != staged.c.hash),
            )))
            # The bodies of those versions that the store lacks (one per content hash).
            recorded = sa.and_(versions.c.kind == staged.c.kind, versions.c.key == staged.c.key,
                               versions.c.seq == seq)
            stored = sa.select(objects.c.hash).where(objects.c.hash == staged.c.hash).exists()
            count = sa.select(sa.func.count()).select_from(objects)
            held = conn.execute(count).scalar_one()
            conn.execute(sa.insert(objects).from_select(["hash", "kind", "body"], sa.select(
                staged.c.hash, sa.func.min(staged.c.kind), sa.func.min(staged.c.body),
            ).select_from(staged.join(versions, recorded)).where(mine, ~stored).group_by(staged.c.hash)))
            added = conn.execute(count).scalar_one() - held
            seen = sa.select(staged.c.key).where(mine, same).exists()
            conn.execute(sa.insert(versions).from_select(columns, sa.select(
                before.c.kind, before.c.key, sa.literal(seq), before.c.scope, sa.null(), sa.literal(True),
            ).where(before.c.scope.in_(sorted(scopes)), ~seen)))
            # A scope with no earlier state is a first sighting: its objects are the baseline, not changes.
            if known:
                _log_delta(conn, run_id, seq, at, sorted(known), hidden)
        return int(added)

    def snapshot(self, run_id: str, kind: str | None = None) -> dict[tuple[str, str], Any]:
        """The state as of a run, keyed by (kind, key): what it saw, plus what it could not see carried forward."""
        with self.engine.connect() as conn:
            seq, _ = self._position(conn, run_id)
            state = _state_rows(conn, seq, kind, hidden=_hidden(conn, seq))
            return {ident: json.loads(body) for ident, body in _bodies(conn, state).items()}

    def snapshot_keys(self, run_id: str, kind: str) -> list[str]:
        """The keys of one kind of object in the state as of a run, sorted, without reading their bodies."""
        with self.engine.connect() as conn:
            seq, _ = self._position(conn, run_id)
            return sorted(key for _, key in _state_rows(conn, seq, kind, hidden=_hidden(conn, seq)))

    def iter_snapshot(self, run_id: str, kind: str, page: int = 500) -> Iterator[tuple[tuple[str, str], Any]]:
        """``snapshot(run_id, kind).items()`` in key order, the bodies read and decoded ``page`` at a time: a
        report of ten thousand domains holds one page of their DNS answers, not all of them."""
        with self.engine.connect() as conn:
            seq, _ = self._position(conn, run_id)
            live = _live(seq, kind, hidden=_hidden(conn, seq))
            # Only each object's key and body hash are held for the whole walk (100,000 mailboxes: about 25 MB, half
            # of what their state rows take); ``_bodies`` reads the hash, not the scope.
            state = sorted((key, digest) for key, digest in conn.execute(sa.select(live.c.key, live.c.hash)))
            for start in range(0, len(state), page):
                part = {(kind, key): (digest, "") for key, digest in state[start:start + page]}
                yield from ((ident, _decoded(body)) for ident, body in _bodies(conn, part).items())

    def object_state(self, kind: str, key: str, run_id: str | None = None) -> Any | None:
        """One object as of a run (default: the latest), or None when it did not exist then."""
        with self.engine.connect() as conn:
            seq = self._position(conn, run_id)[0] if run_id is not None else _last_recorded_seq(conn)
            hidden = _hidden(conn, seq)
            row = conn.execute(
                sa.select(versions.c.hash, versions.c.deleted)
                .where(versions.c.kind == kind, versions.c.key == key, versions.c.seq <= seq,
                       versions.c.seq.not_in(hidden))
                .order_by(versions.c.seq.desc()).limit(1)
            ).one_or_none()
            if row is None or row.deleted:
                return None
            body = conn.execute(sa.select(objects.c.body).where(objects.c.hash == row.hash)).scalar_one()
            value = json.loads(body)
            return _with_last_known(conn, kind, key, seq, value, hidden) if kind == "domain" else value

    def domain_state(self, key: str) -> tuple[DomainState, RunRecord] | None:
        """A domain (key ``tenant/name``) as the latest whole run recorded it, with that run; None if never seen."""
        with self.engine.connect() as conn:
            last = conn.execute(
                sa.select(run_order.c.run_id).join(runs, runs.c.id == run_order.c.run_id)
                .where(runs.c.recorded.is_not(None)).order_by(run_order.c.seq.desc()).limit(1)
            ).scalar()
        body = self.object_state("domain", key)
        if body is None or last is None:
            return None
        return _domain_state(body), self.run(last)

    def object_count(self) -> int:
        """How many distinct object bodies the store holds."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(objects)).scalar_one())

    def version_count(self) -> int:
        """How many object versions (appearances, changes, deletions) the store holds."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(versions)).scalar_one())

    def previous_state(self, run_id: str, *, forwards: bool = True) -> PreviousState | None:
        """The recorded state before a run, for the drift checks; None when nothing was recorded before it.

        Only whole runs count: a run whose findings were never recorded (killed, interrupted, failed) is
        kept for inspection but is never the baseline, so what only it saw is compared again next time.

        ``forwards=False`` leaves out the mailboxes' forwards: a scan reads them a page at a time
        (``Recording.previous_forwards``).
        """
        with self.engine.connect() as conn:
            seq, _ = self._position(conn, run_id)
            before = conn.execute(
                sa.select(run_order.c.run_id, runs.c.started).join(runs, runs.c.id == run_order.c.run_id)
                .where(run_order.c.seq < seq, runs.c.recorded.is_not(None)).order_by(run_order.c.seq.desc()).limit(1)
            ).one_or_none()
            if before is None:
                return None
            hidden = _hidden(conn, seq)
            live = _live(seq - 1, hidden=hidden)
            tenants = set(conn.execute(
                sa.select(live.c.scope).where(live.c.kind.in_(("domain", "mailbox"))).distinct()).scalars())
            if not tenants:
                return None
            domains: dict[str, DomainState] = {}
            for (kind, key), text in _bodies(conn, _state_rows(conn, seq - 1, "domain", hidden=hidden)).items():
                domains[key] = _domain_state(_with_last_known(conn, kind, key, seq - 1, json.loads(text), hidden))
            found = _forwards(conn, _state_rows(conn, seq - 1, "mailbox", hidden=hidden)) if forwards else {}
        return PreviousState(before.run_id, _utc(before.started) or datetime.now(UTC), frozenset(tenants),
                             domains, found)

    @contextlib.contextmanager
    def recording(self, run_id: str, now: datetime, complete_tenants: Iterable[str], *,
                  apart: bool = False) -> Iterator[Recording]:
        """A run's evaluation in one transaction: its staged mailboxes read back a page at a time, its findings
        written as they come, and at the end the findings of subjects gone from complete tenants resolved.

        ``apart``: the rows are written by a second process (scanner/store/writer.py) in its transaction, while
        this one goes on judging and reads through a connection of its own; a store only this process can see is
        written here all the same."""
        url = self.reopenable() if apart else None
        if url is None:
            with self.engine.begin() as conn:
                recording = Recording(conn, run_id, self._position(conn, run_id)[0], now, set(complete_tenants),
                                      Writes(conn))
                yield recording
                recording.finish()
            return
        from scanner.store.writer import RecordingProcess  # the second process's side imports this module

        writer = RecordingProcess(url)
        try:
            with self.engine.connect() as conn:
                recording = Recording(conn, run_id, self._position(conn, run_id)[0], now, set(complete_tenants),
                                      writer)
                yield recording
                recording.finish()
        finally:
            writer.stop()

    def reopenable(self) -> str | None:
        """The URL another process can open this store by (a SQLite file or PostgreSQL), password included; None for
        a store only this process can see (SQLite in memory)."""
        if self.engine.dialect.name == "sqlite" and sqlite_file(self.engine) is None:
            return None
        return self.engine.url.render_as_string(hide_password=False)

    def _position(self, conn: Connection, run_id: str) -> tuple[int, datetime]:
        row = conn.execute(
            sa.select(run_order.c.seq, runs.c.started).join(runs, runs.c.id == run_order.c.run_id)
            .where(run_order.c.run_id == run_id)
        ).one_or_none()
        if row is None:
            raise StoreError(f"no run {run_id!r} in the store")
        return int(row.seq), _utc(row.started) or datetime.now(UTC)

    # the change log

    def changes(
        self, *, since: datetime | None = None, tenant: str | None = None, domain: str | None = None,
        subject: str | None = None, run_id: str | None = None,
    ) -> list[ChangeRecord]:
        """Change-log rows matching every given filter, oldest first; only rows of whole runs (and of jobs)."""
        unrecorded = sa.select(runs.c.id).where(runs.c.recorded.is_(None))
        query = sa.select(changes).where(sa.or_(changes.c.run_id.is_(None), changes.c.run_id.not_in(unrecorded)))
        if since is not None:
            query = query.where(changes.c.at >= since)
        if tenant is not None:
            query = query.where(changes.c.tenant == tenant)
        if domain is not None:
            query = query.where(changes.c.domain == domain)
        if subject is not None:
            query = query.where(changes.c.subject == subject)
        if run_id is not None:
            query = query.where(changes.c.run_id == run_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(changes.c.at, changes.c.id)).all()
        return [
            ChangeRecord(_utc(r.at) or datetime.now(UTC), r.source, r.run_id, r.job_id, r.tenant, r.domain,
                         r.subject, r.object_type, r.object_key, r.field, r.action, r.before, r.after)
            for r in rows
        ]

    def record_job_change(self, job_id: str, at: datetime, change: FieldChange) -> None:
        """Write a remediation job's before and after into the change log (source "job")."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(changes), [_change_row(change, at, "job", None, job_id)])

    # retention

    def prune(self, cutoff: datetime) -> PruneResult:
        """Remove runs started before ``cutoff`` and what only they reference.

        The newest run is always kept. Object versions below the oldest kept run are squashed to the
        one that was current then, so the state as of every kept run stays reconstructable; the change
        log keeps its rows from ``cutoff`` on, and findings keep their rows while a kept run or an open
        finding references them.
        """
        with self.engine.begin() as conn:
            ordered = conn.execute(
                sa.select(run_order.c.run_id, run_order.c.seq, runs.c.started, runs.c.state, runs.c.recorded)
                .join(runs, runs.c.id == run_order.c.run_id).order_by(run_order.c.seq)
            ).all()
            doomed = [r for r in ordered[:-1] if (_utc(r.started) or cutoff) < cutoff and r.state != "running"]
            kept = [r for r in ordered if r not in doomed]
            if not doomed or not kept:
                return PruneResult(0, 0, 0, 0)
            floor = min(r.seq for r in kept)
            # Runs that were never whole: a doomed one's versions go; a kept one's never supersede anything.
            squashed = conn.execute(sa.delete(versions).where(
                versions.c.seq.in_([r.seq for r in doomed if r.recorded is None]))).rowcount
            hidden = [r.seq for r in kept if r.recorded is None]
            newer = versions.alias("newer")
            superseded = sa.exists().where(
                newer.c.kind == versions.c.kind, newer.c.key == versions.c.key,
                newer.c.seq > versions.c.seq, newer.c.seq <= floor, newer.c.seq.not_in(hidden),
            )
            squashed += conn.execute(sa.delete(versions).where(versions.c.seq < floor, superseded)).rowcount
            squashed += conn.execute(
                sa.delete(versions).where(versions.c.seq < floor, versions.c.deleted.is_(True))
            ).rowcount
            ids = [r.run_id for r in doomed]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(sa.delete(run_findings).where(run_findings.c.run_id.in_(chunk)))
                conn.execute(sa.delete(run_resolved).where(run_resolved.c.run_id.in_(chunk)))
                conn.execute(sa.delete(run_passes).where(run_passes.c.run_id.in_(chunk)))
                conn.execute(sa.delete(run_pass_counts).where(run_pass_counts.c.run_id.in_(chunk)))
                conn.execute(sa.delete(run_order).where(run_order.c.run_id.in_(chunk)))
                conn.execute(sa.update(findings).where(findings.c.resolved_run.in_(chunk)).values(resolved_run=None))
                conn.execute(sa.delete(runs).where(runs.c.id.in_(chunk)))
            referenced = sa.union(sa.select(run_findings.c.fingerprint), sa.select(run_passes.c.fingerprint))
            unused = sa.and_(findings.c.is_open.is_(False), findings.c.fingerprint.not_in(referenced))
            dropped = conn.execute(sa.delete(findings).where(unused)).rowcount
            conn.execute(sa.delete(evidence).where(evidence.c.hash.not_in(sa.select(run_passes.c.evidence))))
            conn.execute(sa.delete(changes).where(changes.c.at < cutoff))
            used = sa.select(versions.c.hash).where(versions.c.hash.is_not(None)).distinct()
            bodies = conn.execute(sa.delete(objects).where(objects.c.hash.not_in(used))).rowcount
        return PruneResult(len(ids), squashed, bodies, dropped)

    # findings

    def record_findings(
        self, run_id: str, results: Sequence[Finding], now: datetime, complete_tenants: Iterable[str]
    ) -> list[Finding]:
        """Store a run's findings and advance each one's lifecycle; returns them with first and last seen.

        A finding opens when its check fails (or is excepted) and resolves when the check passes on the
        subject in a tenant this run saw completely, or when the subject is gone from such a tenant.
        Errors, unsupported results and passes in a partial tenant change nothing: unknown is never a
        resolution. A scan records its findings page by page through ``recording``.
        """
        with self.recording(run_id, now, complete_tenants) as recording:
            return recording.add(results)

    def findings_for_run(
        self, run_id: str, statuses: Collection[Status] | None = None, *, checks: Collection[str] | None = None
    ) -> list[Finding]:
        """A run's findings as stored (only those of ``statuses`` and ``checks``, when given), with their first
        and last seen as the run left them."""
        with self.iter_findings(run_id, statuses, checks=checks) as found:
            return list(found)

    def finding(self, run_id: str, fingerprint: str) -> Finding | None:
        """One finding of a run, as ``findings_for_run`` gives it (None when the run has no such finding)."""
        found = self.findings_named(run_id, [fingerprint])
        return found[0] if found else None

    def findings_named(self, run_id: str, fingerprints: Iterable[str]) -> list[Finding]:
        """The findings of a run with these ids, of any status, in no particular order (ids it lacks are left
        out): the few a report names among the passes, such as the findings this run resolved."""
        wanted = sorted(set(fingerprints))
        found: list[Finding] = []
        for start in range(0, len(wanted), 500):
            with self.iter_findings(run_id, fingerprints=wanted[start : start + 500]) as chunk:
                found.extend(chunk)
        return found

    def resolved_passes(self, run_id: str) -> list[tuple[str, Severity, str, str, str]]:
        """The passes of a run that resolved an open finding, as (id, severity, tenant, subject, check): enough to
        choose which to name (``findings_named`` reads those whole)."""
        query = (sa.select(run_passes.c.fingerprint, run_passes.c.severity, findings.c.tenant, findings.c.subject,
                           findings.c.check_id)
                 .join(findings, findings.c.fingerprint == run_passes.c.fingerprint)
                 .where(run_passes.c.run_id == run_id, run_passes.c.resolved.is_(True)))
        with self.engine.connect() as conn:
            return [(fp, _SEVERITIES[severity], tenant, subject, check)
                    for fp, severity, tenant, subject, check in conn.execute(query)]

    @contextlib.contextmanager
    def iter_findings(
        self, run_id: str, statuses: Collection[Status] | None = None, *, checks: Collection[str] | None = None,
        fingerprints: Sequence[str] | None = None,
    ) -> Iterator[Iterator[Finding]]:
        """A run's findings streamed from a cursor in output order (tenant, domain, subject, check, item), so
        that memory does not grow with their number; only those of ``statuses`` and ``checks``, when given.

        Use as ``with store.iter_findings(run) as found: for finding in found: ...``."""
        with self.iter_rows(run_id, statuses, checks=checks, fingerprints=fingerprints) as rows:
            yield map(_Findings(), rows)

    @contextlib.contextmanager
    def iter_rows(
        self, run_id: str, statuses: Collection[Status] | None = None, *, checks: Collection[str] | None = None,
        fingerprints: Sequence[str] | None = None, from_part: tuple[str, ...] | None = None,
    ) -> Iterator[Iterator[Any]]:
        """``iter_findings`` as the stored rows: the columns of ``run_findings`` (evidence and remediation as JSON
        text); for writers that need no Finding objects (reports/findings_files.py). With ``from_part`` (a key of
        ``output_parts``: a tenant, or a tenant and a domain), only its rows and those after them."""
        with self.engine.connect() as conn:
            # A recorded run keeps its own first and last seen, so it renders the same every time; a run whose
            # findings were never recorded has none and shows the live lifecycle.
            sealed = conn.execute(sa.select(runs.c.recorded).where(runs.c.id == run_id)).scalar() is not None
            query = _findings_query(run_id, statuses, sealed=sealed, checks=checks, fingerprints=fingerprints,
                                    from_part=from_part)
            yield iter(conn.execution_options(stream_results=True, yield_per=2000).execute(query))

    def output_parts(self, run_id: str, *, by_domain: bool = False) -> list[tuple[tuple[str, ...], int]] | None:
        """The tenants of a run's findings (``by_domain``: each tenant's domains, as (tenant, domain)) in the order
        ``iter_rows`` gives them, with how many rows each has; None for a run whose passes were recorded before their
        counts were kept (their tenants and domains are not at hand without reading every pass).

        A pass's domain is its finding's latest (``findings``): by domain, the parts are those of the rows only while
        no later run has recorded findings, as when the scan that recorded this run renders it under its lease."""
        c = run_pass_counts.c
        with self.engine.connect() as conn:
            counted = conn.execute(sa.select(c.tenant, c.n, c.domains).where(c.run_id == run_id)).all()
            if not counted and conn.execute(sa.select(run_passes.c.run_id).where(
                    run_passes.c.run_id == run_id).limit(1)).first() is not None:
                return None
            parts: Counter[tuple[str, ...]] = Counter()
            for tenant, n, domains in counted:
                if by_domain:
                    for domain, passes in orjson.loads(domains).items():
                        parts[tenant, domain] += passes
                else:
                    parts[tenant,] += n
            full = run_findings.c
            for tenant, domain, n in conn.execute(
                    sa.select(full.tenant, full.domain, sa.func.count()).where(full.run_id == run_id)
                    .group_by(full.tenant, full.domain)):
                parts[(tenant, domain) if by_domain else (tenant,)] += int(n)
            return [(key, parts[key]) for key in _in_store_order(conn, list(parts))]

    def status_counts(self, run_id: str) -> dict[str, int]:
        """How many findings of a run have each status (statuses with none are left out): its passes from the counts
        the run recorded (``run_pass_counts``), or counted for a run recorded before them."""
        with self.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(run_findings.c.status, sa.func.count()).where(
                run_findings.c.run_id == run_id).group_by(run_findings.c.status)).all())
            c = run_pass_counts.c
            passes = conn.execute(sa.select(sa.func.sum(c.n)).where(c.run_id == run_id)).scalar()
            if passes is None:
                passes = conn.execute(sa.select(sa.func.count()).select_from(run_passes).where(
                    run_passes.c.run_id == run_id)).scalar_one()
        if passes:
            counts[Status.PASS.value] = counts.get(Status.PASS.value, 0) + int(passes)
        return {status: int(n) for status, n in counts.items()}

    def pass_counts(self, run_id: str) -> list[PassCount]:
        """How many findings of a run passed, per check, tenant and severity (in that order), with each domain's
        count: what a report shows of passes (their evidence is in findings.json and the evidence pack).

        The counts the run recorded (``run_pass_counts``): a few dozen rows. A run recorded before them has its
        passes grouped here the same way."""
        c = run_pass_counts.c
        with self.engine.connect() as conn:
            stored = conn.execute(sa.select(c.check_id, c.title, c.tenant, c.severity, c.n, c.domains)
                                  .where(c.run_id == run_id)).all()
            if stored:
                counted = [PassCount(check, title, tenant, _SEVERITIES[severity], int(n), orjson.loads(domains))
                           for check, title, tenant, severity, n, domains in stored]
            else:
                counted = _grouped_pass_counts(conn, run_id)
        return sorted(counted, key=_pass_count_order)

    def finding_counts(
        self, run_id: str, statuses: Collection[Status] | None = None
    ) -> dict[tuple[str, str, str], int]:
        """A run's findings counted by (tenant, status, severity), in SQL: what a score or a trend point needs.

        Only those of ``statuses`` when given: without ``pass``, the passes (most rows, and a join) are not read."""
        full = (
            sa.select(run_findings.c.tenant, run_findings.c.status, run_findings.c.severity, sa.func.count())
            .where(run_findings.c.run_id == run_id)
            .group_by(run_findings.c.tenant, run_findings.c.status, run_findings.c.severity)
        )
        if statuses is not None:
            full = full.where(run_findings.c.status.in_(sorted(s.value for s in statuses)))
        c = run_pass_counts.c
        recorded = sa.select(c.tenant, c.severity, sa.func.sum(c.n)).where(c.run_id == run_id).group_by(
            c.tenant, c.severity)
        grouped = (
            sa.select(findings.c.tenant, run_passes.c.severity, sa.func.count())
            .join(findings, findings.c.fingerprint == run_passes.c.fingerprint)
            .where(run_passes.c.run_id == run_id)
            .group_by(findings.c.tenant, run_passes.c.severity)
        )
        with self.engine.connect() as conn:
            counts = {(row[0], row[1], row[2]): int(row[3]) for row in conn.execute(full)}
            if statuses is None or Status.PASS in statuses:
                # the counts the run recorded; a run recorded before them has its passes counted
                passes = conn.execute(recorded).all() or conn.execute(grouped).all()
                counts.update({(tenant, Status.PASS.value, severity): int(n) for tenant, severity, n in passes})
        return counts

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
            resolved = set(conn.execute(
                sa.select(run_resolved.c.fingerprint).where(run_resolved.c.run_id == run_id)).scalars())
            resolved.update(
                conn.execute(sa.select(findings.c.fingerprint).where(findings.c.resolved_run == run_id)).scalars())
            events["resolved"] = sorted(resolved)
        return events


STAGE_PAGE = 5000
"""Objects per staging write when a whole snapshot is saved at once."""


class Recording:
    """One run's findings, written page by page in one transaction (``Store.recording``)."""

    def __init__(self, conn: Connection, run_id: str, seq: int, now: datetime, complete: set[str],
                 write: Writes | RecordingProcess) -> None:
        self._conn = conn
        self._write = write
        self._run_id = run_id
        self._seq = seq
        self._now = now
        self._complete = complete
        self._hidden = _hidden(conn, seq)
        # A store without findings (its first scan) has none to look up: a run records each finding once.
        self._first = conn.execute(sa.select(findings.c.fingerprint).limit(1)).first() is None
        self._evidence: set[str] = set()
        self._stamp = _stamper(conn.dialect)
        self._passed: dict[tuple[str, str, str], tuple[list[str], dict[str, int]]] = {}
        """The run's passes counted so far, per check, tenant and severity: the least title, and each domain's."""

    def mailbox_pages(self, size: int) -> Iterator[list[Mailbox]]:
        """The run's staged mailboxes in key order, ``size`` at a time."""
        after = ""
        while True:
            rows = self._conn.execute(
                sa.select(staged.c.key, staged.c.body)
                .where(staged.c.run_id == self._run_id, staged.c.kind == "mailbox", staged.c.key > after)
                .order_by(staged.c.key).limit(size)
            ).all()
            if not rows:
                return
            after = rows[-1].key
            yield [mailbox_from_plain(json.loads(row.body)) for row in rows]

    def mailboxes(self, keys: Collection[str]) -> dict[str, Mailbox]:
        """The run's staged mailboxes with these keys (``tenant/address``), by key."""
        found: dict[str, Mailbox] = {}
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), 500):
            for row in self._conn.execute(
                sa.select(staged.c.key, staged.c.body).where(
                    staged.c.run_id == self._run_id, staged.c.kind == "mailbox",
                    staged.c.key.in_(wanted[start : start + 500]))
            ):
                found[row.key] = mailbox_from_plain(json.loads(row.body))
        return found

    def previous_forwards(self, keys: Collection[str]) -> dict[str, tuple[Forward, ...]]:
        """The forwards the state before this run recorded for these mailboxes (keys ``tenant/address``)."""
        wanted = sorted(set(keys))
        state: dict[tuple[str, str], tuple[str, str]] = {}
        for start in range(0, len(wanted), 500):
            state.update(_state_rows(self._conn, self._seq - 1, "mailbox", wanted[start : start + 500], self._hidden))
        return _forwards(self._conn, state)

    def add(self, results: Sequence[Finding]) -> list[Finding]:
        """Store findings and advance each one's lifecycle; returns them with first and last seen."""
        out: list[Finding] = []
        self.record(results, out)
        return out

    def record(self, results: Sequence[Finding], out: list[Finding] | None = None) -> None:
        """Store findings and advance each one's lifecycle (with ``out``: append them with first and last seen).

        A pass is a narrow ``run_passes`` row whose evidence is stored once per distinct body; every other
        status a full ``run_findings`` row. JSON is encoded once (orjson), rows are tuples in their statement's
        column order, and each table gets one batched statement per call (``BATCHES``), compiled once per
        connection, run by this process or by the second one writing the rows (``Store.recording``)."""
        now, complete, run_id = self._now, self._complete, self._run_id
        # Rows go in in key order, so each lands beside the one before in the tables' b-trees rather than on a
        # random page of tables that grow to hundreds of thousands of rows.
        ordered = sorted(results, key=_BY_ID)
        existing = self._existing([f.id for f in ordered])
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        stored: list[tuple[Any, ...]] = []
        passes: list[tuple[Any, ...]] = []
        bodies: dict[str, str] = {}
        changed: list[tuple[str, str, str]] = []
        seen: dict[str, tuple[datetime | None, datetime | None]] = {}
        known = self._evidence
        passed = self._passed
        stamp = self._stamp
        for finding in ordered:
            fid, status = finding.id, finding.status
            row = existing.get(fid)
            if row is None:
                first = last = None
                was_open = False
            else:
                first, last, was_open = _utc(row.first_seen), _utc(row.last_seen), bool(row.is_open)
            event = ""
            present = status in PRESENT
            if present:
                event = "persisting" if was_open else ("reopened" if first is not None else "new")
                if event == "new":
                    first = now
                last = now
            # The times as the rows hold them (``_stamper``); a finding never seen before has none.
            first_at = None if first is None else stamp(first)
            last_at = None if last is None else stamp(last)
            if present:
                if row is not None:
                    updates.append((True, first_at, last_at, None, None, fid))
            elif status is Status.PASS and was_open and finding.tenant in complete:
                # A pass resolves only where the run saw the tenant completely: a pass judged on a
                # partial view (a page of forwards missing) may be the view's doing, not the fix's.
                event = "resolved"
                updates.append((False, first_at, last_at, stamp(now), run_id, fid))
            if status is not Status.PASS:
                stored.append(_run_row(run_id, finding, event, first_at, last_at))
                if row is None:
                    inserts.append((fid, finding.check, finding.tenant, finding.subject, finding.item, present,
                                    first_at, last_at, None, None, None, None))
            else:
                body = canonical_bytes(finding.evidence)
                digest = evidence_hash(body)
                if digest not in known:
                    bodies[digest] = body.decode("utf-8")
                severity = finding.severity.value
                passes.append((run_id, fid, severity, digest, event == "resolved", first_at, last_at))
                key = (finding.check, finding.tenant, severity)
                group = passed.get(key)
                if group is None:
                    group = passed[key] = ([finding.title], {})
                elif finding.title < group[0][0]:
                    group[0][0] = finding.title
                counts = group[1]
                counts[finding.domain] = counts.get(finding.domain, 0) + 1
                if row is None:
                    inserts.append((fid, finding.check, finding.tenant, finding.subject, finding.item, present,
                                    first_at, last_at, None, None, finding.domain, finding.title))
                elif row.domain != finding.domain or row.title != finding.title:
                    changed.append((fid, finding.domain, finding.title))
            if out is not None:
                seen[fid] = (first, last)
        if out is not None:
            out.extend(replace(f, run_id=run_id, first_seen=seen[f.id][0], last_seen=seen[f.id][1]) for f in results)
        self._write([(name, rows) for name, rows in (
            ("findings", inserts), ("findings-update", updates), ("evidence", sorted(bodies.items())),
            ("context", changed), ("passes", passes), ("full", stored)) if rows])
        if bodies:
            self._remember(bodies)

    def finish(self) -> None:
        """Once every finding is recorded: write the run's pass counts (``run_pass_counts``), resolve the open
        findings of subjects gone from complete tenants, and seal the run (``_finish``)."""
        rows = [(self._run_id, check, tenant, severity, titles[0], sum(domains.values()),
                 orjson.dumps(dict(sorted(domains.items()))).decode("utf-8"))
                for (check, tenant, severity), (titles, domains) in self._passed.items()]
        if rows:
            self._write([("counts", rows)])
        self._passed.clear()
        self._write.finish(self._run_id, self._now, sorted(self._complete))

    def _existing(self, ids: Sequence[str]) -> dict[str, Any]:
        """The lifecycle and context rows of the findings with these ids that the store already has, by id."""
        existing: dict[str, Any] = {}
        if self._first:
            return existing
        for start in range(0, len(ids), 500):
            for row in self._conn.execute(_EXISTING, {"ids": ids[start : start + 500]}):
                existing[row.fingerprint] = row
        return existing

    def _remember(self, bodies: Mapping[str, str]) -> None:
        """Remember evidence hashes known to be stored, up to a bound (memory stays flat)."""
        if len(self._evidence) + len(bodies) > EVIDENCE_REMEMBERED:
            self._evidence.clear()
        self._evidence.update(bodies)


def _finish(conn: Connection, run_id: str, now: datetime, complete: Sequence[str]) -> None:
    """The end of a run's recording, in its transaction: the open findings of complete tenants that the run did
    not report are resolved (the subject, or the check, is gone from a tenant the run saw completely), and the run
    is sealed."""
    if complete:
        reported = sa.select(run_findings.c.fingerprint).where(
            run_findings.c.run_id == run_id, run_findings.c.fingerprint == findings.c.fingerprint
        ).exists()
        passed = sa.select(run_passes.c.fingerprint).where(
            run_passes.c.run_id == run_id, run_passes.c.fingerprint == findings.c.fingerprint
        ).exists()
        conn.execute(
            sa.update(findings)
            .where(findings.c.is_open.is_(True), findings.c.tenant.in_(sorted(complete)), ~reported, ~passed)
            .values(is_open=False, resolved_at=now, resolved_run=run_id)
        )
    _seal(conn, run_id, now)


class Writes:
    """Where a recording's rows go when it writes them itself: its own connection, in its transaction, each kind
    of row by its statement (``BATCHES``), compiled once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._batches: dict[str, _Batch] = {}

    def __call__(self, page: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        """Write a page's rows: (name of ``BATCHES``, rows as tuples in its columns' order), in that order."""
        for name, rows in page:
            batch = self._batches.get(name)
            if batch is None:
                batch = self._batches[name] = BATCHES[name](self._conn)
            batch(rows)

    def finish(self, run_id: str, now: datetime, complete: Sequence[str]) -> None:
        """Resolve and seal the run (``_finish``); the transaction commits when the recording ends."""
        _finish(self._conn, run_id, now, complete)


MIGRATION_LOCK = 0x6D77_6D69
"""The PostgreSQL advisory lock key that serialises migrations ("mwmi")."""


def _schema_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("mw_meta"):
        return 0
    value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
    return int(value or 0)


def _connect_args(url: str) -> dict[str, Any]:
    # pysqlite's own busy handler: how long a connection waits for the write lock.
    return {"timeout": BUSY_TIMEOUT} if url.startswith("sqlite") else {}


def _sqlite_pragmas(*, wal: bool) -> Callable[[Any, Any], None]:
    """The connect hook of a SQLite store: a busy timeout, and WAL mode (readers never wait for the writer).

    WAL is a property of the database file: the first writer switches it and it stays. A read-only
    command leaves an older store's journal mode as it is, so opening it writes nothing.
    """
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            if wal:
                try:
                    cursor.execute("PRAGMA journal_mode = WAL")
                except Exception:  # noqa: BLE001 - a read-only file keeps its mode; reading it still works
                    pass
        finally:
            cursor.close()
    return on_connect


_MUTABLE = ("is_open", "first_seen", "last_seen", "resolved_at", "resolved_run")
_BY_ID = operator.attrgetter("id")
_FINDING_KEYS = ("fingerprint", "check_id", "tenant", "subject", "item", *_MUTABLE, "domain", "title")
_PASS_KEYS = ("run_id", "fingerprint", "severity", "evidence", "resolved", "first_seen", "last_seen")
_FULL_KEYS = ("run_id", "fingerprint", "check_id", "status", "severity", "tenant", "domain", "subject", "item",
              "title", "evidence", "reason", "remediation", "event", "caused_by", "first_seen", "last_seen")
_COUNT_KEYS = ("run_id", "check_id", "tenant", "severity", "title", "n", "domains")
"""The columns of a row ``Recording.record`` writes to findings, run_passes and run_findings (and
``Recording.finish`` to run_pass_counts), in its tuple's order."""

_EXISTING = sa.select(
    findings.c.fingerprint, findings.c.is_open, findings.c.first_seen, findings.c.last_seen, findings.c.resolved_at,
    findings.c.resolved_run, findings.c.domain, findings.c.title,
).where(
    findings.c.fingerprint.in_(sa.bindparam("ids", expanding=True)))
"""A recording's look-up of the findings it is about to record (one statement, compiled once)."""


class _Batch:
    """One INSERT or UPDATE compiled once for a connection's dialect and run through the driver's executemany,
    so the driver's prepared-statement cache serves every row.

    Rows are tuples in ``keys`` order. Each value goes through its column's own type conversion, as SQLAlchemy
    would do it, once per distinct value of the column (the converted columns are booleans), except the
    ``encoded`` JSON columns whose text is ready, and the booleans on SQLite: its driver binds True and False
    as the 1 and 0 SQLAlchemy would make of them, and a page of rows goes to it as it is (taking the rows apart
    to convert one column cost the process writing them about 6 % of its time at 100,000 mailboxes). Times come
    as the recording made them for the dialect (``_stamper``)."""

    def __init__(self, conn: Connection, statement: Any, table: sa.Table, keys: Sequence[str],
                 encoded: Collection[str] = ()) -> None:
        compiled = statement.compile(dialect=conn.dialect, column_keys=list(keys))
        self._conn = conn
        self._sql = compiled.string
        self._keys = tuple(keys)
        columns = {c.key: c for c in table.columns}
        native = (sa.Boolean,) if conn.dialect.name == "sqlite" else ()
        self._convert = [
            (i, convert) for i, key in enumerate(keys) if key in columns and key not in encoded
            and not isinstance(columns[key].type, native)
            and (convert := columns[key].type.bind_processor(conn.dialect)) is not None
        ]
        names = list(compiled.positiontup or ()) if compiled.positional else []
        self._named = not names  # PostgreSQL's drivers take each row as a dict
        self._order = (operator.itemgetter(*[self._keys.index(n) for n in names])
                       if names and names != list(keys) else None)

    def __call__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run the statement once per row, in batches of ten thousand."""
        for start in range(0, len(rows), 10000):
            self._conn.exec_driver_sql(self._sql, self._converted(rows[start : start + 10000]))  # type: ignore[arg-type]

    def _converted(self, rows: Sequence[tuple[Any, ...]]) -> Sequence[Any]:
        if self._convert:
            columns: list[Sequence[Any]] = list(zip(*rows))
            for i, convert in self._convert:
                converted = {value: convert(value) for value in set(columns[i])}
                columns[i] = list(map(converted.__getitem__, columns[i]))
            rows = list(zip(*columns))
        if self._named:
            keys = self._keys
            return [dict(zip(keys, row)) for row in rows]
        return rows if self._order is None else list(map(self._order, rows))


BATCHES: Mapping[str, Callable[[Connection], _Batch]] = {
    "findings": lambda conn: _Batch(conn, sa.insert(findings), findings, _FINDING_KEYS),
    "findings-update": lambda conn: _Batch(
        conn, sa.update(findings).where(findings.c.fingerprint == sa.bindparam("fp")), findings, (*_MUTABLE, "fp")),
    "evidence": lambda conn: _Batch(conn, _upsert(conn, evidence).on_conflict_do_nothing(), evidence, ("hash", "body")),
    "context": lambda conn: _Batch(
        conn, sa.update(findings).where(findings.c.fingerprint == sa.bindparam("fp")), findings,
        ("fp", "domain", "title")),
    "passes": lambda conn: _Batch(conn, sa.insert(run_passes), run_passes, _PASS_KEYS),
    "full": lambda conn: _Batch(conn, sa.insert(run_findings), run_findings, _FULL_KEYS,
                                encoded=("evidence", "remediation")),
    "counts": lambda conn: _Batch(conn, sa.insert(run_pass_counts), run_pass_counts, _COUNT_KEYS),
}
"""The statements a recording writes its rows with, by name (``Recording.record`` and ``finish``)."""

EVIDENCE_REMEMBERED = 20000
"""How many evidence hashes a recording remembers as stored before it forgets them all (and inserts again,
harmlessly, with ON CONFLICT DO NOTHING)."""


def _stamper(dialect: sa.engine.Dialect) -> Callable[[datetime], Any]:
    """How a recording's rows hold a time: as the column's own type binds it for the store's dialect, each distinct
    time converted once (a run's rows share a few). On SQLite that is the text SQLAlchemy writes everywhere else,
    so a column holds one format whichever path writes its rows, and a page of rows is plain data (it goes to the
    second process by marshal); PostgreSQL's driver takes the datetime itself.

    Until 2026-12-07 the batched rows reached the SQLite driver's own datetime adapter, which adds "+00:00" (and
    is deprecated from Python 3.12). Rows written so are left as they are: SQLAlchemy reads both back, and nothing
    compares these columns in SQL."""
    convert = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    if convert is None:
        return lambda when: when
    converted: dict[datetime, Any] = {}

    def stamp(when: datetime) -> Any:
        text = converted.get(when)
        if text is None:
            if len(converted) >= 4096:
                converted.clear()
            text = converted[when] = convert(when)
        return text

    return stamp


def _run_row(run_id: str, finding: Finding, event: str, first_seen: Any, last_seen: Any) -> tuple[Any, ...]:
    """A finding's run_findings row, in ``_FULL_KEYS`` order (the times as ``_stamper`` gives them)."""
    remediation = (
        {"action": finding.remediation.action, "params": dict(finding.remediation.params)}
        if finding.remediation
        else None
    )
    return (
        run_id, finding.id, finding.check, finding.status.value, finding.severity.value, finding.tenant,
        finding.domain, finding.subject, finding.item, finding.title,
        canonical_bytes(finding.evidence).decode("utf-8"), finding.reason,
        canonical_bytes(remediation).decode("utf-8") if remediation is not None else None,
        event, finding.caused_by, first_seen, last_seen,
    )


def _in_store_order(conn: Connection, keys: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Keys of a run's rows ((tenant,) or (tenant, domain)) in the order the store sorts those columns. SQLite
    compares text as its UTF-8 bytes, which is Python's order of code points; PostgreSQL by the database's
    collation, so there it sorts them itself."""
    if conn.dialect.name == "sqlite" or not keys:
        return sorted(keys)
    columns = list(zip(*keys, strict=True))
    names = [f"c{i}" for i in range(len(columns))]
    arrays = ", ".join(f"CAST(:{name} AS VARCHAR[])" for name in names)
    ordered = sa.text(f"SELECT {', '.join(names)} FROM unnest({arrays}) AS k({', '.join(names)}) "
                      f"ORDER BY {', '.join(names)}")
    arguments = {name: list(values) for name, values in zip(names, columns, strict=True)}
    return [tuple(row) for row in conn.execute(ordered, arguments)]


def _findings_query(
    run_id: str, statuses: Collection[Status] | None, *, sealed: bool, checks: Collection[str] | None = None,
    fingerprints: Sequence[str] | None = None, from_part: tuple[str, ...] | None = None,
) -> sa.CompoundSelect | sa.Select[Any]:
    """A run's findings: its full rows (every status but pass) and its passes, as one ordered query with the
    columns of ``run_findings``; JSON columns come as text, decoded by orjson. First and last seen are the run's
    own when it was recorded (``sealed``), the finding's live lifecycle otherwise."""
    text = {"evidence", "remediation"}
    lifecycle = ("first_seen", "last_seen")
    full = sa.select(
        *(sa.cast(c, sa.Text).label(c.name) if c.name in text else c
          for c in run_findings.columns if c.name not in lifecycle),
        *((run_findings if sealed else findings).c[name] for name in lifecycle),
    ).join(findings, findings.c.fingerprint == run_findings.c.fingerprint).where(run_findings.c.run_id == run_id)
    wanted = None if statuses is None else sorted(s.value for s in statuses)
    if wanted is not None:
        full = full.where(run_findings.c.status.in_(wanted))
    if checks is not None:
        full = full.where(run_findings.c.check_id.in_(sorted(checks)))
    if fingerprints is not None:
        full = full.where(run_findings.c.fingerprint.in_(fingerprints))
    if from_part is not None:
        full = full.where(_from(from_part, run_findings.c.tenant, run_findings.c.domain))
    parts: list[sa.Select[Any]] = [full]
    if wanted is None or Status.PASS.value in wanted:
        # A pass row is narrow: its check, tenant, subject and item are the finding's, its domain and title the
        # finding's context, its evidence the shared body; what a pass cannot have is empty.
        given = {
            "run_id": run_passes.c.run_id, "fingerprint": run_passes.c.fingerprint, "check_id": findings.c.check_id,
            "status": sa.literal(Status.PASS.value), "severity": run_passes.c.severity, "tenant": findings.c.tenant,
            "domain": findings.c.domain, "subject": findings.c.subject, "item": findings.c.item,
            "title": findings.c.title, "evidence": evidence.c.body, "remediation": sa.null(),
            "event": sa.case((run_passes.c.resolved, sa.literal("resolved")), else_=sa.literal("")),
        }
        columns = [
            (given[c.name] if c.name in given else sa.literal("" if isinstance(c.type, sa.String) else None))
            .label(c.name) for c in run_findings.columns if c.name not in lifecycle
        ]
        parts.append(
            sa.select(*columns, *((run_passes if sealed else findings).c[name] for name in lifecycle))
            .select_from(run_passes.join(findings, findings.c.fingerprint == run_passes.c.fingerprint)
                         .join(evidence, evidence.c.hash == run_passes.c.evidence))
            .where(run_passes.c.run_id == run_id)
        )
        if checks is not None:
            parts[-1] = parts[-1].where(findings.c.check_id.in_(sorted(checks)))
        if fingerprints is not None:
            parts[-1] = parts[-1].where(run_passes.c.fingerprint.in_(fingerprints))
        if from_part is not None:
            parts[-1] = parts[-1].where(_from(from_part, findings.c.tenant, findings.c.domain))
    if len(parts) == 1:
        return full.order_by(run_findings.c.tenant, run_findings.c.domain, run_findings.c.subject,
                             run_findings.c.check_id, run_findings.c.item)
    union = sa.union_all(*parts)
    order = union.selected_columns
    return union.order_by(order.tenant, order.domain, order.subject, order.check_id, order.item)


def _from(part: tuple[str, ...], tenant: Any, domain: Any) -> Any:
    """Rows at or after a key of ``output_parts`` in output order: a tenant's, or a tenant's domain's."""
    if len(part) == 1:
        return tenant >= part[0]
    return sa.tuple_(tenant, domain) >= sa.tuple_(*part)


_STATUSES = {s.value: s for s in Status}
_SEVERITIES = {s.value: s for s in Severity}


def _pass_count_order(counted: PassCount) -> tuple[str, str, str]:
    """Pass counts in order of check, tenant and severity (its value, as the store sorts it)."""
    return counted.check, counted.tenant, counted.severity.value


def _grouped_pass_counts(conn: Connection, run_id: str) -> list[PassCount]:
    """A run's pass counts grouped from its passes: for a run recorded before they were kept."""
    query = (sa.select(findings.c.check_id, sa.func.min(findings.c.title), findings.c.tenant,
                       run_passes.c.severity, findings.c.domain, sa.func.count())
             .select_from(run_passes.join(findings, findings.c.fingerprint == run_passes.c.fingerprint))
             .where(run_passes.c.run_id == run_id)
             .group_by(findings.c.check_id, findings.c.tenant, run_passes.c.severity, findings.c.domain))
    groups: dict[tuple[str, str, str], tuple[list[str], dict[str, int]]] = {}
    for part in conn.execute(query).partitions(10_000):  # fetched many rows a call, not one
        for check, title, tenant, severity, domain, n in part:
            titles, domains = groups.setdefault((check, tenant, severity), ([title], {}))
            titles[0] = min(titles[0], title)
            domains[domain] = int(n)
    return [PassCount(check, titles[0], tenant, _SEVERITIES[severity], sum(domains.values()),
                      {domain: domains[domain] for domain in sorted(domains)})
            for (check, tenant, severity), (titles, domains) in groups.items()]


class _Findings:
    """Findings from rows of ``_findings_query`` (their JSON as text) that share what the rows repeat: one string
    for each recurring check, tenant, domain, title, reason and item, one decoded value for each evidence body
    (a report holds 200,000 unsupported findings that say the same of different mailboxes). What is shared is
    the last ``REMEMBERED`` distinct values of each kind, so a cursor's memory stays flat."""

    REMEMBERED = 4096

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._evidence: dict[str, Any] = {}

    def _same(self, text: str) -> str:
        found = self._strings.get(text)
        if found is None:
            if len(self._strings) >= self.REMEMBERED:
                self._strings.clear()
            found = self._strings[text] = text
        return found

    def __call__(self, row: Any) -> Finding:
        evidence = self._evidence.get(row.evidence)
        if evidence is None:
            if len(self._evidence) >= self.REMEMBERED:
                self._evidence.clear()
            evidence = self._evidence[row.evidence] = orjson.loads(row.evidence)
        remediation = orjson.loads(row.remediation) if row.remediation else None
        same = self._same
        return Finding(
            id=row.fingerprint, check=same(row.check_id), status=_STATUSES[row.status],
            severity=_SEVERITIES[row.severity], tenant=same(row.tenant), domain=same(row.domain), subject=row.subject,
            item=same(row.item), title=same(row.title), evidence=evidence, reason=same(row.reason),
            remediation=Remediation(remediation["action"], remediation["params"]) if remediation else None,
            run_id=same(row.run_id), first_seen=_utc(row.first_seen), last_seen=_utc(row.last_seen),
            caused_by=row.caused_by or "",
        )


def _legacy_scope(kind: str, key: str) -> str:
    """The scope of an item given without one: the tenant before the key's first "/" (exceptions: the config)."""
    return CONFIG_SCOPE if kind == "exception" else key.partition("/")[0]


def _last_recorded_seq(conn: Connection) -> int:
    """The position of the latest whole run (0: none)."""
    return int(conn.execute(
        sa.select(sa.func.max(run_order.c.seq)).join(runs, runs.c.id == run_order.c.run_id)
        .where(runs.c.recorded.is_not(None))).scalar() or 0)


def _hidden(conn: Connection, below: int) -> list[int]:
    """The positions before ``below`` of runs that are not whole (their findings were never recorded): their
    versions are kept, to inspect that run, but no later state is built on them."""
    return sorted(conn.execute(
        sa.select(run_order.c.seq).join(runs, runs.c.id == run_order.c.run_id)
        .where(runs.c.recorded.is_(None), run_order.c.seq < below)).scalars())


def _seal(conn: Connection, run_id: str, now: datetime) -> None:
    """Make a run whole, in the transaction that records its findings: mark it recorded, and keep the findings it
    resolved, so its history never changes (each row already holds the first and last seen this run left)."""
    conn.execute(sa.insert(run_resolved).from_select(
        ["run_id", "fingerprint"],
        sa.select(findings.c.resolved_run, findings.c.fingerprint).where(findings.c.resolved_run == run_id),
    ))
    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(recorded=now))


def _live(seq: int, kind: str | None = None, keys: Sequence[str] | None = None,
          hidden: Sequence[int] = ()) -> sa.Subquery:
    """The state as of ``seq`` as a subquery: per live (kind, key), its hash and scope (``hidden``: positions
    of runs left out)."""
    latest = sa.select(versions.c.kind, versions.c.key, sa.func.max(versions.c.seq).label("top")).where(
        versions.c.seq <= seq
    )
    if hidden:
        latest = latest.where(versions.c.seq.not_in(hidden))
    if kind is not None:
        latest = latest.where(versions.c.kind == kind)
    if keys is not None:
        latest = latest.where(versions.c.key.in_(keys))
    sub = latest.group_by(versions.c.kind, versions.c.key).subquery()
    return sa.select(versions.c.kind, versions.c.key, versions.c.hash, versions.c.scope).join(
        sub, sa.and_(versions.c.kind == sub.c.kind, versions.c.key == sub.c.key, versions.c.seq == sub.c.top)
    ).where(versions.c.deleted.is_(False)).subquery("live")


def _state_rows(
    conn: Connection, seq: int, kind: str | None, keys: Sequence[str] | None = None, hidden: Sequence[int] = ()
) -> dict[tuple[str, str], tuple[str, str]]:
    """The state as of ``seq`` (of one kind, of some keys): per live (kind, key), its (hash, scope)."""
    live = _live(seq, kind, keys, hidden)
    return {(r.kind, r.key): (r.hash, r.scope) for r in conn.execute(sa.select(live))}


def _forwards(conn: Connection, state: dict[tuple[str, str], tuple[str, str]]) -> dict[str, tuple[Forward, ...]]:
    """The forwards of the mailboxes of a state, by key; mailboxes without forwards are left out."""
    found: dict[str, tuple[Forward, ...]] = {}
    for (_, key), text in _bodies(conn, state).items():
        forwards = tuple(
            Forward(str(f["target"]), ForwardMechanism(f["mechanism"])) for f in json.loads(text).get("forwards") or ()
        )
        if forwards:
            found[key] = forwards
    return found


def _upsert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which can say ON CONFLICT (imported on use: the PostgreSQL dialect is large)."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


def _insert_new(conn: Connection, rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    """Stage rows whose (kind, key) the run has not staged yet, in one statement that says which it inserted;
    returns their (kind, key)."""
    insert = _upsert(conn, staged)
    statement = insert.on_conflict_do_nothing().returning(staged.c.kind, staged.c.key)
    return {(r.kind, r.key) for r in conn.execute(statement, rows)}


def _log_delta(
    conn: Connection, run_id: str, seq: int, at: datetime, scopes: Sequence[str], hidden: Sequence[int]
) -> None:
    """Write the change-log rows for the versions a run recorded in ``scopes``, a thousand objects at a time."""
    query = sa.select(versions.c.kind, versions.c.key, versions.c.hash).where(
        versions.c.seq == seq, versions.c.scope.in_(scopes))
    after = ("", "")
    while True:
        rows = conn.execute(query.where(sa.tuple_(versions.c.kind, versions.c.key) > sa.tuple_(*after))
                            .order_by(versions.c.kind, versions.c.key).limit(1000)).all()
        if not rows:
            return
        after = (rows[-1].kind, rows[-1].key)
        old: dict[tuple[str, str], tuple[str, str]] = {}
        for kind in {r.kind for r in rows}:
            old.update(_state_rows(conn, seq - 1, kind, [r.key for r in rows if r.kind == kind], hidden))
        _log_pairs(conn, run_id, seq, at,
                   [(r.kind, r.key, old[(r.kind, r.key)][0] if (r.kind, r.key) in old else None, r.hash) for r in rows],
                   hidden)


def _log_pairs(
    conn: Connection, run_id: str, seq: int, at: datetime, pairs: Sequence[tuple[str, str, str | None, str | None]],
    hidden: Sequence[int] = (),
) -> None:
    """Write the change-log rows for objects that went from one body (hash) to another (None: absent)."""
    wanted = sorted({h for p in pairs for h in p[2:4] if h is not None})
    text: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        text.update(conn.execute(sa.select(objects.c.hash, objects.c.body).where(objects.c.hash.in_(chunk))).all())
    log: list[dict[str, Any]] = []
    for kind, key, old_hash, new_hash in pairs:
        old_body = json.loads(text[old_hash]) if old_hash else None
        if old_body is not None and kind == "domain":
            old_body = _with_last_known(conn, kind, key, seq - 1, old_body, hidden)
        new_body = json.loads(text[new_hash]) if new_hash else None
        log.extend(_change_row(c, at, "scan", run_id, None) for c in object_changes(kind, key, old_body, new_body))
    for start in range(0, len(log), 5000):
        conn.execute(sa.insert(changes), log[start : start + 5000])


def _bodies(conn: Connection, state: dict[tuple[str, str], tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The stored body text of each object of a state."""
    wanted = sorted({h for h, _ in state.values()})
    text: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        text.update(conn.execute(sa.select(objects.c.hash, objects.c.body).where(objects.c.hash.in_(chunk))).all())
    return {ident: text[h] for ident, (h, _) in state.items()}


def _with_last_known(
    conn: Connection, kind: str, key: str, seq: int, body: dict[str, Any], hidden: Sequence[int] = ()
) -> dict[str, Any]:
    """A domain body whose FAILED DNS answers are replaced by the last answer an earlier version knew."""
    answers = dict((body.get("dns") or {}).get("answers") or {})
    unknown = {k for k, a in answers.items() if isinstance(a, dict) and a.get("outcome") == FAILED}
    if not unknown:
        return body
    older = conn.execute(
        sa.select(objects.c.body).join(versions, versions.c.hash == objects.c.hash)
        .where(versions.c.kind == kind, versions.c.key == key, versions.c.seq <= seq, versions.c.seq.not_in(hidden))
        .order_by(versions.c.seq.desc())
    ).scalars()
    for text in older:
        if not unknown:
            break
        old = (json.loads(text).get("dns") or {}).get("answers") or {}
        for name in list(unknown):
            answer = old.get(name)
            if isinstance(answer, dict) and answer.get("outcome") != FAILED:
                answers[name] = answer
                unknown.discard(name)
    return {**body, "dns": {**(body.get("dns") or {}), "answers": answers}}


def _domain_state(body: dict[str, Any]) -> DomainState:
    dns = body.get("dns") or {}
    answers = {
        name: DnsAnswer(str(a.get("name", "")), str(a.get("rdtype", "")), Outcome(a.get("outcome", "failed")),
                        tuple(str(r) for r in a.get("records") or ()), a.get("error"))
        for name, a in (dns.get("answers") or {}).items()
        if isinstance(a, dict)
    }
    policy = dns.get("mta_sts_policy")
    mode = policy.get("mode") if isinstance(policy, dict) else None
    return DomainState(answers, body.get("catch_all"), str(mode).lower() if mode is not None else None)


def _change_row(
    change: FieldChange, at: datetime, source: str, run_id: str | None, job_id: str | None
) -> dict[str, Any]:
    return {
        "at": at, "source": source, "run_id": run_id, "job_id": job_id, "tenant": change.tenant,
        "domain": change.domain, "subject": change.subject, "object_type": change.object_type,
        "object_key": change.object_key, "field": change.field, "action": change.action,
        "before": json.loads(canonical(change.before)), "after": json.loads(canonical(change.after)),
    }


def _record_delta(
    conn: Connection, run_id: str, seq: int, at: datetime, seen: Sequence[tuple[str, str, str, str]],
    complete: set[str],
) -> None:
    """Write one version-1 run's versions (what appeared, changed or, in complete scopes, went) and its
    change-log rows: migration 2's replay of the old full snapshots, whose bodies are in the store already."""
    before = _state_rows(conn, seq - 1, None)
    known_scopes = {scope for _, scope in before.values()}
    if before:
        known_scopes.add(CONFIG_SCOPE)
    rows: list[dict[str, Any]] = []
    pairs: list[tuple[str, str, str | None, str | None]] = []
    present: set[tuple[str, str]] = set()
    for kind, key, digest, scope in seen:
        if scope not in complete:
            continue
        present.add((kind, key))
        old = before.get((kind, key))
        if old is not None and old[0] == digest:
            continue
        rows.append({"kind": kind, "key": key, "seq": seq, "scope": scope, "hash": digest, "deleted": False})
        if scope in known_scopes:
            pairs.append((kind, key, old[0] if old else None, digest))
    for (kind, key), (digest, scope) in before.items():
        if scope in complete and (kind, key) not in present:
            rows.append({"kind": kind, "key": key, "seq": seq, "scope": scope, "hash": None, "deleted": True})
            if scope in known_scopes:
                pairs.append((kind, key, digest, None))
    for start in range(0, len(rows), 5000):
        conn.execute(sa.insert(versions), rows[start : start + 5000])
    _log_pairs(conn, run_id, seq, at, pairs)
