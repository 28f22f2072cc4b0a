"""``mailwarden serve``: scheduled scans and reports (APScheduler, its job store in the store's database) and the web app.

One process runs both: a BackgroundScheduler whose jobs (``scan``, ``report``) and their next run
times live in the store's database (``apscheduler_jobs``), and the web app under uvicorn: ``/healthz``
here, the remediation app (remediation/web.py ``build_app``) mounted at ``/`` when it is installed.

- A restart keeps the schedule: a job whose schedule is unchanged keeps its stored next run time, so a
  run missed while the process was down still starts when it comes back within ``misfire_grace_time``
  (several missed runs start once: ``coalesce``).
- Never two scans at once: the scan job has ``max_instances = 1`` (an overlapping trigger is skipped and
  logged), and every scan holds the store's scan lease (scanner/store/lease.py), which also keeps a
  ``mailwarden scan`` or a second process from overlapping it.
- SIGTERM or SIGINT: the web server stops, the scan in progress is cancelled and recorded
  ``interrupted``, the scheduler shuts down. After a kill -9, the next start marks the orphaned run
  (and its job record) ``failed``; what it had stored stays.
- One service per store: ``serve`` holds the store's service lease (scanner/store/lease.py) while it runs, so a
  second ``serve`` on the same store refuses to start, naming the other's host and process, and each trigger
  fires once; a dead holder's lease is taken over (at once on this host, after ``lease_ttl`` elsewhere). A
  port already in use is one line, before anything starts.
- Each job execution is recorded in ``job_runs`` (beside the store's tables, outside its migrations, as
  APScheduler's own table is): what ``/healthz`` and ``mailwarden status`` report as the last run.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor

from scanner.config import Config, load_config
from scanner.errors import MailwardenError
from scanner.sections import JOBS
from scanner.service.status import JOB_LOG, JOB_TABLE, describe, job_status, store_reader
from scanner.store.lease import ScanBusy, ServiceBusy, ServiceLease, process_exists, recover_orphans
from remediation.headers import SecurityHeaders
from scanner.store.database import RunRecord, Store

if TYPE_CHECKING:
    import uvicorn
    from apscheduler.events import JobEvent, JobExecutionEvent
    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler
    from starlette.applications import Starlette

    from scanner.model import Finding

# The web stack, the scheduler, the pipeline, mail and the DMARC import are imported where they are used.

log = logging.getLogger(__name__)

serve_metadata = sa.MetaData()

job_runs = sa.Table(
    JOB_LOG,
    serve_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(32), nullable=False),
    sa.Column("started", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("state", sa.String(16), nullable=False),  # running, complete, partial, failed, interrupted, skipped
    sa.Column("run_id", sa.String(40)),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("figures", sa.JSON, nullable=False),
    sa.Index("ix_job_runs_job_started", "job", "started"),
)
"""One row per job execution (or skipped trigger), with its figures."""

def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# logging


_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's structured extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    """Log to stderr, as text lines or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


# the job log


def ensure_tables(store: Store) -> None:
    """Create the job log when the database lacks it (a process creating it meanwhile is no error)."""
    try:
        serve_metadata.create_all(store.engine, checkfirst=True)
    except sa.exc.DatabaseError:
        with store.engine.connect() as conn:
            if not sa.inspect(conn).has_table(job_runs.name):
                raise


def _begin_job(store: Store, job: str, started: datetime) -> int:
    with store.engine.begin() as conn:
        result = conn.execute(sa.insert(job_runs).values(
            job=job, started=started, state="running", host=socket.gethostname(), pid=os.getpid(), figures={},
        ))
        return int(result.inserted_primary_key[0])


def _end_job(store: Store, row_id: int, state: str, figures: dict[str, Any]) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.update(job_runs).where(job_runs.c.id == row_id).values(
            finished=datetime.now(UTC), state=state, run_id=figures.get("run_id"), figures=figures,
        ))


def recover_jobs(store: Store) -> list[int]:
    """Mark job records left ``running`` by a process of this host that is gone as failed; returns their ids."""
    ensure_tables(store)
    here = socket.gethostname()
    with store.engine.begin() as conn:
        rows = conn.execute(sa.select(job_runs.c.id, job_runs.c.host, job_runs.c.pid)
                            .where(job_runs.c.state == "running")).all()
        gone = [r.id for r in rows if r.host == here and (r.pid == os.getpid() or not process_exists(r.pid))]
        if gone:
            conn.execute(sa.update(job_runs).where(job_runs.c.id.in_(gone)).values(
                state="failed", finished=datetime.now(UTC),
                figures={"problem": "orphaned: its process stopped without finishing"},
            ))
    return gone


