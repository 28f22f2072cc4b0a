"""Reported traffic end to end: `dmarc import`, then `scan` judges each domain's sources and senders on it."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from scanner.cli import main
from tests.dmarc_fixtures import Row, write_report


def test_scan_judges_imported_reports_and_writes_the_sources(
    write_config: Callable[..., Path], tmp_path: Path, dns_server, add_zone  # type: ignore[no-untyped-def]
) -> None:
    add_zone("acme.example", '@ MX 10 mx.acme.example.\n@ TXT "v=spf1 -all"\n'
             '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    add_zone("quiet.example", '@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    add_zone("2.0.192.in-addr.arpa", "10 IN PTR out.relay.example.")
    add_zone("relay.example", "out IN A 192.0.2.10")
    add_zone("100.51.198.in-addr.arpa", "7 IN PTR mail.relay.example.")  # unconfirmed: mail.relay.example has no A
    now = datetime.now(UTC).replace(microsecond=0)
    for day in range(3):
        begin = now - timedelta(days=day + 1)
        write_report(tmp_path / "reports", "google.com", f"g-{day}", "acme.example", begin, begin + timedelta(days=1), [
            Row("192.0.2.10", 100, dkim="fail", spf="pass"),  # the relay: aligned SPF
            Row("198.51.100.7", 40, dkim="fail", spf="fail"),  # someone else, failing
        ], compress=day == 0)
    config = write_config(f'''
[store]
url = "sqlite:///{tmp_path / 'store.db'}"
[dns]
nameservers = ["{dns_server.nameserver}"]
timeout = 1.0
[dmarc_reports]
paths = ["reports"]
addresses = ["dmarc@msp.example"]
[senders.relay]
ptr_patterns = ["*.relay.example"]
[[tenants]]
name = "acme"
domains = ["acme.example", "quiet.example"]
senders = ["relay"]
''')
    runner = CliRunner()
    imported = runner.invoke(main, ["dmarc", "import", "--config", str(config)])
    assert imported.exit_code == 0 and "3 reports stored" in imported.stdout, imported.output
    out = tmp_path / "out"
    scanned = runner.invoke(main, ["scan", "--config", str(config), "--out", str(out)])
    assert scanned.exit_code == 0, scanned.output
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    by = {(f["check"], f["subject"], f["item"]): f for f in findings}
    stranger = by[("dmarc.source_failing", "acme.example", "198.51.100.7")]
    assert stranger["status"] == "fail" and stranger["evidence"]["messages"] == 120
    assert stranger["evidence"]["ptr"] == "mail.relay.example" and stranger["evidence"]["sender"] == "unknown"
    assert ("dmarc.source_failing", "acme.example", "192.0.2.10") not in by  # the relay aligns
    relay = by[("alignment.sender_unaligned", "acme.example", "relay")]
    assert relay["status"] == "pass" and relay["evidence"]["dmarc_pass"] == 300  # no DKIM key by DNS, yet aligned
    assert by[("dmarc.reports_missing", "acme.example", "")]["status"] == "pass"
    quiet = by[("dmarc.reports_missing", "quiet.example", "")]
    assert quiet["status"] == "fail" and "no aggregate report" in quiet["evidence"]["problem"]
    assert by[("dmarc.source_failing", "quiet.example", "")]["status"] == "unsupported"


def test_without_reports_the_traffic_checks_are_unsupported(
    write_config: Callable[..., Path], tmp_path: Path, dns_server, add_zone  # type: ignore[no-untyped-def]
) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    config = write_config(f'''
[store]
url = "sqlite:///{tmp_path / 'store.db'}"
[dns]
nameservers = ["{dns_server.nameserver}"]
timeout = 1.0
[[tenants]]
name = "acme"
domains = ["acme.example"]
''')
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(out)]).exit_code == 0
    with (out / "findings.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["check"] in ("dmarc.source_failing", "dmarc.reports_missing")]
    assert rows and {r["status"] for r in rows} == {"unsupported"}
    assert all("[dmarc_reports]" in r["reason"] for r in rows)


def test_report_shows_the_senders_seen_with_a_chart(
    write_config: Callable[..., Path], tmp_path: Path, dns_server, add_zone  # type: ignore[no-untyped-def]
) -> None:
    from html.parser import HTMLParser

    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [Row(f"192.0.2.{n}", 100 - n, dkim="pass" if n % 3 else "fail", spf="fail") for n in range(1, 13)]
    write_report(tmp_path / "reports", "google.com", "one", "acme.example", now - timedelta(days=2),
                 now - timedelta(days=1), rows)
    write_report(tmp_path / "reports", "yahoo.com", "two<script>", "acme.example", now - timedelta(days=3),
                 now - timedelta(days=2), [Row("198.51.100.9", 5, header_from="acme.example")])
    config = write_config(f'''
[store]
url = "sqlite:///{tmp_path / 'store.db'}"
[dns]
nameservers = ["{dns_server.nameserver}"]
[dmarc_reports]
paths = ["reports"]
[senders.nine]
ip_ranges = ["198.51.100.9/32"]
[[tenants]]
name = "acme"
domains = ["acme.example"]
''')
    runner = CliRunner()
    assert runner.invoke(main, ["dmarc", "import", "--config", str(config)]).exit_code == 0
    out = tmp_path / "out"
    assert runner.invoke(main, ["scan", "--config", str(config), "--out", str(out)]).exit_code == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html[html.index('id="senders-seen"'):html.index('id="domains"')]
    assert 'id="senders-acme.example"' in section and "<svg" in section
    assert "<title>" in section and "passed" in section  # each day's bar says its counts

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
            if tag == "tr":
                self.rows.append([])

        def handle_data(self, data: str) -> None:
            if self.rows and data.strip():
                self.rows[-1].append(data.strip())

    cells = Cells()
    cells.feed(section)
    body = [r for r in cells.rows if r and r[0] != "source"]
    assert body[0][:4] == ["192.0.2.1", "no PTR", "unknown", "99"]
    assert ["198.51.100.9", "no PTR", "nine", "5"] not in [r[:4] for r in body]  # 13 sources: only the top 10
    assert "… and 3 more sources" in section
    again = tmp_path / "again"
    assert runner.invoke(main, ["report", "--config", str(config), "--out", str(again)]).exit_code == 0
    assert 'id="senders-acme.example"' in (again / "report.html").read_text(encoding="utf-8")
