"""Shared fixtures: a real DNS server on loopback, config files written for a test, and stores on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.zone
import pytest
import sqlalchemy as sa

from scanner.loopback.zoneserver import ZoneServer


TOP_LEVEL_ZONES = ("example", "test")
"""Served (empty) by ``dns_server``, so the DMARC tree walk (RFC 9989 §4.10) up to ``_dmarc.example`` gets the
NXDOMAIN a recursive resolver would give, not the REFUSED of a server that holds only the domains' zones."""


def top_level_zone(origin: str) -> dns.zone.Zone:
    """An empty zone (SOA and NS only) for a top-level domain."""
    text = (f"$ORIGIN {origin}.\n$TTL 300\n@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n"
            f"@ IN NS ns1.{origin}.\nns1 IN A 127.0.0.53\n")
    return dns.zone.from_text(text, origin=origin, relativize=False)


@pytest.fixture
def dns_server() -> Iterator[ZoneServer]:
    """An authoritative DNS server on a free loopback port (UDP and TCP), holding only the empty top-level zones
    until zones are added."""
    with ZoneServer([top_level_zone(origin) for origin in TOP_LEVEL_ZONES]) as server:
        yield server


@pytest.fixture
def add_zone(dns_server: ZoneServer) -> Callable[[str, str], None]:
    """Serve a zone given as master-file text (the SOA and NS are added)."""

    def add(origin: str, records: str) -> None:
        text = (
            f"$ORIGIN {origin}.\n$TTL 300\n"
            f"@ IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n"
            f"@ IN NS ns1.{origin}.\nns1 IN A 127.0.0.53\n{records}\n"
        )
        dns_server.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))

    return add


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a mailwarden.toml (and return its path) in the test's directory."""

    def write(text: str, name: str = "mailwarden.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A PostgreSQL server on loopback for this test session, in a temporary directory."""

    host: str
    port: int
    socket_dir: Path

    def url(self, schema: str | None = None) -> str:
        """A SQLAlchemy URL (psycopg 3) of the server's database, optionally confined to one schema."""
        options = f"&options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql+psycopg://mailwarden@{self.host}:{self.port}/mailwarden?connect_timeout=5{options}"


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/test.sh (it installs Debian's postgresql package)")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Start a real PostgreSQL server (Debian's binaries) on a free loopback port; stop it after the session.

    PostgreSQL refuses to run as root: as root, the server runs as ``nobody`` in a directory it owns.
    """
    binaries = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="mailwarden-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("nobody")
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "mailwarden", "--auth=trust", "--no-locale", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True, cwd=root, env=env, **as_user,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets),
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, env=env, **as_user,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run([str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
                                   check=False, env=env)
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {server.stderr.read().decode() if server.stderr else ''}")
            time.sleep(0.1)
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mailwarden",
                        "mailwarden"], check=True, env=env)
        yield PostgresServer("127.0.0.1", port, sockets)
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: disconnects the sessions tests left open
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL: a SQLite file, or a schema of its own on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    engine = sa.create_engine(server.url())
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield server.url(schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
