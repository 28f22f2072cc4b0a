"""The scan lease: at most one scan at a time per store, across processes, and recovery of orphaned runs.

A scan holds the lease (one row of ``scan_lease`` in the store's database) from before its run starts
until it ends, and refreshes its heartbeat while it runs. Taking the lease is one insert on the row's
primary key, so two processes racing for it cannot both win. A holder is orphaned when its heartbeat is
older than the lease's time to live, or when it ran on this host under a process id that is gone (a
kill -9, a crash, a power cut): the next scan (or ``mailwarden serve`` when it starts) marks the run it
held ``failed`` and takes over. Nothing the orphaned run already stored is removed.

The table is created on first use beside the store's own tables, outside its migrations (the same way
APScheduler keeps its job table there): it holds at most one row, never history.

``mailwarden serve`` holds a second, per-store lease the same way (``service_lease``) for as long as it runs,
so each scheduled trigger fires in one process: a second ``serve`` on the same store refuses to start,
naming the holder's host and process; a holder whose heartbeat is older than the TTL (or whose process on
this host is gone) is taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scanner.errors import RunFailed
from scanner.store.database import Store, runs
from scanner.store.plain import SCAN, SCAN_LEASE, SERVICE, SERVICE_LEASE, Holder, process_exists

log = logging.getLogger(__name__)

lease_metadata = sa.MetaData()

scan_lease = sa.Table(
    SCAN_LEASE,
    lease_metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
)

service_lease = sa.Table(
    SERVICE_LEASE,
    lease_metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
)

class ScanBusy(RunFailed):
    """Another scan holds the lease and is alive."""


class ServiceBusy(RunFailed):
    """Another ``serve`` holds the store's service lease and is alive (or the web app's port is taken)."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _holder(row: Any) -> Holder:
    return Holder(row.run_id, row.host, int(row.pid), _utc(row.acquired), _utc(row.heartbeat))


def ensure_lease_table(store: Store) -> None:
    """Create the lease tables when the database lacks them (a process creating them meanwhile is no error)."""
    try:
        lease_metadata.create_all(store.engine, checkfirst=True)
    except sa.exc.DatabaseError:
        with store.engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not all(inspector.has_table(t.name) for t in lease_metadata.sorted_tables):
                raise


def current_holder(store: Store) -> Holder | None:
    """Who holds the scan lease now (alive or not), or None; reads only (no table: no holder)."""
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(scan_lease.name):
            return None
        row = conn.execute(sa.select(scan_lease).where(scan_lease.c.name == SCAN)).one_or_none()
    return _holder(row) if row is not None else None


def service_holder(store: Store) -> Holder | None:
    """Who holds the service lease (a running ``serve``, alive or not), or None; reads only."""
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(service_lease.name):
            return None
        row = conn.execute(sa.select(service_lease).where(service_lease.c.name == SERVICE)).one_or_none()
    if row is None:
        return None
    return Holder("", row.host, int(row.pid), _utc(row.acquired), _utc(row.heartbeat))


