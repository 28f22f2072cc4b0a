"""Half of a large portfolio's DNS collected by a second process.

Collecting DNS costs CPU as well as waiting: parsing replies, evaluating SPF through its includes, the MTA-STS
handshakes. Against a fast resolver a 10,000-domain estate keeps one core busy for about 13 s while the other
is idle, so from ``SPLIT_FROM`` domains a second process collects every other domain, with half of the
configured concurrency (the bound holds for the two together), and sends each domain's facts back as they come.
Each process has its own cache, so a name many domains share (a sender's SPF include) is asked once by each.
A second process that ends early loses nothing: the domains it had not sent back are collected by this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from scanner.model import DnsFacts
from scanner.processes import as_child, start_process, stop_process

log = logging.getLogger(__name__)

SPLIT_FROM = 2_000
"""Domains from which a scan collects half of them in a second process: starting it costs about half a second
(a fresh interpreter's imports), a domain about 1.3 ms of CPU."""

SUMMARY_WAIT = 5.0
"""Seconds this process waits for the second one's DNS summary once it has every domain it waits for."""

SEND_EVERY = 0.05
"""Seconds the second process gathers collected domains before it sends them (fewer, larger messages)."""


def worth_splitting(domains: int) -> bool:
    """Whether ``domains`` are enough to collect in two processes, on a machine with two cores for them."""
    return domains >= SPLIT_FROM and len(os.sched_getaffinity(0)) >= 2


@dataclass(frozen=True, slots=True)
class HelperSettings:
    """What the second process needs to collect as this one would: the resolver and the MTA-STS fetcher's
    settings, with its share of their concurrency."""

    nameservers: tuple[str, ...]
    timeout: float
    concurrency: int
    policy_port: int
    ca_bundle: Path | None
    policy_timeout: float
    policy_concurrency: int


Job = tuple[str, tuple[str, ...]]
"""One domain for the second process: its name and the DKIM selectors to ask."""


class DnsHelper:
    """The second process collecting ``jobs`` (started when made, ``stop`` in a ``finally``): ``facts(i)`` is the
    i-th job's DnsFacts when it arrives, or None when the process ended before sending it (collect it here)."""

    def __init__(self, settings: HelperSettings, jobs: Sequence[Job]) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[int, asyncio.Future[DnsFacts | None]] = {}
        self._arrived: dict[int, DnsFacts] = {}
        self._ended = False
        self._stopping = False
        self._summary: asyncio.Future[dict[str, Any] | None] = self._loop.create_future()
        self._process, self._conn = start_process(_collect_jobs, "mailwarden-dns")
        try:
            with contextlib.suppress(OSError):  # gone already: every job is collected here
                self._conn.send((settings, list(jobs)))
            self._reader = threading.Thread(target=self._read, name="mailwarden-dns-reader", daemon=True)
            self._reader.start()
        except BaseException:
            self.stop()
            raise
        log.debug("DNS: %d domains given to process %d", len(jobs), self._process.pid)

    async def facts(self, index: int) -> DnsFacts | None:
        """The facts of job ``index`` once the second process sends them; None when it ended without them."""
        if index in self._arrived:
            return self._arrived.pop(index)
        if self._ended:
            return None
        future = self._waiting[index] = self._loop.create_future()
        try:
            return await future
        finally:
            self._waiting.pop(index, None)

    async def summary(self) -> dict[str, Any] | None:
        """The second process's DNS summary (``DnsClient.summary``), sent after its last job; None when it ended
        before, or is still collecting ``SUMMARY_WAIT`` seconds after this one (only a tenant that timed out leaves
        it jobs nobody waits for). What it asked is then not counted."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._summary), SUMMARY_WAIT)
        except TimeoutError:
            return None

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it."""
        self._stopping = True
        stop_process(self._process, self._conn)

    def _read(self) -> None:
        """The reader thread: hand each message to the event loop, then the end (a summary, or the pipe closed)."""
        done = False
        try:
            while not done:
                message = self._conn.recv()
                done = message[0] == "done"
                self._loop.call_soon_threadsafe(self._received, message)
        except (EOFError, OSError, RuntimeError):  # the pipe closed, or the loop did (the scan stopped)
            pass
        if done or self._stopping:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._lost)

    def _received(self, message: tuple[Any, ...]) -> None:
        kind, payload = message
        if kind == "done":
            self._summary.set_result(payload)
            self._lost()  # anything not sent (none, normally) is collected here
            return
        for index, facts in payload:
            future = self._waiting.get(index)
            if future is None:
                self._arrived[index] = facts
            elif not future.done():  # a tenant that timed out has stopped waiting
                future.set_result(facts)

    def _lost(self) -> None:
        """The process sends nothing more: whoever waits collects here."""
        if not self._summary.done():
            code = self._process.exitcode
            log.warning("DNS: the second collecting process ended early (%s); this one collects the rest",
                        f"exit status {code}" if code is not None else "its pipe closed")
            self._summary.set_result(None)
        self._ended = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)


def merged_summary(ours: dict[str, Any], theirs: dict[str, Any] | None) -> dict[str, Any]:
    """Two processes' DNS summaries as one: questions added up, each nameserver's failures by reason added up."""
    if theirs is None:
        return ours
    servers: dict[str, dict[str, int]] = {}
    for summary in (ours, theirs):
        for server, reasons in summary["nameservers"].items():
            kept = servers.setdefault(server, {})
            for reason, n in reasons.items():
                kept[reason] = kept.get(reason, 0) + n
    return {
        **{key: ours[key] + theirs[key] for key in ("questions", "answered", "unanswered")},
        "nameservers": {server: dict(sorted(reasons.items())) for server, reasons in sorted(servers.items())},
    }


def _collect_jobs(conn: Connection, parent: int) -> None:
    """The second process: collect the jobs from the pipe, sending what is collected every ``SEND_EVERY``
    seconds, then ("done", the DNS summary)."""
    as_child(parent)
    settings, jobs = conn.recv()
    with contextlib.suppress(BrokenPipeError):  # the parent stopped listening: nothing left to do
        asyncio.run(_collect(conn, settings, jobs))
    conn.close()


async def _collect(conn: Connection, settings: HelperSettings, jobs: list[Job]) -> None:
    from scanner.dns.client import DnsClient
    from scanner.dns.mtasts import PolicyFetcher

    client = DnsClient(settings.nameservers, timeout=settings.timeout, concurrency=settings.concurrency)
    policies = PolicyFetcher(port=settings.policy_port, ca_bundle=settings.ca_bundle,
                             timeout=settings.policy_timeout, concurrency=settings.policy_concurrency)
    ready: list[tuple[int, DnsFacts]] = []
    sent = time.monotonic()

    async def one(index: int, name: str, selectors: tuple[str, ...]) -> None:
        nonlocal sent, ready
        facts = await client.collect_domain(name, selectors=selectors, policies=policies)
        ready.append((index, facts))  # the list as it is now: the await may have seen the one before sent
        if time.monotonic() - sent >= SEND_EVERY:
            conn.send(("facts", ready))
            ready, sent = [], time.monotonic()

    await asyncio.gather(*(one(i, name, selectors) for i, (name, selectors) in enumerate(jobs)))
    conn.send(("facts", ready))
    conn.send(("done", client.summary()))