# the jobs


def scan_figures(run: RunRecord, findings: Sequence[Finding], seconds: float) -> dict[str, Any]:
    """A finished scan's figures for the log and the job record."""
    tenants = run.scope.get("tenants", {})
    states = Counter(t.get("state") for t in tenants.values())
    return {
        "run_id": run.id,
        "state": run.state,
        "tenants": {s: states.get(s, 0) for s in ("complete", "partial", "failed")},
        "mailboxes": sum(int(t.get("mailboxes", 0)) for t in tenants.values()),
        "domains": sum(int(t.get("domains", 0)) for t in tenants.values()),
        "findings": dict(sorted(Counter(f.status.value for f in findings).items())),
        "duration": round(seconds, 3),
    }


def execute_scan(config: Config, store: Store, stop: threading.Event | None = None) -> tuple[str, dict[str, Any]]:
    """Run one scheduled scan; returns its state and figures (never raises for a scan that went wrong)."""
    from scanner.pipeline import ScanFailed, ScanInterrupted, run_scan

    clock = time.monotonic()
    try:
        result = run_scan(config, config.resolve_path(config.schedule.out), store=store, stop=stop)
    except ScanBusy as exc:
        return "skipped", {"state": "skipped", "problem": str(exc), "duration": round(time.monotonic() - clock, 3)}
    except ScanInterrupted as exc:
        return "interrupted", {"state": "interrupted", "run_id": exc.run_id, "problem": str(exc),
                               "duration": round(time.monotonic() - clock, 3)}
    except ScanFailed as exc:  # a full disk or a store error: the line says which path and what to do
        return "failed", {"state": "failed", "problem": str(exc), "duration": round(time.monotonic() - clock, 3)}
    except Exception as exc:  # noqa: BLE001 - the scheduler goes on; the record and the log say why
        log.exception("scan failed")
        return "failed", {"state": "failed", "problem": f"{type(exc).__name__}: {exc}",
                          "duration": round(time.monotonic() - clock, 3)}
    figures = scan_figures(result.run, result.findings, time.monotonic() - clock)
    return result.run.state, figures


def execute_report(config: Config, store: Store) -> tuple[str, dict[str, Any]]:
    """Email the latest finished run to every list; returns its state and figures."""
    from reports.mail import send_reports

    clock = time.monotonic()
    finished = [r for r in store.runs() if r.state in ("complete", "partial")]
    if config.email is None:
        return "failed", {"state": "failed", "problem": "there is no [email] table", "duration": 0.0}
    if not finished:
        return "failed", {"state": "failed", "problem": "the store holds no finished run yet", "duration": 0.0}
    run = finished[-1]
    try:
        outcomes = list(send_reports(store, run.id, config))
    except Exception as exc:  # noqa: BLE001 - a bad password reference or template must not stop the scheduler
        log.exception("report failed")
        return "failed", {"state": "failed", "run_id": run.id, "problem": f"{type(exc).__name__}: {exc}",
                          "duration": round(time.monotonic() - clock, 3)}
    sent = [o.list_name for o in outcomes if o.delivered]
    missed = [o.line for o in outcomes if not o.delivered]
    state = "complete" if not missed else ("partial" if sent else "failed")
    figures: dict[str, Any] = {"run_id": run.id, "state": state, "sent": len(sent), "not_sent": len(missed),
                               "lists": sent, "duration": round(time.monotonic() - clock, 3)}
    if missed:
        figures["problems"] = missed
    return state, figures


def execute_dmarc_import(config: Config, store: Store) -> tuple[str, dict[str, Any]]:
    """Import DMARC aggregate reports from the configured folders and mailbox; returns its state and figures."""
    from scanner.aggregate.importer import run_import

    clock = time.monotonic()
    try:
        result = run_import(store, config)
    except Exception as exc:  # noqa: BLE001 - the scheduler goes on; the record and the log say why
        log.exception("dmarc import failed")
        return "failed", {"state": "failed", "problem": f"{type(exc).__name__}: {exc}",
                          "duration": round(time.monotonic() - clock, 3)}
    state = "complete" if not result.problems else ("partial" if result.read > len(result.problems) else "failed")
    figures: dict[str, Any] = {"state": state, "read": result.read, "stored": result.stored,
                               "skipped": result.skipped, "not_read": len(result.problems),
                               "duration": round(time.monotonic() - clock, 3)}
    if result.problems:
        figures["problems"] = [f"{name}: {reason}" for name, reason in result.problems[:20]]
    return state, figures


