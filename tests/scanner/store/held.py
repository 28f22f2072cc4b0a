"""A scan lease held by another process, as a scan in progress leaves the store."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import sqlalchemy as sa

from scanner.store.database import Store
from scanner.store.lease import ensure_lease_table, scan_lease


def hold_scan_lease(store: Store, run_id: str, pid: int) -> None:
    """Start run ``run_id`` and give its scan lease to process ``pid`` on this host, heartbeat now."""
    now = datetime.now(UTC)
    store.start_run(run_id, now, "d", "test")
    ensure_lease_table(store)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(scan_lease).values(name="scan", run_id=run_id, host=socket.gethostname(), pid=pid,
                                                  acquired=now, heartbeat=now))
