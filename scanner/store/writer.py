"""A run's findings written to the store by a second process while the scan goes on judging.

Judging a large run and writing its rows take about as long as each other on one core (10,000 domains: 456,360
findings, about 11 s of SQL inserts); a scan's second core is idle meanwhile. With ``Store.recording(apart=True)``
the scan builds each page's rows as before and sends them down a pipe; this process writes them with the same
statements (``BATCHES``), in one transaction of its own, and commits only when the scan says the run is whole
(``finish``). A scan that stops or fails before then kills it: its transaction is rolled back, and nothing of the
run's findings is kept, as when one process records them.
"""

from __future__ import annotations

import contextlib
import marshal
import pickle
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import sqlalchemy as sa

from scanner.processes import as_child, how_it_ended, next_message, start_process, stop_process


class RecordingFailed(sa.exc.SQLAlchemyError):
    """The second process could not write the run's findings: the message is the store's own first line."""


class RecordingProcess:
    """The second process writing a recording's rows (started when made, ``stop`` in a ``finally``): called like
    ``Writes`` with each page's rows, then ``finish``."""

    def __init__(self, url: str) -> None:
        self._process, self._conn = start_process(_write, "mailwarden-recording")
        self._plain = url.startswith("sqlite")  # its rows hold no datetime (``_stamper``): they go by marshal
        try:
            # The URL may carry the store's password: it goes over the pipe, never in argv or the environment.
            with contextlib.suppress(OSError):  # gone already: the first rows say so
                self._conn.send(url)
        except BaseException:
            self.stop()
            raise

    def __call__(self, page: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        """Send a page's rows to be written (as ``Writes`` takes them), in one message: this process goes on
        judging while they are written, and waits only to send the next page before that one is taken. A process
        that failed already is raised as RecordingFailed."""
        if self._conn.poll():  # it only ever speaks first to say it failed
            raise self._failure()
        try:
            self._conn.send_bytes(encoded(page, plain=self._plain))
        except OSError:
            raise self._failure() from None

    def finish(self, run_id: str, now: datetime, complete: Sequence[str]) -> None:
        """Resolve and seal the run and commit (``_finish``), and wait for it: the run is recorded on return."""
        try:
            self._conn.send_bytes(encoded((run_id, now, list(complete))))
        except OSError:
            raise self._failure() from None
        reply = self._reply()
        if reply != ("done",):
            raise self._failure(reply)

    def stop(self) -> None:
        """Kill the process if it still runs (its transaction is rolled back), and reap it."""
        stop_process(self._process, self._conn)

    def _reply(self) -> tuple[Any, ...] | None:
        """The process's next message; None when it died without one."""
        return next_message(self._process, self._conn)  # type: ignore[no-any-return]

    def _failure(self, reply: tuple[Any, ...] | None = None) -> RecordingFailed:
        """Why the process did not write the rows: its own error, or how it ended."""
        reply = reply or self._reply()
        if reply is not None and reply[0] == "error":
            return RecordingFailed(reply[1])
        return RecordingFailed(f"the process writing the findings {how_it_ended(self._process)}")


def encoded(message: object, *, plain: bool = False) -> bytes:
    """A message for the process writing the rows: by marshal when it is ``plain`` data (strings, numbers, None,
    tuples and lists of them: a page of rows on SQLite), which writes a page in half the time pickle takes (the
    scan's own time, on every row); pickled otherwise (a datetime)."""
    if plain:
        with contextlib.suppress(ValueError):  # something marshal does not take: pickled after all
            return b"m" + marshal.dumps(message)
    return b"p" + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def decoded(data: bytes) -> object:
    """A message as ``encoded`` wrote it."""
    body = memoryview(data)[1:]
    return marshal.loads(body) if data[:1] == b"m" else pickle.loads(body)


def _write(conn: Connection, parent: int) -> None:
    """The second process: write each kind of row as it comes, in one transaction; commit at ``finish``."""
    as_child(parent)
    from scanner.store.database import Store, Writes

    url = conn.recv()
    try:
        store = Store(url, create=False)
        try:
            with store.engine.begin() as db:
                writes = Writes(db)
                while isinstance(message := decoded(conn.recv_bytes()), list):  # a page of rows; then the run
                    writes(message)
                writes.finish(*message)
        finally:
            store.close()
    except EOFError:
        return  # the scan is gone, or stopped it: the transaction was rolled back
    except sa.exc.SQLAlchemyError as exc:
        conn.send(("error", str(getattr(exc, "orig", None) or exc).splitlines()[0]))
    except Exception as exc:  # noqa: BLE001 - told to the scan, which fails the run with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("done",))
    conn.close()
