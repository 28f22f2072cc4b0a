"""What the scan's second processes share: how they start, how they take Ctrl-C, and how they end with their parent."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

PARENT_POLL = 0.2
"""Seconds between a second process's checks that the process that started it is still there."""


def start_method() -> str:
    """How a second process starts: ``fork`` (a copy of this process, started in milliseconds) when this process
    has no other thread, ``spawn`` (a fresh interpreter, about half a second of imports) otherwise. A thread (the
    scan lease's heartbeat, ``serve``'s workers) may hold a lock inside SQLite or libpq at the moment of a fork,
    and a copy would wait on it forever."""
    return "fork" if threading.active_count() == 1 else "spawn"


def start_process(target: Any, name: str, *args: Any) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """Start ``target(conn, parent_pid, *args)`` in a second process (``start_method``); returns it and this end of
    the pipe to it. Ctrl-C reaches the whole process group: this process decides, and stops the other if it must.
    SIGINT is blocked while it starts (the mask is inherited, across exec too) until it has chosen to ignore it
    (``as_child``)."""
    context = multiprocessing.get_context(start_method())
    conn, child_end = context.Pipe()
    process = context.Process(target=target, args=(child_end, os.getpid(), *args), name=name, daemon=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        child_end.close()
    return process, conn


def next_message(process: multiprocessing.process.BaseProcess, conn: Connection) -> Any | None:
    """A second process's next message; None when it died without one (the pipe closed, or reset unread)."""
    wait([conn, process.sentinel])
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def how_it_ended(process: multiprocessing.process.BaseProcess) -> str:
    """How a second process that said nothing ended, once reaped: killed by which signal, or its exit status."""
    process.join()
    code = process.exitcode
    return f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"


def stop_process(process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
    """Kill a second process if it still runs, reap it, and close the pipe to it."""
    if process.is_alive():
        process.kill()
    process.join()
    conn.close()


def as_child(parent: int) -> None:
    """Called first in a second process: Ctrl-C is its parent's to act on, SIGTERM ends it, and it exits at once
    when its parent is gone (killed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
    """Exit at once when the parent is gone: whatever it left behind is the next run's to clean."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)
