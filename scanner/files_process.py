"""findings.json and findings.csv written by a second process, from its own connection to the store, while this
one renders report.html: the two largest outputs of a run take one core each."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reports.findings_files import join_findings_files, write_findings_files
from scanner.errors import StoreError
from scanner.processes import as_child, how_it_ended, next_message, start_method, start_process, stop_process
from scanner.store.database import Store

log = logging.getLogger(__name__)

SPAWN_FROM = 20_000
"""Findings from which a spawned process pays for its start (about half a second of imports, where writing the
files costs about 25 microseconds a finding): smaller runs, such as ``serve``'s frequent ones, write the files
in this process. A forked process always pays."""


def worth_starting(findings: int) -> bool:
    """Whether a second process would finish the files of a run of this many findings sooner than this one
    (``SPAWN_FROM``)."""
    return start_method() == "fork" or findings >= SPAWN_FROM


class FilesProcess:
    """The second process writing a run's findings.json and findings.csv: started when made, then ``share`` when
    this process has nothing else to do, then ``wait``, and ``stop`` in a ``finally``, so that no interruption
    leaves it running."""

    def __init__(self, url: str, run_id: str, json_path: Path | None, csv_path: Path | None, *,
                 by_domain: bool = False) -> None:
        self._run_id = run_id
        self._by_domain = by_domain
        self._heads = [p for p in (json_path, csv_path) if p is not None]
        self._tails: list[Path] = []
        self._shared = 0
        self._reply: tuple[Any, ...] | None = None
        # A forked copy never touches this process's engine: it opens its own from the URL.
        self._process, self._conn = start_process(_write, "mailwarden-findings-files")
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

    def share(self, store: Store) -> None:
        """Write the rows of the run's last tenants (``by_domain``: domains) in this process, when the second process
        has yet to reach them: it hands over the last it has not started, four in ten of its rows to come
        (``SHARED``; ``wait`` joins the files). Nothing is shared with a process about to finish, or of a run whose
        tenants are not at hand (``output_parts``).

        By domain only where no run can have been recorded after this one (the scan that recorded it, under its
        lease): a pass's domain is its finding's latest, and a later run may have moved it."""
        if self._conn.poll():  # it is done, or failed: ``wait`` says which
            return
        parts = store.output_parts(self._run_id, by_domain=self._by_domain)
        if not parts:
            return
        with contextlib.suppress(OSError):  # the process is gone already: ``wait`` says how it ended
            self._conn.send(parts)
        reply = self._received()
        if reply is None or reply[0] != "tail":
            self._reply = reply
            return
        if reply[1]:
            json_path, csv_path = (self._part(".json"), self._part(".csv"))
            with store.iter_rows(self._run_id, from_part=reply[1][0]) as rows:
                self._shared = write_findings_files(rows, json_path, csv_path, continued=True)
            self._tails = [p for p in (json_path, csv_path) if p is not None]
            log.debug("findings files: %d findings of %d %s written by this process", self._shared,
                      len(reply[1]), "domains" if self._by_domain else "tenants")

    def _part(self, suffix: str) -> Path | None:
        """Where this process writes its last rows of the file with this suffix (None when it is not wanted)."""
        head = next((p for p in self._heads if p.suffix == suffix), None)
        return None if head is None else head.with_name(head.name + ".last")

    def _received(self) -> tuple[Any, ...] | None:
        """The process's next message; None when it died (the pipe was closed, or reset with the job unread)."""
        return next_message(self._process, self._conn)  # type: ignore[no-any-return]

    def wait(self) -> int:
        """Wait for the files; returns how many findings they hold. The process's OSError (a full disk) is raised
        here as the same OSError, so the caller reports it as its own failed writes; a store that could not be
        read, or a process that died, raises FilesFailed."""
        reply = self._reply or self._received()
        self._process.join()
        if reply is None:
            raise FilesFailed(f"their process {how_it_ended(self._process)}")
        kind, *details = reply
        if kind == "oserror":
            number, text, filename = details
            raise OSError(number, text, filename)
        if kind == "error":
            raise FilesFailed(details[0])
        pid, count = details
        log.debug("findings files: %d findings written by process %d", count, pid, extra={"pid": pid})
        if self._tails:
            join_findings_files(self._heads, self._tails)
        return int(count) + self._shared

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it (the files it leaves are in the caller's temporary
        folder, removed with it)."""
        stop_process(self._process, self._conn)


class FilesFailed(Exception):
    """The second process did not write the files, for a reason other than an OSError of its own (the message
    says which)."""


def _write(conn: Connection, parent: int) -> None:
    """The second process: read the job from the pipe, write the files, send back what happened."""
    as_child(parent)
    url, run_id, json_path, csv_path = conn.recv()
    try:
        store = Store(url, create=False)
        try:
            with store.iter_rows(run_id) as rows:
                count = write_findings_files(handing_over(rows, conn), json_path, csv_path)
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


SHARED = 0.4
"""The share of the rows the second process has yet to reach that it hands over (``handing_over``). This process
reads the rows it takes anew, looking at every pass of the run once more to find them, while the second goes on
writing: less than a half has the two finish together. ``mailwarden report`` of the 10,000-domain bench run,
alternately: 9.1–10.1 s with a third, 9.3–10.1 s with a quarter, 10.3–13.4 s with nothing handed over
(2026-12-06); once a pass's domain was in its finding's row (schema version 12), the look costs less: 7.9–8.0 s
with 0.42 against 8.2–8.5 s with a third, 7.9–8.4 s from 0.38 to 0.48; the 100,000-mailbox scan's outputs, by
domain, ended 6.1–6.8 s after report.html with 0.4, 6.8–7.9 s with a third (2026-12-07)."""


def handing_over(rows: Iterable[Any], conn: Connection) -> Iterator[Any]:
    """The rows (in output order, so by tenant and domain) up to the tenants or domains handed over to the process
    that started this one.

    That process asks once, sending the keys of the run's rows in output order ((tenant,), or (tenant, domain):
    ``Store.output_parts``) with how many rows each has (``FilesProcess.share``); the question is answered when
    the rows move on to another domain: the last keys after the current one that hold at most ``SHARED`` of the
    rows after it go, an empty list when none does. A question still unread when the rows end is answered by the
    end itself."""
    tenant: str | None = None
    domain: str | None = None
    width = 0  # the keys' length, once asked
    asked = False
    handed: tuple[str, ...] | None = None
    for row in rows:
        if row.domain != domain or row.tenant != tenant:
            tenant, domain = row.tenant, row.domain
            if handed is not None and (tenant, domain)[:width] == handed:  # the rest are handed over
                return
            if not asked and conn.poll():
                asked = True
                parts: list[tuple[tuple[str, ...], int]] = conn.recv()
                keys = [key for key, _ in parts]
                width = len(keys[0])
                current = (tenant, domain)[:width]
                later = parts[keys.index(current) + 1:] if current in keys else []
                tail = _last_share(later, SHARED)
                conn.send(("tail", tail))
                handed = tail[0] if tail else None
        yield row


def _last_share(parts: Sequence[tuple[Any, int]], share: float) -> list[Any]:
    """The last of these (key, rows) whose rows add up to at most ``share`` of all of theirs, in their order."""
    allowed = share * sum(n for _, n in parts)
    taken = 0
    cut = len(parts)
    while cut > 0 and taken + parts[cut - 1][1] <= allowed:
        cut -= 1
        taken += parts[cut][1]
    return [key for key, _ in parts[cut:]]

