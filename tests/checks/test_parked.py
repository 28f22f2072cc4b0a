"""parked.not_locked against zones served over real DNS on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from checks.evaluate import evaluate
from checks.parked import parked_not_locked
from checks.registry import Policy
from scanner.dns.client import DnsClient
from scanner.model import Domain, Finding, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
LOCKED = '@ MX 0 .\n@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject"'


def _judge(server: ZoneServer, *names: str, parked: tuple[str, ...]) -> dict[str, Finding]:
    client = DnsClient([server.nameserver], timeout=0.6)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n) for n in names))

    facts = asyncio.run(gather())
    tenant = Tenant("acme", None, tuple(n for n in names if n not in parked), parked_domains=parked)
    domains = tuple(Domain(n, "acme", n in parked, None, f) for n, f in zip(names, facts))
    findings = evaluate(Inventory((tenant,), domains), [parked_not_locked], policy=Policy(), senders={}, now=NOW)
    assert len(findings) == len(names)  # every subject in scope gets a result
    return {f.subject: f for f in findings}


def test_locked_parked_domain_passes(dns_server, add_zone) -> None:
    add_zone("old.example", LOCKED.replace("v=spf1 -all", "V=SPF1   -all"))
    finding = _judge(dns_server, "old.example", parked=("old.example",))["old.example"]
    assert finding.status is Status.PASS


def test_unlocked_parked_domain_fails_naming_what_is_missing(dns_server, add_zone) -> None:
    add_zone("old.example", '@ MX 10 mx.old.example.\n@ TXT "v=spf1 include:_spf.google.com ~all"\n'
             '_dmarc TXT "v=DMARC1; p=quarantine"')
    finding = _judge(dns_server, "old.example", parked=("old.example",))["old.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["missing"] == ["null MX (RFC 7505)", 'SPF "v=spf1 -all"', "DMARC p=reject"]
    assert finding.evidence["records_seen"] == {
        "mx": ["10 mx.old.example."],
        "spf": ["v=spf1 include:_spf.google.com ~all"],
        "dmarc": ["v=DMARC1; p=quarantine"],
    }
    assert finding.evidence["remove"] == ["old.example. MX 10 mx.old.example."]
    assert finding.evidence["publish"] == [
        "old.example. MX 0 .",
        'old.example. TXT "v=spf1 -all"',
        '_dmarc.old.example. TXT "v=DMARC1; p=reject; sp=reject; adkim=s; aspf=s"',
    ]


def test_empty_parked_domain_misses_all_three(dns_server, add_zone) -> None:
    add_zone("empty.example", "")
    finding = _judge(dns_server, "empty.example", parked=("empty.example",))["empty.example"]
    assert finding.status is Status.FAIL and len(finding.evidence["missing"]) == 3


def test_one_missing_piece_is_enough_to_fail(dns_server, add_zone) -> None:
    add_zone("two.example", LOCKED + '\n@ TXT "v=spf1 ip4:127.0.0.9 -all"')  # two SPF records
    add_zone("soft.example", LOCKED.replace("-all", "~all"))
    add_zone("dm.example", LOCKED.replace("p=reject", "p=none; sp=reject"))
    found = _judge(dns_server, "two.example", "soft.example", "dm.example", parked=("two.example", "soft.example", "dm.example"))
    assert found["two.example"].evidence["missing"] == ['SPF "v=spf1 -all"']
    assert found["soft.example"].evidence["missing"] == ['SPF "v=spf1 -all"']
    assert found["dm.example"].evidence["missing"] == ["DMARC p=reject"]


def test_parked_subdomain_inherits_the_organizational_subdomain_policy(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=none; sp=reject"\n'
             'old IN MX 0 .\nold IN TXT "v=spf1 -all"')
    finding = _judge(dns_server, "old.org.example", parked=("old.org.example",))["old.org.example"]
    assert finding.status is Status.PASS


def test_domain_not_parked_passes_as_not_parked(dns_server, add_zone) -> None:
    add_zone("live.example", '@ MX 10 mx.live.example.')
    finding = _judge(dns_server, "live.example", parked=())["live.example"]
    assert finding.status is Status.PASS and finding.evidence == {"parked": False}


def test_hostile_records_get_a_verdict(dns_server, add_zone) -> None:
    chunks = " ".join(f'"{"<script>" * 31}"' for _ in range(100))
    add_zone("evil.example", f'@ MX 0 .\n@ TXT "v=spf1 -all" {chunks}\n_dmarc TXT "v=DMARC1; p=reject\u00e9"')
    finding = _judge(dns_server, "evil.example", parked=("evil.example",))["evil.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["missing"] == ['SPF "v=spf1 -all"', "DMARC p=reject"]


def test_dmarc_servfail_gives_error(dns_server, add_zone) -> None:
    add_zone("broken.example", LOCKED)
    dns_server.servfail_names.add("_dmarc.broken.example")
    finding = _judge(dns_server, "broken.example", parked=("broken.example",))["broken.example"]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_organizational_dmarc_timeout_gives_error(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject"\nold IN MX 0 .\nold IN TXT "v=spf1 -all"')
    dns_server.timeout_names.add("_dmarc.org.example")
    finding = _judge(dns_server, "old.org.example", parked=("old.org.example",))["old.org.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason


def test_mx_timeout_gives_error(dns_server, add_zone) -> None:
    add_zone("slow.example", LOCKED)
    dns_server.timeout_names.add("slow.example")
    finding = _judge(dns_server, "slow.example", parked=("slow.example",))["slow.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason
