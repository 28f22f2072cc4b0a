"""The audit log: append-only, HMAC-chained intent and state entries, with an optional JSON-lines copy.

Each entry's hash is an HMAC-SHA256 (RFC 2104) over the previous entry's hash and its own fields, keyed
with ``[remediation] audit_key``: without the key nobody can recompute the chain after editing an entry.
Entries written before version 5 of the store were chained with plain SHA-256; they are verified as that
legacy chain up to the seq the migration marked (``audit_keyed_from``), and keyed from there on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scanner.config import RemediationConfig
from scanner.errors import ConfigError
from scanner.store.database import AUDIT_KEYED_FROM, Store, audit, canonical, jobs, meta_table

log = logging.getLogger(__name__)

GENESIS = "0" * 64
"""The previous-entry hash of the first entry."""
HEAD = "audit_head"
"""The mw_meta key holding the last entry's seq and hash and a keyed tag over them, so a removed tail shows."""
KEY_ID = "audit_key_id"
"""The mw_meta key naming (by an HMAC of a constant, never the key) the key the chain is written with."""
MIN_KEY = 16


def audit_key(settings: RemediationConfig) -> bytes:
    """The audit key's bytes; a ConfigError when it is not configured, too short or the same as the link secret."""
    if settings.audit_key is None:
        raise ConfigError("remediation.audit_key: the audit log needs a key of its own (a secret reference such as "
                          "'env:MAILWARDEN_AUDIT_KEY', distinct from remediation.secret)")
    value = settings.audit_key.resolve()
    if len(value) < MIN_KEY:
        raise ConfigError(f"remediation.audit_key: {settings.audit_key} resolves to fewer than {MIN_KEY} characters")
    if settings.secret is not None and hmac.compare_digest(value.encode("utf-8"),
                                                           settings.secret.resolve().encode("utf-8")):
        raise ConfigError("remediation.audit_key: it resolves to the link secret's value; use a key of its own")
    return value.encode("utf-8")


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


def _fields(seq: int, kind: str, job_id: str, body: str, prev_hash: str) -> bytes:
    return canonical({"seq": seq, "kind": kind, "job_id": job_id, "body": body, "prev": prev_hash}).encode("utf-8")


def entry_hash(seq: int, kind: str, job_id: str, body: str, prev_hash: str) -> str:
    """The legacy (unkeyed) SHA-256 over the previous hash and the entry's fields."""
    return hashlib.sha256(_fields(seq, kind, job_id, body, prev_hash)).hexdigest()


def entry_mac(key: bytes, seq: int, kind: str, job_id: str, body: str, prev_hash: str) -> str:
    """HMAC-SHA256 over the previous hash and the entry's fields, so a change, removal or reordering shows."""
    return hmac.new(key, _fields(seq, kind, job_id, body, prev_hash), hashlib.sha256).hexdigest()


