"""One service per store: a second ``serve`` refuses to start naming the other's host and pid, a stale service
lease is taken over after its TTL, and a busy port is one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scanner.store.lease import ServiceBusy, ServiceLease, ensure_lease_table, service_holder, service_lease
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.service.test_serve import Serving, _config, _free_port, _wait, estate, serving  # noqa: F401 - fixtures


def _serve_once(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from scanner.cli import main; main()", "serve", "--config",
                           str(config), *args], capture_output=True, text=True, cwd=config.parent, timeout=60)


def test_a_second_serve_on_the_same_store_refuses_to_start_naming_the_first(
    estate: ZoneServer, write_config: Callable[[str], Path], store_url: str, serving: Callable[[Path], Serving]
) -> None:
    config = _config(write_config, store_url, estate, scan="0 0 1 1 *")
    first = serving(config)
    _wait(first.healthz, what="/healthz")
    second = _serve_once(config, "--port", str(_free_port()))
    assert second.returncode == 1
    lines = [line for line in second.stderr.splitlines() if line.startswith("mailwarden:")]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"another mailwarden serve is running on this store: process {first.process.pid} on " \
           f"{socket.gethostname()}" in lines[0]
    assert first.healthz()["status"] == "ok"  # the first one goes on
    first.stop()
    store = Store(store_url)
    try:
        assert service_holder(store) is None  # released on SIGTERM
    finally:
        store.close()


def test_a_busy_port_is_one_line_and_leaves_no_lease(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _config(write_config, url, estate, scan="0 0 1 1 *")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve_once(config, "--port", str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("mailwarden:")]
    assert lines == [f"mailwarden: the web app cannot listen on 127.0.0.1:{port}: Address already in use; stop what "
                     "uses it, or choose another port with --port or [serve] port"], done.stderr
    store = Store(url)
    try:
        assert service_holder(store) is None
    finally:
        store.close()


def test_a_stale_service_lease_is_taken_over_after_its_ttl_and_a_live_one_is_not(store_url: str) -> None:
    store = Store(store_url)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ensure_lease_table(store)
        fresh = datetime.now(UTC)
        with store.engine.begin() as conn:  # a serve on another host: its process cannot be looked at from here
            conn.execute(sa.insert(service_lease).values(name="serve", host="elsewhere.example", pid=4242,
                                                         acquired=fresh, heartbeat=fresh))
        with pytest.raises(ServiceBusy, match="process 4242 on elsewhere.example"):
            ServiceLease(store, ttl=60).acquire()
        with store.engine.begin() as conn:
            conn.execute(sa.update(service_lease).values(heartbeat=fresh - timedelta(seconds=61)))
        with ServiceLease(store, ttl=60):  # its heartbeat is older than the TTL: taken over
            holder = service_holder(store)
            assert holder is not None and holder.host == socket.gethostname()
        assert service_holder(store) is None  # given back
        with store.engine.begin() as conn:  # a live serve on this host
            conn.execute(sa.insert(service_lease).values(name="serve", host=socket.gethostname(), pid=sleeper.pid,
                                                         acquired=fresh, heartbeat=fresh))
        with pytest.raises(ServiceBusy, match=f"process {sleeper.pid} on {socket.gethostname()}"):
            ServiceLease(store, ttl=60).acquire()
        sleeper.kill()
        sleeper.wait()
        with ServiceLease(store, ttl=60):  # its process is gone: taken over at once
            assert service_holder(store).pid != sleeper.pid  # type: ignore[union-attr]
    finally:
        sleeper.kill()
        sleeper.wait()
        store.close()
