"""dmarc.missing against zones served over real DNS on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from checks.dmarc import dmarc_missing
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.dns import DnsClient
from scanner.model import Domain, Inventory, Status, Tenant
from scanner.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _judge(server: ZoneServer, *names: str, parked: tuple[str, ...] = ()) -> dict[str, object]:
    client = DnsClient([server.nameserver], timeout=0.6)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n) for n in names))

    facts = asyncio.run(gather())
    tenant = Tenant("acme", None, tuple(n for n in names if n not in parked), parked_domains=parked)
    domains = tuple(Domain(n, "acme", n in parked, None, f) for n, f in zip(names, facts))
    findings = evaluate(Inventory((tenant,), domains), [dmarc_missing], policy=Policy(), senders={}, now=NOW)
    return {f.subject: f for f in findings}


def test_domain_without_dmarc_fails_with_the_record_to_publish(dns_server, add_zone) -> None:
    add_zone("nodmarc.example", '@ TXT "v=spf1 -all"\n_dmarc TXT "some unrelated text"')
    finding = _judge(dns_server, "nodmarc.example")["nodmarc.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["records_seen"] == ["some unrelated text"]
    assert finding.evidence["publish"] == (
        '_dmarc.nodmarc.example. TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@nodmarc.example"'
    )


def test_parked_domain_is_told_to_reject(dns_server, add_zone) -> None:
    add_zone("parked.example", "")
    finding = _judge(dns_server, "parked.example", parked=("parked.example",))["parked.example"]
    assert finding.status is Status.FAIL and "p=reject" in finding.evidence["publish"]


def test_domain_with_dmarc_passes(dns_server, add_zone) -> None:
    add_zone("good.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@good.example"')
    finding = _judge(dns_server, "good.example")["good.example"]
    assert finding.status is Status.PASS


def test_version_tag_value_is_case_sensitive(dns_server, add_zone) -> None:
    add_zone("lower.example", '_dmarc TXT "v=dmarc1; p=reject"')
    assert _judge(dns_server, "lower.example")["lower.example"].status is Status.FAIL


def test_subdomain_inherits_the_organizational_record(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject"\nmail A 127.0.0.9')
    finding = _judge(dns_server, "mail.org.example")["mail.org.example"]
    assert finding.status is Status.PASS and finding.evidence["inherited"] is True


def test_servfail_gives_error_not_pass(dns_server, add_zone) -> None:
    add_zone("broken.example", '_dmarc TXT "v=DMARC1; p=reject"')
    dns_server.servfail_names.add("_dmarc.broken.example")
    finding = _judge(dns_server, "broken.example")["broken.example"]
    assert finding.status is Status.ERROR
    assert "SERVFAIL" in finding.reason


def test_timeout_gives_error_not_pass(dns_server, add_zone) -> None:
    add_zone("slow.example", '_dmarc TXT "v=DMARC1; p=reject"')
    dns_server.timeout_names.add("_dmarc.slow.example")
    finding = _judge(dns_server, "slow.example")["slow.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason
