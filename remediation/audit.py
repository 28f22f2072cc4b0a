"""The audit log: append-only, hash-chained intent and state entries, with an optional JSON-lines copy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scanner.store import Store, audit, canonical, meta_table

GENESIS = "0" * 64
"""The previous-entry hash of the first entry."""
HEAD = "audit_head"
"""The mw_meta key holding the last entry's seq and hash, so a removed tail entry shows too."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit entry as stored."""

    seq: int
    kind: str
    job_id: str
    body: str
    prev_hash: str
    hash: str

    @property
    def data(self) -> dict[str, Any]:
        """The entry's body as data."""
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}

    def line(self) -> str:
        """The entry as one JSON line (the second sink's format)."""
        return canonical({"seq": self.seq, "kind": self.kind, "job_id": self.job_id, "body": self.data,
                          "prev_hash": self.prev_hash, "hash": self.hash})


def entry_hash(seq: int, kind: str, job_id: str, body: str, prev_hash: str) -> str:
    """SHA-256 over the previous hash and the entry's fields, so any change, removal or reordering shows."""
    text = canonical({"seq": seq, "kind": kind, "job_id": job_id, "body": body, "prev": prev_hash})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def append(conn: Connection, kind: str, job_id: str, body: Mapping[str, Any], at: datetime) -> Entry:
    """Append one entry inside the caller's transaction (the job's record and its audit entry commit together)."""
    # Appends take turns: each locks the same row (the schema version's, which always exists) until its
    # transaction ends. Under PostgreSQL's READ COMMITTED two appends would otherwise read the same last entry
    # and both claim its successor's seq. SQLite serializes writers itself (it renders no FOR UPDATE).
    conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version").with_for_update())
    last = conn.execute(sa.select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).one_or_none()
    seq = (last.seq + 1) if last is not None else 1
    prev = last.hash if last is not None else GENESIS
    text = canonical({"at": at.astimezone(UTC).isoformat(), **body})
    digest = entry_hash(seq, kind, job_id, text, prev)
    conn.execute(sa.insert(audit).values(seq=seq, at=at, kind=kind, job_id=job_id, body=text, prev_hash=prev,
                                         hash=digest))
    head = f"{seq}:{digest}"
    if conn.execute(sa.update(meta_table).where(meta_table.c.key == HEAD).values(value=head)).rowcount == 0:
        conn.execute(sa.insert(meta_table).values(key=HEAD, value=head))
    return Entry(seq, kind, job_id, text, prev, digest)


def write_sink(path: Path | None, entries: list[Entry]) -> None:
    """Copy entries to the JSON-lines sink outside the store (appended, flushed to disk)."""
    if path is None or not entries:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(entry.line() + "\n")
        handle.flush()


def entries(store: Store, job_id: str | None = None) -> list[Entry]:
    """Audit entries in order, optionally one job's."""
    query = sa.select(audit).order_by(audit.c.seq)
    if job_id is not None:
        query = query.where(audit.c.job_id == job_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Entry(r.seq, r.kind, r.job_id, r.body, r.prev_hash, r.hash) for r in rows]


def verify(store: Store, sink: Path | None = None) -> list[str]:
    """Every problem with the audit chain (and, given one, the sink's agreement with it); empty when intact."""
    problems: list[str] = []
    found = entries(store)
    prev = GENESIS
    for expected, entry in enumerate(found, start=1):
        if entry.seq != expected:
            problems.append(f"entry {expected} is missing (the next entry is {entry.seq})")
        if entry.prev_hash != prev:
            problems.append(f"entry {entry.seq}: does not follow the entry before it (removed or reordered)")
        if entry_hash(entry.seq, entry.kind, entry.job_id, entry.body, entry.prev_hash) != entry.hash:
            problems.append(f"entry {entry.seq}: its content does not match its hash (changed)")
        prev = entry.hash
        if problems:
            break
    with store.engine.connect() as conn:
        head = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == HEAD)).scalar()
    last = f"{found[-1].seq}:{found[-1].hash}" if found else None
    if not problems and head != last:
        problems.append(f"the log ends at {last or 'nothing'} but its recorded head is {head}: entries were removed")
    if sink is not None:
        problems += _verify_sink(sink, found)
    return problems


def _verify_sink(sink: Path, found: list[Entry]) -> list[str]:
    try:
        lines = [line for line in sink.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        return [f"audit sink {sink}: cannot read it ({exc.strerror})"]
    if len(lines) != len(found):
        return [f"audit sink {sink} holds {len(lines)} entries, the store {len(found)}"]
    lines.sort(key=_sink_seq)  # jobs finishing at once copy their entries after their commits, in either order
    for entry, line in zip(found, lines, strict=True):
        if line != entry.line():
            return [f"audit sink {sink}: entry {entry.seq} differs from the store's"]
    return []


def _sink_seq(line: str) -> int:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0
