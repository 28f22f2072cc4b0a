"""tlsrpt.missing against zones served over real DNS on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from checks.evaluate import evaluate
from checks.registry import Policy
from checks.tlsrpt import tlsrpt_missing, tlsrpt_problems
from scanner.dns.client import DnsClient
from scanner.model import Domain, Finding, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
STS = '_mta-sts TXT "v=STSv1; id=1"\n'


def _judge(server: ZoneServer, *names: str) -> dict[str, Finding]:
    """Judge over DNS only: tlsrpt.missing reads the _mta-sts record, not the fetched policy."""
    client = DnsClient([server.nameserver], timeout=0.6)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n) for n in names))

    facts = asyncio.run(gather())
    domains = tuple(Domain(n, "acme", False, None, f) for n, f in zip(names, facts))
    findings = evaluate(
        Inventory((Tenant("acme", None, names),), domains), [tlsrpt_missing], policy=Policy(), senders={}, now=NOW
    )
    assert len(findings) == len(names)
    return {f.subject: f for f in findings}


def test_mta_sts_without_tlsrpt_fails_with_the_record_to_publish(dns_server, add_zone) -> None:
    add_zone("norpt.example", STS + '_smtp._tls TXT "some other text"')
    finding = _judge(dns_server, "norpt.example")["norpt.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["records_seen"] == ["some other text"]
    assert finding.evidence["publish"] == '_smtp._tls.norpt.example. TXT "v=TLSRPTv1; rua=mailto:tls-reports@norpt.example"'


def test_valid_tlsrpt_passes(dns_server, add_zone) -> None:
    add_zone("good.example", STS + '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@good.example,https://rpt.good.example/v1"')
    assert _judge(dns_server, "good.example")["good.example"].status is Status.PASS


def test_without_mta_sts_the_rule_does_not_apply(dns_server, add_zone) -> None:
    add_zone("plain.example", "")
    finding = _judge(dns_server, "plain.example")["plain.example"]
    assert finding.status is Status.PASS and finding.evidence["mta_sts_published"] is False


def test_two_records_fail(dns_server, add_zone) -> None:
    add_zone("two.example", STS + '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:a@two.example"\n'
             '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:b@two.example"')
    finding = _judge(dns_server, "two.example")["two.example"]
    assert finding.status is Status.FAIL and finding.evidence["problem"] == "more than one v=TLSRPTv1 record"


def test_record_without_rua_fails(dns_server, add_zone) -> None:
    add_zone("norua.example", STS + '_smtp._tls TXT "v=TLSRPTv1;"')
    finding = _judge(dns_server, "norua.example")["norua.example"]
    assert finding.status is Status.FAIL and finding.evidence["problems"] == ["no rua= field"]


def test_version_is_case_sensitive(dns_server, add_zone) -> None:
    add_zone("lower.example", STS + '_smtp._tls TXT "v=tlsrptv1; rua=mailto:a@lower.example"')
    assert _judge(dns_server, "lower.example")["lower.example"].status is Status.FAIL


@pytest.mark.parametrize(
    "rua",
    ["ftp://rpt.example/x", "mailto:nobody", "https:rpt.example", "javascript:alert(1)", "mailto:<script>@x"],
)
def test_bad_report_destinations_are_named(rua: str) -> None:
    assert tlsrpt_problems(f"v=TLSRPTv1; rua={rua}") != []


def test_hostile_record_gets_a_verdict(dns_server, add_zone) -> None:
    chunks = " ".join(f'"{"<script>" * 28}"' for _ in range(200))  # ~50 KB, many 255-byte strings
    add_zone("hostile.example", STS + f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:" {chunks}')
    finding = _judge(dns_server, "hostile.example")["hostile.example"]
    assert finding.status is Status.FAIL and finding.evidence["problem"] == "invalid v=TLSRPTv1 record"


def test_tlsrpt_servfail_gives_error(dns_server, add_zone) -> None:
    add_zone("broken.example", STS + '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:a@broken.example"')
    dns_server.servfail_names.add("_smtp._tls.broken.example")
    finding = _judge(dns_server, "broken.example")["broken.example"]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_mta_sts_timeout_gives_error(dns_server, add_zone) -> None:
    add_zone("slow.example", STS + '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:a@slow.example"')
    dns_server.timeout_names.add("_mta-sts.slow.example")
    finding = _judge(dns_server, "slow.example")["slow.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason
