"""mailwarden status: the same report as before from plain SQL (sqlite3 read-only, or the store's own connection
on PostgreSQL), the config's [store] and [schedule] checked by the loader's own code, one line for a store that
cannot be read."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scanner.cli import main
from scanner.config import load_config
from scanner.errors import ConfigError
from scanner.service.serve import _begin_job, _end_job, build_scheduler, ensure_tables, job_runs, sync_jobs
from scanner.sections import JOBS, ScheduleConfig, _cron_trigger
from scanner.service.status import status_lines
from scanner.store.database import MIGRATIONS, Store
from scanner.store.lease import ServiceLease, current_holder, service_holder
from scanner.store.plain import SCHEMA_VERSION
from tests.scanner.store.held import hold_scan_lease

TENANT = '[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n'


def _write(write_config: Callable[[str], Path], url: str, schedule: str = "") -> Path:
    return write_config(f'[store]\nurl = "{url}"\n[schedule]\nscan = "0 6 * * *"\ndmarc_import = ""\n'
                        f'lease_ttl = 60\n{schedule}\n{TENANT}')


def _ended() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _through_sqlalchemy(config_path: Path) -> dict[str, Any]:
    """The status as `mailwarden status` computed it before plain SQL: the store's SQLAlchemy reads."""
    config = load_config(config_path)
    store = Store(config.store.url, create=False)
    try:
        with store.engine.connect() as conn:
            inspector = sa.inspect(conn)
            upcoming = {}
            if inspector.has_table("apscheduler_jobs"):
                table = sa.table("apscheduler_jobs", sa.column("id"), sa.column("next_run_time"))
                upcoming = {r.id: datetime.fromtimestamp(r.next_run_time, UTC) if r.next_run_time is not None else None
                            for r in conn.execute(sa.select(table.c.id, table.c.next_run_time))}
            logged = inspector.has_table("job_runs")
            jobs = {}
            for job in ("scan", "report", "dmarc_import"):
                row = conn.execute(sa.select(job_runs).where(job_runs.c.job == job)
                                   .order_by(job_runs.c.started.desc(), job_runs.c.id.desc()).limit(1)
                                   ).one_or_none() if logged else None
                last = None
                if row is not None:
                    last = {"state": row.state, "started": _iso(_utc(row.started)),
                            "finished": _iso(_utc(row.finished)), "run_id": row.run_id, "figures": row.figures}
                    if row.state == "running":
                        from scanner.store.plain import process_exists
                        alive = process_exists(row.pid) if row.host == socket.gethostname() else None
                        last["process"] = {"host": row.host, "pid": row.pid, "alive": alive}
                jobs[job] = {"schedule": getattr(config.schedule, job).strip() or None,
                             "timezone": config.schedule.timezone, "scheduled": job in upcoming,
                             "next_run": _iso(upcoming.get(job)), "last": last}
        runs = store.runs()
        holder, service = current_holder(store), service_holder(store)
    finally:
        store.close()
    now, ttl = datetime.now(UTC), config.schedule.lease_ttl
    latest = runs[-1] if runs else None
    return {
        "jobs": jobs,
        "latest_run": None if latest is None else {"id": latest.id, "state": latest.state,
                                                   "started": _iso(latest.started), "finished": _iso(latest.finished)},
        "scan_running": None if holder is None else {"run_id": holder.run_id, "host": holder.host, "pid": holder.pid,
                                                     "heartbeat": _iso(holder.heartbeat),
                                                     "alive": holder.alive(now, ttl)},
        "service": None if service is None else {"host": service.host, "pid": service.pid,
                                                 "heartbeat": _iso(service.heartbeat), "alive": service.alive(now, ttl)},
    }


def _status(config_path: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["status", "--config", str(config_path), *args])


def _same_as_before(config_path: Path) -> dict[str, Any]:
    """Status as JSON and as text equals what the SQLAlchemy reads give; returns it."""
    printed = _status(config_path, "--format", "json")
    assert printed.exit_code == 0, printed.output
    expected = _through_sqlalchemy(config_path)
    assert printed.output == json.dumps(expected, indent=2) + "\n"
    text = _status(config_path)
    assert text.exit_code == 0, text.output
    assert text.output == "".join(f"{line}\n" for line in status_lines(expected))
    return expected


