"""Fixtures: a copy of the demo estate scanned once over loopback DNS, with remediation links configured;
its store on SQLite, or (stored_estate) on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from scanner.cli import DEMO, DEMO_AS_OF
from scanner.config import Config, load_config
from scanner.pipeline import run_scan
from scanner.store.database import Store, changes, metadata
from scanner.loopback.zoneserver import ZoneServer

SECRET_ENV = "MAILWARDEN_TEST_LINK_SECRET"
SECRET = "test-secret-3f9a1c7e5b2d4680-never-shown"
AUDIT_KEY_ENV = "MAILWARDEN_TEST_AUDIT_KEY"
AUDIT_KEY = "test-audit-key-8b1e0d4c2a6f9735-kept-apart"
OPERATOR_ID = "dana.ops@msp.example"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Estate:
    """A scanned copy of the demo estate: its config, store, output directory and export files."""

    root: Path
    config: Config
    store: Store
    out: Path
    run_id: str
    port: int
    dns: ZoneServer

    def export(self, tenant: str) -> Path:
        return self.root / "demo" / tenant

    def files_state(self) -> dict[str, bytes]:
        """Every export file's bytes, to show nothing changed."""
        return {str(p.relative_to(self.root)): p.read_bytes()
                for p in sorted((self.root / "demo").rglob("*")) if p.is_file() and p.suffix in (".csv", ".json")}


@pytest.fixture(scope="session")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """The demo copied and scanned once: its directory (config, exports, store, outputs), run id and link port."""
    root = tmp_path_factory.mktemp("scanned")
    demo = root / "demo"
    shutil.copytree(DEMO, demo, ignore=shutil.ignore_patterns("drift"))
    port = free_port()
    config_path = demo / "mailwarden.toml"
    config_path.write_text(config_path.read_text(encoding="utf-8") + f"""
[remediation]
base_url = "http://127.0.0.1:{port}"
secret = "env:{SECRET_ENV}"
audit_sink = "audit.jsonl"
audit_key = "env:{AUDIT_KEY_ENV}"

[remediation.operators]
"{OPERATOR_ID}" = ["*"]
"ops" = ["*"]
"harbor.ops@msp.example" = ["harbor-dental"]
""", encoding="utf-8")
    os.environ[SECRET_ENV] = SECRET
    try:
        with ZoneServer() as server:
            server.load_directory(demo / "zones")
            config = _load(root, server)
            store = Store(config.store.url)
            try:
                run = run_scan(config, root / "out", store=store, as_of=DEMO_AS_OF).run.id
            finally:
                store.close()
    finally:
        del os.environ[SECRET_ENV]
    return root, run, port


def _load(root: Path, server: ZoneServer, url: str | None = None) -> Config:
    overrides: dict[str, dict[str, object]] = {
        "dns": {"nameservers": [server.nameserver], "timeout": 1.0},
        "store": {"url": url or f"sqlite:///{root / 'store.db'}"},
        "mta_sts": {"port": free_port(), "timeout": 1.0},
    }
    return load_config(root / "demo" / "mailwarden.toml", overrides=overrides)


def copy_store(source_url: str, target_url: str) -> None:
    """Copy every row of one store into another, empty one (e.g. the scanned SQLite store into PostgreSQL)."""
    source, target = Store(source_url), Store(target_url)
    try:
        with source.engine.connect() as src, target.engine.begin() as dst:
            present = set(sa.inspect(src).get_table_names())  # metadata also holds tables a migration dropped
            for table in (t for t in metadata.sorted_tables if t.name in present):
                rows = [{k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
                         for k, v in row._mapping.items() if not (table is changes and k == "id")}
                        for row in src.execute(sa.select(table).order_by(*table.primary_key.columns))]
                dst.execute(sa.delete(table))
                if rows:
                    dst.execute(sa.insert(table), rows)
    finally:
        source.close()
        target.close()


@contextmanager
def _estate(scanned: tuple[Path, str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            url: str | None = None) -> Iterator[Estate]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(AUDIT_KEY_ENV, AUDIT_KEY)
    template, run_id, port = scanned
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    copied = f"sqlite:///{tmp_path / 'store.db'}"
    if url is not None and url != copied:
        copy_store(copied, url)
    with ZoneServer() as server:
        server.load_directory(tmp_path / "demo" / "zones")
        config = _load(tmp_path, server, url)
        store = Store(config.store.url)
        try:
            yield Estate(tmp_path, config, store, tmp_path / "out", run_id, port, server)
        finally:
            store.close()


@pytest.fixture
def estate(scanned: tuple[Path, str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Estate]:
    """A fresh copy of the scanned demo (each test may change its export files and store)."""
    with _estate(scanned, tmp_path, monkeypatch) as fresh:
        yield fresh


@pytest.fixture
def stored_estate(scanned: tuple[Path, str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  store_url: str) -> Iterator[Estate]:
    """The scanned demo copy with its store on SQLite and on PostgreSQL (``store_url`` is parametrized over both)."""
    with _estate(scanned, tmp_path, monkeypatch, store_url) as fresh:
        yield fresh


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG and above."""
    caplog.set_level(logging.DEBUG)
    return caplog

