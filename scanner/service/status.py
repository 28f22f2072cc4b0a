"""What ``mailwarden status`` and ``/healthz`` report: each scheduled job's schedule, next and last run, the latest
stored run and who holds the leases, read with plain SQL over a DB-API connection to the store.

``mailwarden status`` reads a SQLite store through the standard library's sqlite3, opened read-only, so it
starts without SQLAlchemy; a PostgreSQL store, a SQLite URL with options, or a store whose schema is not this
version's is opened the way every other command opens it (scanner/store/database.py ``Store``, which
migrates an older store and refuses a newer one), and the same SQL runs over that connection.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.errors import StoreError
from scanner.sections import JOBS, ScheduleConfig, Sections, sqlite_path
from scanner.store.plain import (
    BUSY_TIMEOUT,
    SCAN,
    SCAN_LEASE,
    SCHEMA_VERSION,
    SERVICE,
    SERVICE_LEASE,
    Holder,
    process_exists,
)

if TYPE_CHECKING:
    from scanner.store.database import Store

JOB_TABLE = "apscheduler_jobs"
"""APScheduler's job table in the store's database (``mailwarden serve`` keeps its jobs there)."""
JOB_LOG = "job_runs"
"""One row per job execution, written by ``mailwarden serve`` (scanner/service/serve.py)."""

_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
}

# Each job's latest execution: the newest start, the highest id among equal starts.
_LAST_JOB_RUNS = f"""
SELECT job, state, started, finished, run_id, host, pid, figures FROM (
    SELECT job, state, started, finished, run_id, host, pid, figures,
           ROW_NUMBER() OVER (PARTITION BY job ORDER BY started DESC, id DESC) AS newest
    FROM {JOB_LOG}
) AS ranked WHERE newest = 1
"""


@dataclass(frozen=True, slots=True)
class Reader:
    """A DB-API connection to the store and its dialect (``sqlite`` or ``postgresql``)."""

    connection: Any
    dialect: str

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row a query returns (the queries here take no parameters)."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def tables(self) -> set[str]:
        """The names of the store's tables."""
        return {name for (name,) in self.rows(_TABLES[self.dialect])}


@contextmanager
def store_reader(store: Store) -> Iterator[Reader]:
    """A connection from the store's own pool, as a Reader."""
    connection = store.engine.raw_connection()
    try:
        yield Reader(connection, store.engine.dialect.name)
    finally:
        connection.close()


def _moment(value: datetime | str | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives text, naive UTC; PostgreSQL an aware datetime)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _json(value: Any) -> Any:
    """A stored JSON column (SQLite gives its text, psycopg the decoded value)."""
    return json.loads(value) if isinstance(value, str) else value


def next_run_times(reader: Reader, tables: set[str] | None = None) -> dict[str, datetime | None]:
    """Each stored job's next run time (None while paused), read from APScheduler's table; {} before any serve."""
    if JOB_TABLE not in (reader.tables() if tables is None else tables):
        return {}
    rows = reader.rows(f"SELECT id, next_run_time FROM {JOB_TABLE}")
    return {job: datetime.fromtimestamp(when, UTC) if when is not None else None for job, when in rows}


def _process_alive(host: str, pid: int) -> bool | None:
    """Whether a process recorded as running still exists: None when it ran on another host (not knowable here)."""
    return process_exists(pid) if host == socket.gethostname() else None


def _last_runs(reader: Reader) -> dict[str, dict[str, Any]]:
    """Each job's latest execution from the job log, as status reports it."""
    last: dict[str, dict[str, Any]] = {}
    for job, state, started, finished, run_id, host, pid, figures in reader.rows(_LAST_JOB_RUNS):
        entry = {"state": state, "started": _iso(_moment(started)), "finished": _iso(_moment(finished)),
                 "run_id": run_id, "figures": _json(figures)}
        if state == "running":
            entry["process"] = {"host": host, "pid": pid, "alive": _process_alive(host, pid)}
        last[job] = entry
    return last


def _holder(reader: Reader, table: str, name: str) -> Holder | None:
    """Who holds a lease (alive or not), or None; the service lease names no run."""
    run = "run_id" if table == SCAN_LEASE else "''"
    rows = reader.rows(f"SELECT {run}, host, pid, acquired, heartbeat FROM {table} WHERE name = '{name}'")
    if not rows:
        return None
    run_id, host, pid, acquired, heartbeat = rows[0]
    return Holder(run_id, host, int(pid), _moment(acquired), _moment(heartbeat))  # type: ignore[arg-type]


def job_status(schedule: ScheduleConfig, reader: Reader) -> dict[str, Any]:
    """Per job: its schedule, next run time and last run (state and figures); the latest stored run; the leases.

    Reads only: a store no ``serve`` has run on has no job log yet, which reads as no runs. A job or scan
    still marked running says whether its process is alive."""
    tables = reader.tables()
    upcoming = next_run_times(reader, tables)
    last = _last_runs(reader) if JOB_LOG in tables else {}
    jobs = {job: {
        "schedule": getattr(schedule, job).strip() or None,
        "timezone": schedule.timezone,
        "scheduled": job in upcoming,
        "next_run": _iso(upcoming.get(job)),
        "last": last.get(job),
    } for job in JOBS}
    latest = reader.rows("SELECT id, state, started, finished FROM runs ORDER BY started DESC, id DESC LIMIT 1")
    holder = _holder(reader, SCAN_LEASE, SCAN) if SCAN_LEASE in tables else None
    service = _holder(reader, SERVICE_LEASE, SERVICE) if SERVICE_LEASE in tables else None
    now, ttl = datetime.now(UTC), schedule.lease_ttl
    return {
        "jobs": jobs,
        "latest_run": None if not latest else {
            "id": latest[0][0], "state": latest[0][1], "started": _iso(_moment(latest[0][2])),
            "finished": _iso(_moment(latest[0][3])),
        },
        "scan_running": None if holder is None else {"run_id": holder.run_id, "host": holder.host, "pid": holder.pid,
                                                     "heartbeat": _iso(holder.heartbeat),
                                                     "alive": holder.alive(now, ttl)},
        "service": None if service is None else {"host": service.host, "pid": service.pid,
                                                 "heartbeat": _iso(service.heartbeat),
                                                 "alive": service.alive(now, ttl)},
    }