def _seed_as_serve(config_path: Path, store: Store) -> None:
    """What `serve` leaves in a store: APScheduler's job table, a job log with finished and running jobs."""
    config = load_config(config_path)
    scheduler = build_scheduler(config, threading.Event())
    scheduler.start(paused=True)
    sync_jobs(scheduler, config, config_path)
    scheduler.shutdown()
    ensure_tables(store)
    started = datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=UTC)
    done = _begin_job(store, "scan", started)
    _end_job(store, done, "complete", {"run_id": "r1", "state": "complete", "duration": 1.5,
                                       "tenants": {"complete": 1, "partial": 0, "failed": 0}, "mailboxes": 0,
                                       "domains": 1, "findings": {"fail": 2, "pass": 7}})
    failed = _begin_job(store, "report", started + timedelta(hours=1))
    _end_job(store, failed, "failed", {"state": "failed", "problem": "there is no [email] table", "duration": 0.0})
    _begin_job(store, "scan", started + timedelta(days=1))  # running, and this process is alive


def test_a_store_no_serve_has_run_on_reads_as_before(write_config: Callable[[str], Path], store_url: str) -> None:
    path = _write(write_config, store_url)
    store = Store(store_url)
    store.start_run("r1", datetime(2026, 12, 1, 6, tzinfo=UTC), "d", "test")
    store.finish_run("r1", datetime(2026, 12, 1, 6, 5, tzinfo=UTC), "complete", {})
    store.close()
    found = _same_as_before(path)
    assert found["latest_run"]["id"] == "r1" and all(j["last"] is None for j in found["jobs"].values())
    assert not any(j["scheduled"] for j in found["jobs"].values())


def test_a_store_serve_has_run_on_reads_as_before(write_config: Callable[[str], Path], store_url: str) -> None:
    path = _write(write_config, store_url)
    store = Store(store_url)
    try:
        store.start_run("r1", datetime(2026, 12, 1, 6, tzinfo=UTC), "d", "test")
        store.finish_run("r1", datetime(2026, 12, 1, 6, 5, tzinfo=UTC), "complete", {})
        store.start_run("r0", datetime(2026, 12, 2, 6, tzinfo=UTC), "d", "test")  # later, though its id sorts first
        store.finish_run("r0", datetime(2026, 12, 2, 6, 5, tzinfo=UTC), "partial", {})
        _seed_as_serve(path, store)
        with ServiceLease(store, ttl=60):
            found = _same_as_before(path)
    finally:
        store.close()
    scan, report = found["jobs"]["scan"], found["jobs"]["report"]
    assert scan["scheduled"] and scan["next_run"].endswith("T06:00:00Z")
    assert scan["last"]["state"] == "running" and scan["last"]["process"]["alive"] is True
    assert report["last"]["figures"]["problem"] == "there is no [email] table"
    assert found["service"]["alive"] is True and found["service"]["pid"] > 0
    assert found["latest_run"]["id"] == "r0"


def test_a_running_job_and_scan_whose_processes_are_gone_read_as_before(
    write_config: Callable[[str], Path], store_url: str
) -> None:
    path = _write(write_config, store_url)
    store = Store(store_url)
    gone = _ended()
    try:
        _seed_as_serve(path, store)
        with store.engine.begin() as conn:
            conn.execute(sa.update(job_runs).where(job_runs.c.state == "running").values(pid=gone))
        hold_scan_lease(store, "r2", gone)
    finally:
        store.close()
    found = _same_as_before(path)
    assert found["jobs"]["scan"]["last"]["process"] == {"host": socket.gethostname(), "pid": gone, "alive": False}
    assert found["scan_running"]["alive"] is False and found["latest_run"]["state"] == "running"
    text = _status(path).output
    assert f"its process {gone} on {socket.gethostname()} is gone" in text
    assert "latest stored run: r2 running (its process is gone: the next scan records it failed)" in text


def test_an_older_store_is_opened_as_every_command_opens_it(write_config: Callable[[str], Path],
                                                            tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mw_meta SET value = '9' WHERE key = 'schema_version'"))
    engine.dispose()
    _same_as_before(_write(write_config, url))
    assert Store(url, create=False).version == SCHEMA_VERSION  # migrated, as before


def test_the_schema_version_is_the_number_of_migrations() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS)