def run_job(job: str, config_path: str, stop: threading.Event | None = None) -> None:
    """One execution of a scheduled job (``scan`` or ``report``): reads the config afresh, logs start and end."""
    try:
        config = load_config(Path(config_path))
        store = Store(config.store.url)
    except MailwardenError as exc:  # an edited config that no longer loads: said once per trigger, never a crash
        log.error("job %s not started: %s", job, exc, extra={"event": "job.end", "job": job, "state": "failed",
                                                              "problem": str(exc)})
        return
    try:
        ensure_tables(store)
        row_id = _begin_job(store, job, datetime.now(UTC))
        log.info("job %s started", job, extra={"event": "job.start", "job": job})
        if job == "scan":
            state, figures = execute_scan(config, store, stop)
        elif job == "dmarc_import":
            state, figures = execute_dmarc_import(config, store)
        else:
            state, figures = execute_report(config, store)
        _end_job(store, row_id, state, figures)
        level = logging.INFO if state in ("complete", "partial") else logging.WARNING
        log.log(level, "%s", describe(job, figures), extra={"event": "job.end", "job": job, **figures})
    finally:
        store.close()


class _StoppableExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """The thread pool that hands each job this process's stop event (jobs are stored without it)."""

    def __init__(self, stop: threading.Event, max_workers: int = 2) -> None:
        super().__init__(max_workers)
        self.stop = stop

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        bound = copy.copy(job)
        bound._scheduler, bound._jobstore_alias = job._scheduler, job._jobstore_alias  # not part of a copy's state
        bound.kwargs = {**job.kwargs, "stop": self.stop}
        super()._do_submit_job(bound, run_times)


def job_signature(job: str, config: Config) -> str:
    """What identifies a job's schedule: a stored job with the same signature keeps its next run time."""
    return f"{job}: {getattr(config.schedule, job).strip()} ({config.schedule.timezone})"


def build_scheduler(config: Config, stop: threading.Event) -> BackgroundScheduler:
    """The scheduler, its jobs stored in the store's database; not started."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    schedule = config.schedule
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=config.store.url, tablename=JOB_TABLE)},
        executors={"default": _StoppableExecutor(stop)},
        job_defaults={"coalesce": schedule.coalesce, "misfire_grace_time": schedule.misfire_grace_time,
                      "max_instances": 1},
        timezone=schedule.timezone,
    )
    scheduler.add_listener(_on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    return scheduler


def _on_skipped(event: JobEvent | JobExecutionEvent) -> None:
    if event.code == EVENT_JOB_MAX_INSTANCES:
        log.warning("job %s skipped: the previous run is still going", event.job_id,
                    extra={"event": "job.skipped", "job": event.job_id, "reason": "still running"})
    else:
        log.warning("job %s missed its run time %s (beyond misfire_grace_time)", event.job_id,
                    getattr(event, "scheduled_run_time", ""),
                    extra={"event": "job.missed", "job": event.job_id})


def sync_jobs(scheduler: BackgroundScheduler, config: Config, config_path: Path) -> None:
    """Make the stored jobs match the config; an unchanged job keeps its stored next run time."""
    args = (str(config_path.resolve()),)
    for job in JOBS:
        trigger = config.schedule.trigger(job)
        if job == "report" and trigger is not None and config.email is None:
            log.warning("no [email] table: the weekly report is not scheduled")
            trigger = None
        if job == "dmarc_import" and config.dmarc_reports is None:
            trigger = None  # nothing to import from
        existing = scheduler.get_job(job)
        if trigger is None:
            if existing is not None:
                scheduler.remove_job(job)
            continue
        signature = job_signature(job, config)
        if existing is not None and existing.name == signature and tuple(existing.args) == (job, *args):
            if (existing.misfire_grace_time, existing.coalesce) != (config.schedule.misfire_grace_time,
                                                                    config.schedule.coalesce):
                existing.modify(misfire_grace_time=config.schedule.misfire_grace_time, coalesce=config.schedule.coalesce)
            log.info("job %s kept: next run %s", job, _iso(_utc(existing.next_run_time)))
            continue
        added = scheduler.add_job(f"{__name__}:run_job", trigger, args=(job, *args), id=job, name=signature,
                                  replace_existing=True)
        log.info("job %s scheduled (%s): next run %s", job, signature, _iso(_utc(added.next_run_time)))


# the web app


def remediation_app(config: Config) -> Any | None:
    """The remediation web app (remediation/web.py ``build_app``), or None when links are not configured."""
    if not config.remediation.links:
        log.info("remediation links are not configured ([remediation] base_url and secret): serving /healthz only",
                 extra={"event": "serve.no_remediation"})
        return None
    try:
        module = importlib.import_module("remediation.web")
    except ModuleNotFoundError as exc:
        if exc.name in ("remediation.web", "remediation"):
            return None
        raise
    build: Callable[..., Any] | None = getattr(module, "build_app", None)
    return None if build is None else build(config, store_url=config.store.url)


def _status(config: Config, store: Store) -> dict[str, Any]:
    """The status /healthz reports, read over a connection of the service's store."""
    with store_reader(store) as reader:
        return job_status(config.schedule, reader)


