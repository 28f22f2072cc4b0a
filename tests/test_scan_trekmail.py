"""``mailwarden scan`` over a TrekMail tenant end to end: its contract server, a roster, loopback DNS, the outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dns.zone
import pytest
from click.testing import CliRunner

from scanner.cli import main
from scanner.loopback.zoneserver import ZoneServer
from tests.conftest import TOP_LEVEL_ZONES, top_level_zone
from tests.contract.estate import standard_estate
from tests.contract.server import ContractServer
from tests.contract.trekmail import HARNESS, TOKEN

ESTATE = standard_estate(users=2)


@pytest.fixture
def served() -> Iterator[ContractServer]:
    server = HARNESS.serve(ESTATE, page_size=4)
    yield server
    server.stop()


@pytest.fixture
def zones() -> Iterator[ZoneServer]:
    with ZoneServer([top_level_zone(o) for o in TOP_LEVEL_ZONES]) as server:  # the DMARC tree walk's top
        for domain in ESTATE.domains:
            server.add_zone(dns.zone.from_text(
                f"$ORIGIN {domain}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
                "ns1 IN A 127.0.0.53\n@ IN MX 10 mx\nmx IN A 127.0.0.25\n"
                '@ IN TXT "v=spf1 ip4:127.0.0.25 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
                origin=domain, relativize=False))
        yield server


def test_scan_of_a_trekmail_tenant_finds_a_leavers_passwords(tmp_path: Path, served: ContractServer,
                                                              zones: ZoneServer) -> None:
    (tmp_path / "people.csv").write_text("email,name,left\nana@acme.example,Ana,2026-01-31\n"
                                         "ben@acme.example,Ben,\n", encoding="utf-8")
    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "mw.db"}"\n[dns]\nnameservers = ["{zones.nameserver}"]\ntimeout = 1.0\n'
        "[http]\ntimeout = 5.0\nattempts = 3\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_retry_after = 0.05\n"
        + HARNESS.tenant_toml(served, ESTATE, tmp_path).replace("[tenants.trekmail]", 'roster = "people.csv"\n'
                                                                 "[tenants.trekmail]"), encoding="utf-8")
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(out)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["scope"]["tenants"]["acme"]["state"] == "complete"
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    leaver = {f["item"]: f for f in findings if f["check"] == "access.leaver_grant" and f["status"] == "fail"}
    assert set(leaver) == {"app_password:10301", "device_password:501"}  # Thunderbird and the Drive device
    assert leaver["app_password:10301"]["subject"] == "ana@acme.example"
    assert leaver["app_password:10301"]["remediation"]["action"] == "grant.revoke"
    by = {(f["check"], f["subject"]): f for f in findings if not f["item"]}
    assert by[("access.mail_grant", "ben@acme.example")]["status"] == "unsupported"  # OAuth not in TrekMail's API
    assert "dashboard" in by[("access.mail_grant", "ben@acme.example")]["reason"]
    assert by[("forwarding.external", "ana@acme.example")]["status"] == "fail"
    assert by[("catchall.enabled", "acme.example")]["status"] == "fail"
    for name in ("findings.json", "findings.csv", "report.html", "manifest.json"):
        assert TOKEN not in (out / name).read_text(encoding="utf-8")