@pytest.mark.parametrize("timezone", ["UTC", "Pacific/Chatham", "America/St_Johns"])
def test_the_default_cron_expressions_that_status_does_not_parse_are_valid(timezone: str) -> None:
    for job in JOBS:
        assert _cron_trigger(getattr(ScheduleConfig(), job), timezone) is not None


@pytest.mark.parametrize(("store", "schedule", "problem"), [
    ("sqlite:///x.db", 'report = "0 7 * * FUNDAY"', "schedule: report: Invalid weekday name"),
    ("sqlite:///x.db", 'scan = "every day"', "schedule: scan: 'every day' is not a cron expression"),
    ("sqlite:///x.db", 'timezone = "Mars/Olympus"', "schedule: timezone: 'Mars/Olympus' is not an IANA time zone"),
    ("sqlite:///x.db", "lease_ttl = 0", "schedule.lease_ttl: Input should be greater than 0"),
    ("sqlite:///x.db", 'coalesce = "yes"', "schedule.coalesce: Input should be a valid boolean"),
    ("sqlite:///x.db", "wakeup = 1", "schedule.wakeup: unknown key"),
    ("mysql://u:hunter2@db/x", "", "store.url: the store works on SQLite and PostgreSQL, not 'mysql'"),
    ("hunter2", "", "store.url: not a database URL"),
    ("postgresql://u:hunter2@db:fivefour/x", "", "store.url: not a database URL: its port is not a number"),
    ("postgresql://u:hunter2@[::1/x", "", "store.url: not a database URL: its port is not a number"),
])
def test_status_refuses_what_the_loader_refuses_in_the_same_words(
    write_config: Callable[[str], Path], store: str, schedule: str, problem: str
) -> None:
    path = write_config(f'[store]\nurl = "{store}"\n[schedule]\n{schedule}\n{TENANT}')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    done = _status(path)
    assert done.exit_code == 2 and problem in str(refused.value)
    assert done.output == f"mailwarden: {refused.value}\n"
    assert "hunter2" not in done.output


def test_status_reads_only_the_store_and_schedule_tables(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()
    path = write_config(f'[store]\nurl = "{url}"\n[serve]\nlog_format = "xml"\n{TENANT}')
    with pytest.raises(ConfigError, match="serve.log_format"):
        load_config(path)
    done = _status(path)
    assert done.exit_code == 0 and "latest stored run: none" in done.output
    assert "[store] and [schedule]" in CliRunner().invoke(main, ["status", "--help"]).output


def test_a_missing_or_unreadable_store_is_one_clear_error(write_config: Callable[[str], Path],
                                                          tmp_path: Path) -> None:
    missing = _status(_write(write_config, f"sqlite:///{tmp_path / 'none.db'}"))
    assert missing.exit_code == 2
    assert missing.output == (f"mailwarden: no store at {tmp_path / 'none.db'}: run `mailwarden scan` first, or "
                              "point [store] url at the store\n")
    (tmp_path / "junk.db").write_bytes(b"not a database, " * 512)
    junk = _status(_write(write_config, f"sqlite:///{tmp_path / 'junk.db'}"))
    assert junk.exit_code == 2
    assert junk.output == f"mailwarden: cannot open the store at sqlite:///{tmp_path / 'junk.db'}: file is not a database\n"
    (tmp_path / "empty.db").write_bytes(b"")
    empty = _status(_write(write_config, f"sqlite:///{tmp_path / 'empty.db'}"))
    assert empty.exit_code == 2 and "no mailwarden store at" in empty.output
    closed = f"postgresql+psycopg://mailwarden:hunter2@127.0.0.1:{_closed_port()}/mailwarden?connect_timeout=2"
    refused = _status(_write(write_config, closed))
    assert refused.exit_code == 2 and refused.output.startswith("mailwarden: cannot open the store at ")
    assert "hunter2" not in refused.output and "Traceback" not in refused.output


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_password_with_a_slash_is_not_taken_for_a_port(write_config: Callable[[str], Path]) -> None:
    # SQLAlchemy reads the password up to the "@", slashes included; the port check splits the URL the same way.
    url = "postgresql://mailwarden:pa/ss:wd@db.example:5432/mailwarden"
    assert load_config(write_config(f'[store]\nurl = "{url}"\n{TENANT}')).store.url == url
