"""What a reader of the store needs without SQLAlchemy: its schema version, the SQLite busy timeout, and the leases'
holders (who holds one, and whether that process is alive), so ``mailwarden status`` reads the store through sqlite3."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

SCHEMA_VERSION = 12
"""How many migrations scanner/store/database.py has (``len(MIGRATIONS)``; a test keeps the two equal)."""

BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection waits for the write lock (the one writer) before it gives up."""

SCAN_LEASE, SCAN = "scan_lease", "scan"
"""The scan lease's table and its one row's name."""
SERVICE_LEASE, SERVICE = "service_lease", "serve"
"""The service lease's table and its one row's name."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or held) the scan lease."""

    run_id: str
    host: str
    pid: int
    acquired: datetime
    heartbeat: datetime

    def orphaned(self, now: datetime, ttl: float) -> bool:
        """True when the holder is gone: a stale heartbeat, or a process of this host that no longer exists.

        A holder naming this very process is orphaned too: a process holds the lease only through a
        ``Lease`` it entered, and a restarted container often gets the same process id as the one killed.
        """
        if now - self.heartbeat > timedelta(seconds=ttl):
            return True
        if self.host != socket.gethostname():
            return False
        return self.pid == os.getpid() or not process_exists(self.pid)

    def alive(self, now: datetime, ttl: float) -> bool:
        """True while the holder counts as running: a fresh heartbeat, and on this host a process that exists."""
        if now - self.heartbeat > timedelta(seconds=ttl):
            return False
        return self.host != socket.gethostname() or process_exists(self.pid)

    def describe(self) -> str:
        """One line naming the run and its process."""
        return f"run {self.run_id} (process {self.pid} on {self.host}, heartbeat {self.heartbeat:%Y-%m-%d %H:%M:%S}Z)"


def process_exists(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
