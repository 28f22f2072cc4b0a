"""Jobs and the audit log over a scanned copy of the demo, on SQLite and PostgreSQL: idempotency, failure, undo,
tampering, concurrency, canary bulk."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import threading
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from remediation.actions import plan_for
from remediation.audit import entries, verify
from remediation.jobs import Jobs, bulk, plans_for_check
from scanner.store.database import audit
from tests.remediation.conftest import AUDIT_KEY, AUDIT_KEY_ENV, Estate

KEY = AUDIT_KEY.encode()


@pytest.fixture
def estate(stored_estate: Estate) -> Estate:
    """Every test here runs on SQLite and on PostgreSQL."""
    return stored_estate


def _runner(estate: Estate) -> Jobs:
    return Jobs(estate.store, estate.config, estate.root / "demo" / "audit.jsonl")


def _plan(estate: Estate, check: str):  # type: ignore[no-untyped-def]
    return plans_for_check(estate.store, estate.run_id, check)[0]


def test_rerun_of_a_done_subject_records_already_done_and_writes_nothing(estate: Estate) -> None:
    runner = _runner(estate)
    plan = _plan(estate, "catchall.enabled")
    first = asyncio.run(runner.execute(runner.create(plan, "ops", "fix").id))
    assert first.state == "done"
    files = estate.files_state()
    second = asyncio.run(runner.execute(runner.create(plan, "ops", "again").id))
    assert second.state == "already_done" and estate.files_state() == files
    assert asyncio.run(runner.execute(first.id)).state == "done"  # a finished job never runs twice
    assert [e.kind for e in entries(estate.store)] == ["intent", "state", "intent", "state"]


def test_a_write_whose_reread_misses_the_target_is_failed_not_done(estate: Estate, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from scanner.adapters.files import FilesAdapter

    async def no_effect(self, action, subject, params, before):  # type: ignore[no-untyped-def]
        return await self.remedy_read(action, subject, params)  # "success", nothing changed

    monkeypatch.setattr(FilesAdapter, "remedy_apply", no_effect)
    runner = _runner(estate)
    job = asyncio.run(runner.execute(runner.create(_plan(estate, "account.ghost"), "ops", "fix").id))
    assert job.state == "failed" and "not the target state" in (job.error or "")
    assert estate.store.changes(subject=job.subject) == [] or all(
        c.source == "scan" for c in estate.store.changes(subject=job.subject))


def test_a_failed_write_leaves_the_job_failed_with_the_error_and_nothing_recorded(estate: Estate) -> None:
    runner = _runner(estate)
    plan = _plan(estate, "forwarding.external")
    (estate.export(plan.tenant) / "forwards.csv").unlink()
    (estate.export(plan.tenant) / "forwards.json").unlink(missing_ok=True)
    job = asyncio.run(runner.execute(runner.create(plan, "ops", "fix").id))
    assert job.state == "failed" and "no forwards.csv" in (job.error or "")
    assert job.before is None and job.after is None
    assert [c for c in estate.store.changes() if c.source == "job"] == []


def test_undo_restores_the_recorded_before_state_as_its_own_job(estate: Estate) -> None:
    runner = _runner(estate)
    plan = _plan(estate, "delegate.external")
    before = estate.files_state()
    done = asyncio.run(runner.execute(runner.create(plan, "ops", "fix").id))
    assert done.state == "done" and estate.files_state() != before
    undone = asyncio.run(runner.undo(done.id, "ops", "mistake"))
    assert undone.state == "done" and undone.undo_of == done.id
    assert estate.files_state() == before
    assert len(runner.history()) == 2


def test_suspend_and_revoke_change_the_export_and_undo(estate: Estate) -> None:
    runner = _runner(estate)
    before = estate.files_state()
    for check in ("account.ghost", "invite.expired"):
        job = asyncio.run(runner.execute(runner.create(_plan(estate, check), "ops", "fix").id))
        assert job.state == "done", job.error
        assert asyncio.run(runner.undo(job.id, "ops", "back")).state == "done"
    assert estate.files_state() == before


def test_audit_verify_passes_on_a_good_log_and_fails_on_each_tampering(estate: Estate) -> None:
    runner = _runner(estate)
    for check in ("catchall.enabled", "account.ghost", "invite.expired"):
        asyncio.run(runner.execute(runner.create(_plan(estate, check), "ops", "fix").id))
    sink = estate.root / "demo" / "audit.jsonl"
    assert verify(estate.store, KEY, sink) == []
    engine = estate.store.engine
    with engine.begin() as conn:
        rows = conn.execute(sa.select(audit).order_by(audit.c.seq)).all()

    def restore() -> None:
        with engine.begin() as conn:
            conn.execute(sa.delete(audit))
            conn.execute(sa.insert(audit), [dict(r._mapping) for r in rows])
        assert verify(estate.store, KEY) == []

    with engine.begin() as conn:  # changed
        conn.execute(sa.update(audit).where(audit.c.seq == 2).values(body=rows[1].body.replace("done", "failed")))
    assert any("changed" in p for p in verify(estate.store, KEY))
    restore()
    with engine.begin() as conn:  # removed from the middle
        conn.execute(sa.delete(audit).where(audit.c.seq == 3))
    assert any("missing" in p for p in verify(estate.store, KEY))
    restore()
    with engine.begin() as conn:  # removed at the end
        conn.execute(sa.delete(audit).where(audit.c.seq == len(rows)))
    assert any("removed" in p for p in verify(estate.store, KEY))
    restore()
    with engine.begin() as conn:  # reordered: two entries swap places
        conn.execute(sa.delete(audit).where(audit.c.seq.in_((2, 3))))
        a, b = dict(rows[1]._mapping), dict(rows[2]._mapping)
        conn.execute(sa.insert(audit), [{**b, "seq": 2}, {**a, "seq": 3}])
    assert verify(estate.store, KEY)
    restore()
    lines = sink.read_text(encoding="utf-8").splitlines()
    sink.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    assert verify(estate.store, KEY, sink) == []  # jobs finishing at once may copy their entries in either order
    sink.write_text("\n".join([lines[0].replace("ops", "ope"), *lines[1:]]) + "\n", encoding="utf-8")
    assert any("differs" in p for p in verify(estate.store, KEY, sink))
    sink.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # the second sink lost an entry
    assert any("sink" in p for p in verify(estate.store, KEY, sink))


def test_canary_bulk_stops_at_the_first_failure(estate: Estate, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from scanner.adapters.files import FilesAdapter

    plans = plans_for_check(estate.store, estate.run_id, "forwarding.external")
    assert len(plans) >= 4
    real = FilesAdapter.remedy_apply
    calls: list[str] = []

    async def flaky(self, action, subject, params, before):  # type: ignore[no-untyped-def]
        calls.append(subject)
        if len(calls) == 3:
            raise __import__("scanner.errors").errors.AdapterError("export file locked")
        return await real(self, action, subject, params, before)

    monkeypatch.setattr(FilesAdapter, "remedy_apply", flaky)
    runner = _runner(estate)
    dry = asyncio.run(bulk(runner, plans, canary=2, apply=False, actor="ops", reason="bulk"))
    assert [s.note for s in dry] == ["would run"] * len(plans) and runner.history() == []
    steps = asyncio.run(bulk(runner, plans, canary=2, apply=True, actor="ops", reason="bulk"))
    assert [s.job.state for s in steps if s.job] == ["done", "done", "failed"]
    assert [s.note for s in steps] == ["canary", "canary", "rest"]
    again = asyncio.run(bulk(runner, plans, canary=2, apply=True, actor="ops", reason="bulk"))
    assert [s.note for s in again[:2]] == ["already done by an earlier job"] * 2  # a re-run skips what is done


def test_the_demo_is_remediated_end_to_end_from_the_command_line(estate: Estate) -> None:
    script = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")
    config = estate.root / "run.toml"
    text = (estate.root / "demo" / "mailwarden.toml").read_text(encoding="utf-8")
    assert 'url = "sqlite:///mailwarden-demo.db"' in text
    config.write_text(text.replace('url = "sqlite:///mailwarden-demo.db"', f'url = "{estate.config.store.url}"'),
                      encoding="utf-8")
    shutil.copytree(estate.root / "demo", estate.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.toml"))
    env = {"MAILWARDEN_TEST_LINK_SECRET": "x" * 32, AUDIT_KEY_ENV: AUDIT_KEY, "PATH": "/usr/bin:/bin"}
    checks = ("forwarding.external", "catchall.enabled", "delegate.external", "invite.expired", "account.ghost")
    for check in checks[:1]:
        dry = subprocess.run([script, "remediate", "--config", str(config), "--check", check], capture_output=True,
                             text=True, env=env, timeout=60)
        assert dry.returncode == 0 and "would run" in dry.stdout, dry.stderr
    for check in checks:
        done = subprocess.run([script, "remediate", "--config", str(config), "--check", check, "--canary", "1",
                               "--yes"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "canary: done" in done.stdout
    verified = subprocess.run([script, "audit", "verify", "--config", str(config)], capture_output=True, text=True,
                              env=env, timeout=60)
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
    changes = subprocess.run([script, "changes", "--config", str(config), "--format", "json"], capture_output=True,
                             text=True, env=env, timeout=60)
    rows = json.loads(changes.stdout)
    assert {r["source"] for r in rows} == {"job"} and rows
    # The evidence pack carries the same: every job in remediation_log.csv, its changes in changes.csv.
    pack = estate.root / "pack"
    written = subprocess.run([script, "evidence", "--config", str(config), "--out", str(pack)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert written.returncode == 0, written.stderr
    with (pack / "remediation_log.csv").open(newline="", encoding="utf-8") as handle:
        logged = list(csv.DictReader(handle))
    assert {r["check"] for r in logged} == set(checks)
    assert all(r["actor"].startswith("cli:") and r["state"] in ("done", "already_done") for r in logged)
    with (pack / "changes.csv").open(newline="", encoding="utf-8") as handle:
        by_jobs = {r["job_id"] for r in csv.DictReader(handle) if r["source"] == "job"}
    assert by_jobs and by_jobs <= {r["job_id"] for r in logged}
    forwards = (estate.root / "cedar-law" / "forwards.csv").read_text(encoding="utf-8")
    assert "personal-mail.test" not in forwards and "gmail.test" not in forwards
    assert plan_for is not None


def _at_once(count: int, work) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Run ``work(i)`` in ``count`` threads released together; their results (an exception is re-raised)."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def test_two_simultaneous_executions_of_one_job_execute_it_once(estate: Estate, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from scanner.adapters.files import FilesAdapter

    real = FilesAdapter.remedy_apply
    applied: list[str] = []

    async def counted(self, action, subject, params, before):  # type: ignore[no-untyped-def]
        applied.append(subject)
        return await real(self, action, subject, params, before)

    monkeypatch.setattr(FilesAdapter, "remedy_apply", counted)
    runner = _runner(estate)
    job = runner.create(_plan(estate, "forwarding.external"), "ops", "fix")
    results = _at_once(2, lambda i: asyncio.run(Jobs(estate.store, estate.config).execute(job.id)))
    assert len(applied) == 1
    assert runner.get(job.id).state == "done" and {r.state for r in results} <= {"running", "done"}
    assert [e.kind for e in entries(estate.store)] == ["intent", "state"]


def test_jobs_running_at_the_same_time_keep_one_unbroken_audit_chain(estate: Estate) -> None:
    plans = plans_for_check(estate.store, estate.run_id, "forwarding.external")[:4]
    assert len(plans) == 4
    sink = estate.root / "demo" / "audit.jsonl"
    done = _at_once(4, lambda i: asyncio.run(Jobs(estate.store, estate.config, sink).execute(
        Jobs(estate.store, estate.config, sink).create(plans[i], f"ops{i}", "fix").id)))
    assert [j.state for j in done] == ["done"] * 4, [j.error for j in done]
    assert len(entries(estate.store)) == 8 and verify(estate.store, KEY, sink) == []
