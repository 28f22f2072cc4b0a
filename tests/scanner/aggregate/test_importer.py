"""Importing aggregate reports into the store (SQLite and PostgreSQL), `dmarc import` and `dmarc sources`."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from scanner.aggregate.importer import import_files
from scanner.aggregate.store import report_count, source_traffic
from scanner.store.database import Store

DATA = Path(__file__).resolve().parents[2] / "data" / "dmarc-aggregate"
BIS = "parsedmarc__rfc9990-example.net!example.com!1700000000!1700086399.xml"


def test_import_stores_each_report_once(store_url: str) -> None:
    store = Store(store_url)
    first = import_files(store, [DATA / "good"])
    assert (first.read, first.stored, first.skipped, first.problems) == (40, 34, 6, [])
    again = import_files(store, [DATA / "good", DATA / "dup"])
    assert (again.read, again.stored, again.skipped) == (41, 0, 41)
    assert report_count(store) == 34
    # the repeated report (same org and id, other counts and sources) changed nothing stored
    assert {(t.domain, t.source_ip): t.messages for t in source_traffic(store, domains=["test.net", "test2.net"])
            } == {("test.net", "192.168.1.1"): 5, ("test2.net", "10.1.1.1"): 2}  # grouped by header_from
    store.close()


def test_sources_count_messages_by_domain_and_source(store_url: str) -> None:
    store = Store(store_url)
    import_files(store, [DATA / "good" / BIS])
    rows = {t.source_ip: t for t in source_traffic(store, domains=["example.com"])}
    good, bad = rows["198.51.100.1"], rows["203.0.113.10"]
    assert (good.messages, good.dmarc_pass, good.spf_aligned, good.dkim_aligned) == (5, 5, 5, 5)
    assert (bad.messages, bad.dmarc_pass, bad.dmarc_fail) == (2, 0, 2)
    assert good.first_seen.isoformat() == "2023-11-14T22:13:20+00:00"
    store.close()


def _config(write_config: Callable[..., Path], tmp_path: Path, nameserver: str, extra: str = "") -> Path:
    return write_config(f'''
[store]
url = "sqlite:///{tmp_path / 'store.db'}"
[dns]
nameservers = ["{nameserver}"]
timeout = 1.0
[dmarc_reports]
paths = ["reports"]
addresses = ["dmarc@msp.example"]
[senders.acme-relay]
title = "ACME relay"
ptr_patterns = ["*.relay.acme.example"]
[senders.bulkmail]
ip_ranges = ["203.0.113.8/29"]
[[tenants]]
name = "client"
domains = ["example.com"]
[[tenants]]
name = "other"
domains = ["test.net"]
{extra}
''')


def test_import_names_each_bad_file_and_imports_the_rest(
    write_config: Callable[..., Path], tmp_path: Path, dns_server, add_zone  # type: ignore[no-untyped-def]
) -> None:
    reports = tmp_path / "reports"
    shutil.copytree(DATA / "good", reports / "good")
    (reports / "bad").mkdir()
    (reports / "bad" / "empty.xml").write_bytes(b"")
    (reports / "bad" / "not-dmarc.xml").write_bytes(b"<inventory/>")
    (reports / "bad" / "notes.txt").write_text("not a report suffix: never read from a folder", encoding="utf-8")
    config = _config(write_config, tmp_path, dns_server.nameserver)
    runner = CliRunner()
    done = runner.invoke(main_command(), ["dmarc", "import", "--config", str(config)])
    assert done.exit_code == 1, done.output
    assert "empty.xml: empty file" in done.stderr
    assert "not-dmarc.xml: not a DMARC aggregate report" in done.stderr
    assert "notes.txt" not in done.stderr
    assert "34 reports stored" in done.stdout and "2 not read" in done.stdout
    again = runner.invoke(main_command(), ["dmarc", "import", "--config", str(config), str(reports / "good")])
    assert again.exit_code == 0 and "0 reports stored" in again.stdout and "40 already stored" in again.stdout


def main_command():  # type: ignore[no-untyped-def]
    from scanner.cli import main

    return main


def test_sources_command_maps_ptr_names_and_ranges_to_senders(
    write_config: Callable[..., Path], tmp_path: Path, dns_server, add_zone  # type: ignore[no-untyped-def]
) -> None:
    add_zone("100.51.198.in-addr.arpa", "1 IN PTR out1.relay.acme.example.")
    add_zone("113.0.203.in-addr.arpa", "10 IN PTR spoof.relay.acme.example.")  # names itself the relay ...
    add_zone("relay.acme.example", "out1 IN A 198.51.100.1\nspoof IN A 192.0.2.99")  # ... but it is not
    (tmp_path / "reports").mkdir()
    shutil.copy(DATA / "good" / BIS, tmp_path / "reports")
    shutil.copy(DATA / "good" / "tierpod__test.xml", tmp_path / "reports")
    config = _config(write_config, tmp_path, dns_server.nameserver)
    runner = CliRunner()
    assert runner.invoke(main_command(), ["dmarc", "import", "--config", str(config)]).exit_code == 0
    listed = runner.invoke(main_command(), ["dmarc", "sources", "--config", str(config), "--format", "json",
                                            "--domain", "EXAMPLE.com"])
    assert listed.exit_code == 0, listed.output
    rows = {r["source_ip"]: r for r in json.loads(listed.stdout)}  # the JSON list is all that is printed
    assert set(rows) == {"198.51.100.1", "203.0.113.10"}
    assert rows["198.51.100.1"]["ptr"] == "out1.relay.acme.example"
    assert rows["198.51.100.1"]["sender"] == "acme-relay"
    assert rows["198.51.100.1"]["ptr_confirmed"] is True
    # a PTR name that does not resolve back to the address names no sender (the range still does)
    assert rows["203.0.113.10"]["ptr"] == "spoof.relay.acme.example" and rows["203.0.113.10"]["ptr_confirmed"] is False
    assert rows["203.0.113.10"]["sender"] == "bulkmail"
    assert (rows["203.0.113.10"]["dmarc_fail"], rows["203.0.113.10"]["dkim_aligned"]) == (2, 0)
    by_tenant = runner.invoke(main_command(), ["dmarc", "sources", "--config", str(config), "--tenant", "other",
                                               "--format", "csv"])
    table = list(csv.DictReader(io.StringIO(by_tenant.stdout)))
    assert {r["domain"] for r in table} == {"test.net"} and table[0]["first_seen"]
    old = runner.invoke(main_command(), ["dmarc", "sources", "--config", str(config), "--until", "2010-01-01"])
    assert old.exit_code == 0 and "no DMARC aggregate report names a source" in old.stdout
    recent = runner.invoke(main_command(), ["dmarc", "sources", "--config", str(config), "--since", "2023-11-14",
                                            "--format", "json"])
    assert {r["domain"] for r in json.loads(recent.stdout)} == {"example.com"}  # tierpod's report is older
    unknown = runner.invoke(main_command(), ["dmarc", "sources", "--config", str(config), "--tenant", "nope"])
    assert unknown.exit_code == 2 and "'nope'" in unknown.stderr
