"""findings.json and findings.csv written by a second process, from its own connection to the store, while this
one renders report.html: the two largest outputs of a run take one core each."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reports.findings_files import write_findings_files
from scanner.errors import StoreError
from scanner.store.database import Store, sqlite_file

log = logging.getLogger(__name__)

PARENT_POLL = 0.2
"""Seconds between the second process's checks that the process that started it is still there."""


def start_method() -> str:
    """How the second process starts: ``fork`` (a copy of this process, started in milliseconds) when this process
    has no other thread, ``spawn`` (a fresh interpreter, about half a second of imports) otherwise. A thread (the
    scan lease's heartbeat, ``serve``'s workers) may hold a lock inside SQLite or libpq at the moment of a fork,
    and a copy would wait on it forever."""
    return "fork" if threading.active_count() == 1 else "spawn"


SPAWN_FROM = 20_000
"""Findings from which a spawned process pays for its start (about half a second of imports, where writing the
files costs about 25 microseconds a finding): smaller runs, such as ``serve``'s frequent ones, write the files
in this process. A forked process always pays."""


def worth_starting(store: Store, run_id: str) -> bool:
    """Whether a second process would finish the run's files sooner than this one (``SPAWN_FROM``)."""
    return start_method() == "fork" or sum(store.status_counts(run_id).values()) >= SPAWN_FROM


def reopenable(store: Store) -> str | None:
    """The URL another process can open this store by (a SQLite file or PostgreSQL), password included; None for a
    store only this process can see (SQLite in memory)."""
    if store.engine.dialect.name == "sqlite" and sqlite_file(store.engine) is None:
        return None
    return store.engine.url.render_as_string(hide_password=False)


class FilesProcess:
    """The second process writing a run's findings.json and findings.csv: started when made, then ``wait``, and
    ``stop`` in a ``finally``, so that no interruption leaves it running."""

    def __init__(self, url: str, run_id: str, json_path: Path | None, csv_path: Path | None) -> None:
        # A forked copy never touches this process's engine: it opens its own from the URL.
        context = multiprocessing.get_context(start_method())
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_write, args=(child_end, os.getpid()),
                                        name="mailwarden-findings-files", daemon=True)
        # Ctrl-C reaches the whole process group: this process decides, and stops the other if it must. SIGINT is
        # blocked while it starts (the mask is inherited, across exec too) until it has chosen to ignore it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            child_end.close()
        try:
            # The URL may carry the store's password: it goes over the pipe, never in argv or the environment.
            with contextlib.suppress(OSError):  # the process is gone already: ``wait`` says how it ended
                self._conn.send((url, run_id, json_path, csv_path))
            log.debug("findings files: process %d started", self._process.pid, extra={"pid": self._process.pid})
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        """The second process's id."""
        return self._process.pid

    def wait(self) -> int:
        """Wait for the files; returns how many findings they hold. The process's OSError (a full disk) is raised
        here as the same OSError, so the caller reports it as its own failed writes; a store that could not be
        read, or a process that died, raises FilesFailed."""
        wait([self._conn, self._process.sentinel])
        try:
            reply: tuple[Any, ...] | None = self._conn.recv() if self._conn.poll() else None
        except (EOFError, OSError):  # it died: the pipe was closed, or reset with the job unread
            reply = None
        self._process.join()
        if reply is None:
            code = self._process.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
            raise FilesFailed(f"their process {how}")
        kind, *details = reply
        if kind == "oserror":
            number, text, filename = details
            raise OSError(number, text, filename)
        if kind == "error":
            raise FilesFailed(details[0])
        pid, count = details
        log.debug("findings files: %d findings written by process %d", count, pid, extra={"pid": pid})
        return int(count)

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it (the files it leaves are in the caller's temporary
        folder, removed with it)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()


class FilesFailed(Exception):
    """The second process did not write the files, for a reason other than an OSError of its own (the message
    says which)."""


def _write(conn: Connection, parent: int) -> None:
    """The second process: read the job from the pipe, write the files, send back what happened."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    url, run_id, json_path, csv_path = conn.recv()
    try:
        store = Store(url, create=False)
        try:
            with store.iter_rows(run_id) as rows:
                count = write_findings_files(rows, json_path, csv_path)
        finally:
            store.close()
    except OSError as exc:
        conn.send(("oserror", exc.errno, exc.strerror or str(exc), exc.filename))
    except StoreError as exc:
        conn.send(("error", str(exc)))
    except sa.exc.SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        conn.send(("error", f"the store could not be read ({cause})"))
    else:
        conn.send(("done", os.getpid(), count))
    conn.close()


def _exit_without(parent: int) -> None:
    """Exit at once when the parent is gone (killed): its temporary folder is removed by the next run."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)
