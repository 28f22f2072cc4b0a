"""Stores written before compact passes (schema versions 4 and 8) upgrade in place and read the same history."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from remediation.audit import entries, verify
from remediation.jobs import Jobs
from reports.records import finding_record
from scanner.cli import DEMO
from scanner.config import load_config
from scanner.model import Status
from scanner.store.database import MIGRATIONS, Store

DATA = Path(__file__).resolve().parents[2] / "data"
FIXTURES = {
    4: DATA / "store-v4.sqlite.gz",  # tests/data/make_store_v4.py: two demo runs, a job, its (unkeyed) audit
    8: DATA / "store-v8.sqlite.gz",  # tests/data/make_store_v8.py: the same on the last schema before compact
}                                    # passes, with skipped findings, each run's own lifecycle and a keyed audit
V8_AUDIT_KEY = (DATA / "store-v8.audit-key").read_bytes()
"""The audit key the version-8 fixture's chain was written with (a test key, written by its script)."""


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _history(url: str) -> dict[str, Any]:
    """The history as an older store holds it, read with plain SQL (no code of today's store)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM mw_meta WHERE key = 'schema_version'")).scalar()
        runs = [tuple(r) for r in conn.execute(sa.text("SELECT id, state FROM runs ORDER BY started, id"))]
        found: dict[str, list[dict[str, Any]]] = {}
        # Version 4 kept one lifecycle per finding; version 5 on keeps each run's own first and last seen.
        lifecycle = "f.first_seen, f.last_seen" if int(version) < 5 else "rf.first_seen, rf.last_seen"
        for run_id, _ in runs:
            rows = conn.execute(sa.text(
                f"SELECT rf.*, {lifecycle} FROM run_findings rf JOIN findings f "
                "ON f.fingerprint = rf.fingerprint WHERE rf.run_id = :run "
                "ORDER BY rf.tenant, rf.domain, rf.subject, rf.check_id, rf.item"), {"run": run_id}).mappings()
            found[run_id] = [{
                "id": r["fingerprint"], "check": r["check_id"], "status": r["status"], "severity": r["severity"],
                "tenant": r["tenant"], "domain": r["domain"], "subject": r["subject"], "item": r["item"],
                "title": r["title"], "reason": r["reason"], "evidence": json.loads(r["evidence"]),
                "remediation": json.loads(r["remediation"]) if r["remediation"] else None,
                "first_seen": _iso(r["first_seen"]), "last_seen": _iso(r["last_seen"]), "run_id": r["run_id"],
                "caused_by": r.get("caused_by") or "",  # version 4 had no skipped findings: the column's default
            } for r in rows]
        changes = [tuple(r) for r in conn.execute(sa.text(
            "SELECT source, run_id, job_id, object_key, field, action, before, after FROM changes ORDER BY at, id"))]
        jobs = [tuple(r) for r in conn.execute(sa.text("SELECT id, state, actor, finding FROM jobs ORDER BY id"))]
    engine.dispose()
    return {"version": int(version), "runs": runs, "findings": found, "changes": changes, "jobs": jobs}


@pytest.mark.parametrize("version", sorted(FIXTURES))
def test_an_older_store_upgrades_in_place_and_reads_the_same_history(tmp_path: Path, version: int) -> None:
    database = tmp_path / "store.db"
    with gzip.open(FIXTURES[version], "rb") as packed, database.open("wb") as out:
        shutil.copyfileobj(packed, out)
    url = f"sqlite:///{database}"
    before = _history(url)
    assert before["version"] == version and len(before["runs"]) == 2 and before["jobs"]
    statuses = {f["status"] for rows in before["findings"].values() for f in rows}
    assert {"pass", "fail", "error", "excepted"} <= statuses
    if version == 8:
        assert "skipped" in statuses

    store = Store(url)
    try:
        assert store.version == len(MIGRATIONS)
        assert [(r.id, r.state) for r in store.runs()] == before["runs"]
        for run_id, expected in before["findings"].items():
            assert [finding_record(f) for f in store.findings_for_run(run_id)] == expected
            counts = store.status_counts(run_id)
            assert counts == {s: sum(1 for f in expected if f["status"] == s) for s in {f["status"] for f in expected}}
            # runs recorded before pass counts were kept have their passes counted
            passed = [f for f in expected if f["status"] == "pass"]
            assert passed and {(c.check, c.tenant, c.severity.value, domain): n for c in store.pass_counts(run_id)
                               for domain, n in c.domains.items()} == Counter(
                (f["check"], f["tenant"], f["severity"], f["domain"]) for f in passed)
        # The passes moved out of the full rows, and only the passes.
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM run_findings WHERE status = 'pass'")).scalar() == 0
        assert [(c.source, c.run_id, c.job_id, c.object_key, c.field, c.action) for c in store.changes()] == [
            c[:6] for c in before["changes"]]
        jobs = Jobs(store, load_config(DEMO / "mailwarden.toml"))
        assert sorted((j.id, j.state, j.actor, j.finding) for j in jobs.history()) == before["jobs"]
        assert [e.kind for e in entries(store)] == ["intent", "state"]
        if version == 4:  # the two entries predate the keyed chain (version 7): its accepted legacy part
            assert verify(store, b"k" * 32, legacy=2) == []
        else:
            assert verify(store, V8_AUDIT_KEY) == []

        # And history goes on: a later run's pass resolves a finding that the upgraded store has open.
        last = before["runs"][-1][0]
        failing = store.findings_for_run(last, (Status.FAIL,))[0]
        later = datetime(2026, 12, 1, tzinfo=UTC)
        store.start_run("after-upgrade", later, "digest", "test")
        stored = store.record_findings("after-upgrade", [replace(failing, status=Status.PASS, evidence={"fixed": True})],
                                       later, [failing.tenant])
        store.finish_run("after-upgrade", later + timedelta(minutes=1), "complete", {})
        assert stored[0].first_seen == failing.first_seen
        assert failing.id in store.lifecycle_events("after-upgrade")["resolved"]
        assert [(c.check, c.count, c.domains) for c in store.pass_counts("after-upgrade")] == [
            (failing.check, 1, {failing.domain: 1})]  # kept as the run recorded it
        assert [finding_record(f) for f in store.findings_for_run(last)] == before["findings"][last]
    finally:
        store.close()