def build_serve_app(config: Config, config_path: Path, stop: threading.Event) -> Starlette:
    """The Starlette app: ``/healthz``, the remediation app at ``/``, and the scheduler in its lifespan."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    store = Store(config.store.url)
    ensure_tables(store)
    sub = remediation_app(config)

    async def healthz(request: Request) -> JSONResponse:
        status = await asyncio.to_thread(_status, config, store)
        running = bool(request.app.state.scheduler.running)
        return JSONResponse({"status": "ok" if running else "stopping", **status}, status_code=200 if running else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        recover_orphans(store, config.schedule.lease_ttl)
        recover_jobs(store)
        scheduler = build_scheduler(config, stop)
        scheduler.start(paused=True)
        sync_jobs(scheduler, config, config_path)
        scheduler.resume()
        app.state.scheduler = scheduler
        log.info("scheduler started", extra={"event": "serve.start", "pid": os.getpid()})
        try:
            if sub is not None and hasattr(sub, "router"):
                async with sub.router.lifespan_context(sub):
                    yield
            else:
                yield
        finally:
            stop.set()
            log.info("stopping: a scan in progress is interrupted", extra={"event": "serve.stop"})
            await asyncio.to_thread(scheduler.shutdown, True)
            store.close()
            log.info("stopped", extra={"event": "serve.stopped"})

    routes: list[Any] = [Route("/healthz", healthz)]
    if sub is not None:
        routes.append(Mount("/", app=sub))
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for the app, with every response's security headers and proxy headers off.

    uvicorn's ``proxy_headers`` would replace the connection's address with one taken from
    ``X-Forwarded-For`` whenever the peer is in ``FORWARDED_ALLOW_IPS`` (an environment variable some
    container images set to ``*``): the remediation app decides who is a trusted proxy from the TCP peer
    itself, so nothing a client sends may rewrite it.
    """
    import uvicorn

    return uvicorn.Config(SecurityHeaders(app), host=host, port=port, proxy_headers=False, forwarded_allow_ips="",
                          **{"log_config": None, "access_log": False, "lifespan": "on", **options})


def serve(config_path: Path, *, host: str | None = None, port: int | None = None, log_format: str | None = None) -> None:
    """Run the scheduler and the web app until SIGTERM or SIGINT, holding the store's service lease throughout."""
    import uvicorn

    config = load_config(config_path)
    configure_logging(log_format or config.serve.log_format)
    where = (host or config.serve.host, config.serve.port if port is None else port)
    store = Store(config.store.url)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: turn it into an exception here, so the
    # service lease is given back, then end by the signal as before.
    stopped = _catch_sigterm()
    try:
        with ServiceLease(store, ttl=config.schedule.lease_ttl):
            try:
                listening = socket.create_server(where)
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ServiceBusy(f"the web app cannot listen on {where[0]}:{where[1]}: {why}; stop what uses it, "
                                  "or choose another port with --port or [serve] port") from None
            with listening:
                stop = threading.Event()
                app = build_serve_app(config, config_path, stop)
                bound = listening.getsockname()[:2]
                log.info("serving on http://%s:%s", *bound,
                         extra={"event": "serve.listen", "host": bound[0], "port": bound[1]})
                server = uvicorn.Server(server_config(app, bound[0], bound[1]))
                server.run(sockets=[listening])
                if not server.started:
                    raise MailwardenError(f"the web app could not start on {where[0]}:{where[1]} (see the log above)")
    except _Terminated:
        store.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    finally:
        store.close()
        if stopped is not None:
            signal.signal(signal.SIGTERM, stopped)


class _Terminated(BaseException):
    """SIGTERM arrived (re-raised by uvicorn after its graceful shutdown)."""


def _catch_sigterm() -> Any:
    """Make SIGTERM raise _Terminated; returns the previous handler (None when not on the main thread)."""
    def terminated(signum: int, frame: object) -> None:
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, terminated)
    except ValueError:
        return None
