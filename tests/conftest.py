"""Shared fixtures: a real DNS server on loopback, and config files written for a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import dns.zone
import pytest

from scanner.zoneserver import ZoneServer


@pytest.fixture
def dns_server() -> Iterator[ZoneServer]:
    """An authoritative DNS server on a free loopback port (UDP and TCP), empty until zones are added."""
    with ZoneServer() as server:
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