def _head_tag(key: bytes, seq: int, digest: str, keyed_from: int) -> str:
    return hmac.new(key, f"head:{seq}:{digest}:{keyed_from}".encode(), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short name for the key that reveals nothing about it."""
    return hmac.new(key, b"mailwarden audit key id", hashlib.sha256).hexdigest()[:16]


def _meta(conn: Connection, key: str) -> str | None:
    value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()
    return None if value is None else str(value)


def _set_meta(conn: Connection, key: str, value: str) -> None:
    if conn.execute(sa.update(meta_table).where(meta_table.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(sa.insert(meta_table).values(key=key, value=value))


def append(conn: Connection, key: bytes, kind: str, job_id: str, body: Mapping[str, Any], at: datetime) -> Entry:
    """Append one keyed entry inside the caller's transaction (the job's record and its entry commit together)."""
    # Appends take turns: each locks the same row (the schema version's, which always exists) until its
    # transaction ends. Under PostgreSQL's READ COMMITTED two appends would otherwise read the same last entry
    # and both claim its successor's seq. SQLite serializes writers itself (it renders no FOR UPDATE).
    conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version").with_for_update())
    written_with = _meta(conn, KEY_ID)
    if written_with is None:
        _set_meta(conn, KEY_ID, key_id(key))
    elif not hmac.compare_digest(written_with, key_id(key)):
        raise ConfigError("remediation.audit_key: it is not the key this audit log was written with; "
                          "nothing was recorded")
    last = conn.execute(sa.select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).one_or_none()
    seq = (last.seq + 1) if last is not None else 1
    prev = last.hash if last is not None else GENESIS
    text = canonical({"at": at.astimezone(UTC).isoformat(), **body})
    digest = entry_mac(key, seq, kind, job_id, text, prev)
    conn.execute(sa.insert(audit).values(seq=seq, at=at, kind=kind, job_id=job_id, body=text, prev_hash=prev,
                                         hash=digest))
    keyed_from = int(_meta(conn, AUDIT_KEYED_FROM) or 1)
    _set_meta(conn, HEAD, f"{seq}:{digest}:{_head_tag(key, seq, digest, keyed_from)}")
    return Entry(seq, kind, job_id, text, prev, digest)


def write_sink(path: Path | None, entries: list[Entry]) -> str:
    """Copy entries to the JSON-lines sink outside the store (appended, flushed); "" or why it failed.

    A failing sink never raises: the entries are committed in the store already, and ``audit verify``
    reports the copy that lags behind.
    """
    if path is None or not entries:
        return ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(entry.line() + "\n")
            handle.flush()
    except OSError as exc:
        problem = f"the audit copy {path} could not be written ({exc.strerror or exc})"
        log.error("%s", problem, extra={"event": "audit.sink_failed", "seqs": [e.seq for e in entries]})
        return problem
    return ""


def entries(store: Store, job_id: str | None = None) -> list[Entry]:
    """Audit entries in order, optionally one job's."""
    query = sa.select(audit).order_by(audit.c.seq)
    if job_id is not None:
        query = query.where(audit.c.job_id == job_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Entry(r.seq, r.kind, r.job_id, r.body, r.prev_hash, r.hash) for r in rows]


def verify_chain(store: Store, key: bytes, legacy: int = 0) -> tuple[list[str], list[Entry]]:
    """The chain's problems (changed, missing, reordered entries, a missing or forged head) and its entries.

    ``legacy`` is how many unkeyed entries the operator accepts (``[remediation] audit_legacy_entries``):
    where the keyed chain begins is recorded in the database, which anyone rewriting the log could move,
    so the count that is believed comes from the config, outside the database.
    """
    problems: list[str] = []
    found = entries(store)
    with store.engine.connect() as conn:
        head = _meta(conn, HEAD)
        marker = _meta(conn, AUDIT_KEYED_FROM)
        written_with = _meta(conn, KEY_ID)
    if written_with is not None and not hmac.compare_digest(written_with, key_id(key)):
        return ["the configured audit_key is not the key this log was written with"], found
    if marker is None or not marker.isdigit():
        problems.append(f"the store does not record where the keyed chain begins ({AUDIT_KEYED_FROM} is missing)")
        return problems, found
    keyed_from = int(marker)
    if keyed_from - 1 > legacy:
        problems.append(f"entries 1 to {keyed_from - 1} are marked as written before the audit key (the legacy "
                        f"unkeyed chain) but the config accepts {legacy}: if this store was upgraded with that many "
                        f"entries, set audit_legacy_entries = {keyed_from - 1} under [remediation]")
        return problems, found
    prev = GENESIS
    for expected, entry in enumerate(found, start=1):
        if entry.seq != expected:
            problems.append(f"entry {expected} is missing (the next entry is {entry.seq})")
        if entry.prev_hash != prev:
            problems.append(f"entry {entry.seq}: does not follow the entry before it (removed or reordered)")
        fields = (entry.seq, entry.kind, entry.job_id, entry.body, entry.prev_hash)
        digest = entry_mac(key, *fields) if entry.seq >= keyed_from else entry_hash(*fields)
        if not hmac.compare_digest(digest, entry.hash):
            problems.append(f"entry {entry.seq}: its content does not match its hash (changed)")
        prev = entry.hash
        if problems:
            return problems, found
    if head is None:
        if found or keyed_from > 1 or written_with is not None:  # entries were written: the head must exist
            problems.append("the log's recorded head is missing: entries or the head were removed")
        return problems, found
    seq, _, rest = head.partition(":")
    digest, _, tag = rest.partition(":")
    # A head without a tag is the legacy chain's, acceptable only while no keyed entry was ever written.
    legacy = not tag and written_with is None and seq.isdigit() and int(seq) < keyed_from
    if not seq.isdigit() or not (legacy or hmac.compare_digest(tag, _head_tag(key, int(seq), digest, keyed_from))):
        problems.append("the log's recorded head is not one this key wrote (forged, or the keyed chain's "
                        "starting point was moved)")
    elif not found:
        problems.append(f"the log is empty but its recorded head is entry {seq}: every entry was removed")
    elif (found[-1].seq, found[-1].hash) != (int(seq), digest):
        problems.append(f"the log ends at entry {found[-1].seq} but its recorded head is entry {seq}: "
                        "entries were removed")
    return problems, found