class ServiceLease:
    """Hold the store's service lease while ``serve`` runs, refreshing its heartbeat from a background thread."""

    def __init__(self, store: Store, *, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def acquire(self) -> None:
        """Take the lease, taking over a stale holder; raises ServiceBusy naming a live one's host and process."""
        ensure_lease_table(self.store)
        now = datetime.now(UTC)
        holder = service_holder(self.store)
        try:
            with self.store.engine.begin() as conn:
                if holder is not None:
                    if not holder.orphaned(now, self.ttl):
                        raise ServiceBusy(self._busy(holder))
                    # Only the stale row as it was read: a process that took it over meanwhile keeps it.
                    conn.execute(sa.delete(service_lease).where(
                        service_lease.c.name == SERVICE, service_lease.c.host == holder.host,
                        service_lease.c.pid == holder.pid, service_lease.c.heartbeat == holder.heartbeat))
                    log.warning("took over the service lease of process %s on %s (last heartbeat %s)", holder.pid,
                                holder.host, holder.heartbeat, extra={"event": "serve.takeover"})
                conn.execute(sa.insert(service_lease).values(
                    name=SERVICE, host=socket.gethostname(), pid=self._pid, acquired=now, heartbeat=now))
        except sa.exc.IntegrityError:
            other = service_holder(self.store)
            raise ServiceBusy(self._busy(other)) from None
        self._thread = threading.Thread(target=self._beat, name="service-lease", daemon=True)
        self._thread.start()

    def _busy(self, holder: Holder | None) -> str:
        who = (f"process {holder.pid} on {holder.host} (heartbeat {holder.heartbeat:%Y-%m-%d %H:%M:%S}Z)"
               if holder is not None else "another process")
        return (f"another mailwarden serve is running on this store: {who}; stop it first (a dead one's lease "
                f"is taken over once its heartbeat is {self.ttl:g} s old)")

    def _beat(self) -> None:
        interval = max(0.5, min(30.0, self.ttl / 4))
        while not self._stop.wait(interval):
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(sa.update(service_lease).where(
                        service_lease.c.name == SERVICE, service_lease.c.pid == self._pid,
                        service_lease.c.host == socket.gethostname(),
                    ).values(heartbeat=datetime.now(UTC)))
            except sa.exc.SQLAlchemyError as exc:  # a blip in the database must not end the service
                log.warning("service lease heartbeat failed: %s", exc)

    def release(self) -> None:
        """Stop the heartbeat and give the lease back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.delete(service_lease).where(
                    service_lease.c.name == SERVICE, service_lease.c.pid == self._pid,
                    service_lease.c.host == socket.gethostname()))
        except sa.exc.SQLAlchemyError as exc:
            log.error("the service lease could not be released: %s", exc)

    def __enter__(self) -> ServiceLease:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _fail_orphan(conn: Connection, run_id: str, now: datetime, why: str) -> bool:
    """Mark a run that was still ``running`` as failed; True when it was."""
    done = conn.execute(
        sa.update(runs).where(runs.c.id == run_id, runs.c.state == "running")
        .values(state="failed", finished=now, scope={"problem": why})
    ).rowcount
    return bool(done)


def recover_orphans(store: Store, ttl: float, now: datetime | None = None) -> list[str]:
    """Mark every ``running`` run whose process is gone as failed and drop its lease; returns their ids.

    A run is left alone while a live holder has the lease for it. A ``running`` run without any lease
    (its process died before this table existed, or it was started without one) is orphaned as well.
    """
    ensure_lease_table(store)
    now = datetime.now(UTC) if now is None else now
    recovered: list[str] = []
    with store.engine.begin() as conn:
        row = conn.execute(sa.select(scan_lease).where(scan_lease.c.name == SCAN).with_for_update()).one_or_none()
        holder = _holder(row) if row is not None else None
        alive = holder is not None and not holder.orphaned(now, ttl)
        if holder is not None and not alive:
            conn.execute(sa.delete(scan_lease).where(scan_lease.c.name == SCAN))
        running = conn.execute(sa.select(runs.c.id).where(runs.c.state == "running").order_by(runs.c.started)).scalars()
        for run_id in list(running):
            if alive and holder is not None and holder.run_id == run_id:
                continue
            why = (
                f"orphaned: its process stopped without finishing ({holder.describe()})"
                if holder is not None and holder.run_id == run_id
                else "orphaned: its process stopped without finishing"
            )
            if _fail_orphan(conn, run_id, now, why):
                recovered.append(run_id)
    for run_id in recovered:
        log.warning("run %s was orphaned (its process stopped mid-scan): marked failed", run_id,
                    extra={"event": "run.orphaned", "run_id": run_id})
    return recovered


class Lease:
    """Hold the scan lease for one run, refreshing its heartbeat from a background thread."""

    def __init__(self, store: Store, run_id: str, *, ttl: float) -> None:
        self.store = store
        self.run_id = run_id
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, after recovering an orphaned holder; raises ScanBusy when a live scan holds it."""
        ensure_lease_table(self.store)
        now = datetime.now(UTC)
        recover_orphans(self.store, self.ttl, now)
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.insert(scan_lease).values(
                    name=SCAN, run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(), acquired=now,
                    heartbeat=now,
                ))
        except sa.exc.IntegrityError:
            holder = current_holder(self.store)
            what = holder.describe() if holder is not None else "another scan"
            raise ScanBusy(f"another scan is running: {what}; this one was not started") from None
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(0.5, min(30.0, self.ttl / 4))
        while not self._stop.wait(interval):
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(sa.update(scan_lease).where(
                        scan_lease.c.name == SCAN, scan_lease.c.run_id == self.run_id
                    ).values(heartbeat=datetime.now(UTC)))
            except sa.exc.SQLAlchemyError as exc:  # a blip in the database must not end the scan
                log.warning("scan lease heartbeat failed: %s", exc, extra={"run_id": self.run_id})

    def release(self) -> None:
        """Stop the heartbeat and give the lease back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.delete(scan_lease).where(scan_lease.c.name == SCAN, scan_lease.c.run_id == self.run_id))
        except sa.exc.SQLAlchemyError as exc:  # a full disk: this process is ending, so the next scan recovers it
            log.warning("the scan lease could not be released: %s", exc, extra={"run_id": self.run_id})

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