def read_status(sections: Sections) -> dict[str, Any]:
    """The status of the store a config names, read only; raises StoreError when there is no store to read."""
    path = sqlite_path(sections.store.url)
    connection = _read_only(path, sections.store.url) if path is not None else None
    if connection is None:
        return _status_through_store(sections)
    with closing(connection):
        try:
            return job_status(sections.schedule, Reader(connection, "sqlite"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store at {sections.store.url}: {exc}") from None


def _read_only(path: Path, url: str) -> sqlite3.Connection | None:
    """The SQLite store opened read-only; None when its schema is another version's (the store opens it then)."""
    if not path.is_file():
        raise StoreError(f"no store at {path}: run `mailwarden scan` first, or point [store] url at the store")
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store at {url}: {exc}") from None
    try:
        reader = Reader(connection, "sqlite")
        found = reader.rows("SELECT value FROM mw_meta WHERE key = 'schema_version'") \
            if "mw_meta" in reader.tables() else []
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(f"cannot open the store at {url}: {exc}") from None
    version = int(found[0][0] or 0) if found else 0
    if version == 0:
        connection.close()
        raise StoreError(f"no mailwarden store at {url}: run `mailwarden scan` first, or point [store] url at the store")
    if version != SCHEMA_VERSION:
        connection.close()
        return None
    return connection


def _status_through_store(sections: Sections) -> dict[str, Any]:
    """The status read through SQLAlchemy's ``Store``, as every other command opens the store."""
    from scanner.store.database import Store

    store = Store(sections.store.url, create=False)
    try:
        with store_reader(store) as reader:
            return job_status(sections.schedule, reader)
    finally:
        store.close()


def describe(job: str, figures: dict[str, Any]) -> str:
    """A job execution's figures as words, for the text log and status."""
    if "problem" in figures:
        return f"job {job} {figures.get('state', 'failed')}: {figures['problem']}"
    if job == "scan":
        t, f = figures["tenants"], figures["findings"]
        counts = ", ".join(f"{n} {s}" for s, n in f.items()) or "none"
        return (f"job scan ended: run {figures['run_id']} {figures['state']}; tenants {t['complete']} complete, "
                f"{t['partial']} partial, {t['failed']} failed; {figures['mailboxes']} mailboxes, "
                f"{figures['domains']} domains; findings {counts}; {figures['duration']} s")
    if job == "dmarc_import":
        return (f"job dmarc_import ended: {figures['state']}; {figures['read']} files or messages read, "
                f"{figures['stored']} reports stored, {figures['skipped']} already stored, "
                f"{figures['not_read']} not read; {figures['duration']} s")
    return (f"job report ended: run {figures.get('run_id')} {figures['state']}; {figures.get('sent', 0)} list(s) "
            f"sent, {figures.get('not_sent', 0)} not sent; {figures['duration']} s")


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status as lines for the terminal."""
    lines = []
    for job, entry in status["jobs"].items():
        when = entry["next_run"] or ("not scheduled" if not entry["scheduled"] else "paused")
        lines.append(f"{job}: schedule {entry['schedule'] or '-'} ({entry['timezone']}), next run {when}")
        last = entry["last"]
        if last is None:
            lines.append("  last run: never")
        else:
            lines.append(f"  last run: {last['state']}, started {last['started']}, finished {last['finished'] or '-'}"
                         + (f", run {last['run_id']}" if last["run_id"] else ""))
            process = last.get("process")
            if process is not None and process["alive"] is False:
                lines.append(f"  its process {process['pid']} on {process['host']} is gone: it stopped without "
                             "finishing (the next serve start records it failed)")
            if last["figures"]:
                lines.append(f"  {describe(job, {'state': last['state'], **last['figures']})}"
                             if "duration" in last["figures"] or "problem" in last["figures"]
                             else f"  {json.dumps(last['figures'])}")
    latest = status["latest_run"]
    scan = status["scan_running"]
    dead = scan is not None and not scan["alive"]
    state = "none" if latest is None else f"{latest['id']} {latest['state']}"
    if latest is not None and latest["state"] == "running" and (scan is None or dead or scan["run_id"] != latest["id"]):
        state += " (its process is gone: the next scan records it failed)"
    lines.append("latest stored run: " + state)
    if scan is not None and not dead:
        lines.append(f"scan running: run {scan['run_id']} (process {scan['pid']} on {scan['host']}, "
                     f"heartbeat {scan['heartbeat']})")
    elif scan is not None:
        lines.append(f"no scan running: run {scan['run_id']} stopped without finishing (process {scan['pid']} on "
                     f"{scan['host']} is gone, last heartbeat {scan['heartbeat']}); the next scan records it failed")
    service = status.get("service")
    if service is not None:
        lines.append(f"serve: process {service['pid']} on {service['host']}, heartbeat {service['heartbeat']}"
                     + ("" if service["alive"] else " (gone: the next serve takes its lease over)"))
    return lines
