"""dns.baseline_drift over real DNS on loopback, with baselines read from a baseline file."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from checks.dns import baseline_drift
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.store.baseline import capture, read_baseline_file, render_baseline
from scanner.dns.client import DnsClient
from scanner.errors import ConfigError
from scanner.model import Baseline, Domain, DomainState, Finding, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
TENANT = Tenant("acme", None, ("acme.example",), dkim_selectors=("s1",))
ZONE = (
    '@ MX 10 mx1.acme.example.\n@ MX 20 mx2.acme.example.\n@ TXT "v=spf1 include:_spf.acme.test -all"\n'
    '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"\n'
    's1._domainkey TXT "v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ=="\n'
)
BASELINE = """
[tenant]
dmarc_policy = "reject"

[domains."acme.example"]
mx = ["10 mx1.acme.example.", "20 mx2.acme.example"]
spf_terms = ["include:_spf.acme.test", "-all"]
dmarc_rua = ["mailto:d@acme.example"]
dkim_selectors = ["s1"]
"""


def _judge(server: ZoneServer, baselines: dict[str, Baseline]) -> dict[str, Finding]:
    facts = asyncio.run(DnsClient([server.nameserver], timeout=0.6).collect_domain("acme.example", selectors=("s1",)))
    inventory = Inventory((TENANT,), (Domain("acme.example", "acme", dns=facts),), baselines=baselines)
    return {f.item: f for f in evaluate(inventory, [baseline_drift], policy=Policy(), senders={}, now=NOW)}


@pytest.fixture
def baseline(tmp_path: Path) -> dict[str, Baseline]:
    path = tmp_path / "acme.toml"
    path.write_text(BASELINE, encoding="utf-8")
    return read_baseline_file(path, ("acme.example",))


def test_domain_matching_its_baseline_passes(dns_server, add_zone, baseline) -> None:
    add_zone("acme.example", ZONE)
    found = _judge(dns_server, baseline)
    assert set(found) == {"mx", "spf_terms", "dmarc_policy", "dmarc_rua", "dkim_selectors"}
    assert {f.status for f in found.values()} == {Status.PASS}


def test_deviation_is_reported_with_expected_and_actual(dns_server, add_zone, baseline) -> None:
    add_zone("acme.example", ZONE.replace("p=reject", "p=none").replace("mx2.acme.example.", "mx.other.test.").replace("-all", "~all"))
    found = _judge(dns_server, baseline)
    policy = found["dmarc_policy"]
    assert policy.status is Status.FAIL
    assert (policy.evidence["expected"], policy.evidence["actual"]) == ("reject", "none")
    assert policy.evidence["publish"] == '_dmarc.acme.example. TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"'
    mx = found["mx"]
    assert mx.status is Status.FAIL
    assert mx.evidence["missing"] == ["20 mx2.acme.example"] and mx.evidence["unexpected"] == ["20 mx.other.test"]
    assert mx.evidence["publish"] == ["acme.example. MX 10 mx1.acme.example.", "acme.example. MX 20 mx2.acme.example."]
    spf = found["spf_terms"]
    assert spf.status is Status.FAIL and spf.evidence["missing"] == ["-all"] and spf.evidence["unexpected"] == ["~all"]
    assert found["dmarc_rua"].status is Status.PASS and found["dkim_selectors"].status is Status.PASS


def test_missing_dkim_key_and_unlooked_selector(dns_server, add_zone, baseline) -> None:
    add_zone("acme.example", ZONE.split("s1._domainkey")[0])
    found = _judge(dns_server, baseline)
    assert found["dkim_selectors"].status is Status.FAIL
    assert found["dkim_selectors"].evidence["missing"] == ["s1"]
    other = {"acme.example": Baseline(dkim_selectors=("s9",), source="x")}
    assert "not looked up" in _judge(dns_server, other)["dkim_selectors"].reason


def test_servfail_gives_error(dns_server, add_zone, baseline) -> None:
    add_zone("acme.example", ZONE)
    dns_server.servfail_names.add("_dmarc.acme.example")
    found = _judge(dns_server, baseline)
    assert found["dmarc_policy"].status is Status.ERROR and "SERVFAIL" in found["dmarc_policy"].reason
    assert found["mx"].status is Status.PASS


def test_domain_without_baseline_passes_saying_so(dns_server, add_zone) -> None:
    add_zone("acme.example", ZONE)
    finding = _judge(dns_server, {})[""]
    assert finding.status is Status.PASS and finding.evidence["baseline"] is None


def test_captured_baseline_round_trips_and_matches(dns_server, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    facts = asyncio.run(DnsClient([dns_server.nameserver], timeout=0.6).collect_domain("acme.example", selectors=("s1",)))
    text = render_baseline("acme.example", capture(DomainState(facts.answers)), run_id="r1", taken=NOW)
    path = tmp_path / "captured.toml"
    path.write_text(text, encoding="utf-8")
    loaded = read_baseline_file(path, ("acme.example",))
    assert loaded["acme.example"].dmarc_policy == "reject"
    assert loaded["acme.example"].dkim_selectors == ("s1",)
    assert {f.status for f in _judge(dns_server, loaded).values()} == {Status.PASS}


def test_bad_baseline_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[domains."acme.example"]\ndmarc_policy = "strict"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.toml: domains.acme.example.dmarc_policy: must be one of"):
        read_baseline_file(path, ("acme.example",))
    path.write_text('[domains."other.example"]\nmx = []\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a domain of the tenant"):
        read_baseline_file(path, ("acme.example",))