def legacy_count(store: Store) -> int:
    """How many entries predate the audit key (verified as the plain SHA-256 chain)."""
    with store.engine.connect() as conn:
        marker = _meta(conn, AUDIT_KEYED_FROM)
        if marker is None or not marker.isdigit():
            return 0
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit)
                                .where(audit.c.seq < int(marker))).scalar() or 0)


def verify(store: Store, key: bytes, sink: Path | None = None, legacy: int = 0) -> list[str]:
    """Every problem with the audit chain, the job rows' agreement with it and (given one) the sink's; empty when intact."""
    problems, found = verify_chain(store, key, legacy)
    problems += _verify_jobs(store, found)
    if sink is not None:
        problems += _verify_sink(sink, found)
    return problems


def job_record(found: list[Entry], job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A job's intent entry body and its last state entry body (None when absent)."""
    intent = next((e.data for e in found if e.job_id == job_id and e.kind == "intent"), None)
    state = next((e.data for e in reversed(found) if e.job_id == job_id and e.kind == "state"), None)
    return intent, state


def _verify_jobs(store: Store, found: list[Entry]) -> list[str]:
    """Each job row's actor, what, state, before and after against its entries; entries naming no job."""
    problems: list[str] = []
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(jobs).order_by(jobs.c.created, jobs.c.id)).all()
    known = {r.id for r in rows}
    for entry in found:
        if entry.job_id not in known:
            problems.append(f"entry {entry.seq} names job {entry.job_id}, which is not in the jobs table (removed)")
            known.add(entry.job_id)
    for row in rows:
        intent, state = job_record(found, row.id)
        if intent is None:
            problems.append(f"job {row.id}: it has no intent entry in the audit log (added, or the log was emptied)")
            continue
        what = intent.get("what") or {}
        if intent.get("who") != row.actor:
            problems.append(f"job {row.id}: its actor differs from its intent entry's")
        if (what.get("action"), what.get("tenant"), what.get("subject")) != (row.action, row.tenant, row.subject) \
                or canonical(what.get("params") or {}) != canonical(row.params or {}) \
                or intent.get("undo_of") != row.undo_of:
            problems.append(f"job {row.id}: its action, tenant, subject or parameters differ from its intent entry's")
        if state is None:
            if row.state not in ("pending", "running") or row.before is not None or row.after is not None:
                problems.append(f"job {row.id}: it is {row.state} with recorded states, but the log holds no "
                                "state entry for it")
            continue
        if state.get("state") != row.state and not (state.get("state") == "pending" and row.state == "running"):
            problems.append(f"job {row.id}: its state {row.state} differs from its last state entry's "
                            f"{state.get('state')}")
        if canonical(state.get("before")) != canonical(row.before) or canonical(state.get("after")) != canonical(row.after):
            problems.append(f"job {row.id}: its recorded before or after state differs from its state entry's")
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
