"""domain.nxdomain: a configured domain whose apex does not exist, and every other DNS check resting on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from checks.domain import domain_nxdomain
from checks.evaluate import evaluate
from checks.registry import Policy, load_checks
from scanner.dns.client import DnsClient
from scanner.model import Domain, Inventory, Scope, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _judge(server: ZoneServer, name: str, checks: list) -> dict[str, object]:
    facts = asyncio.run(DnsClient([server.nameserver], timeout=0.6).collect_domain(name))
    inventory = Inventory((Tenant("acme", None, (name,)),), (Domain(name, "acme", False, None, facts),))
    findings = evaluate(inventory, checks, policy=Policy(), senders={}, now=NOW, scopes=(Scope.DOMAIN,))
    return {f.check: f for f in findings if not f.item or f.check == "domain.nxdomain"}


def test_a_nonexistent_apex_fails_with_the_question_server_and_parent_soa(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "v=spf1 -all"')
    finding = _judge(dns_server, "acme-typo.example", [domain_nxdomain])["domain.nxdomain"]
    assert finding.status is Status.FAIL
    assert finding.evidence["question"] in ("acme-typo.example MX", "acme-typo.example TXT")
    assert finding.evidence["answered_by"] == dns_server.nameserver
    assert finding.evidence["closest_existing_zone"] == "example"
    assert finding.evidence["closest_existing_zone_soa"].startswith("ns1.example. hostmaster.example.")


def test_an_existing_apex_passes_and_a_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    add_zone("slow.example", "")
    dns_server.timeout_names.update({"slow.example"})
    assert _judge(dns_server, "acme.example", [domain_nxdomain])["domain.nxdomain"].status is Status.PASS
    slow = _judge(dns_server, "slow.example", [domain_nxdomain])["domain.nxdomain"]
    assert slow.status is Status.ERROR and "timeout" in slow.reason


def test_a_nonexistent_domain_fails_once_and_every_other_dns_check_names_it(dns_server) -> None:
    # The case: spf.missing, dmarc.missing, mx.missing, dkim.missing each told the operator to publish
    # a record in a zone that does not exist. Now only domain.nxdomain fails.
    checks = [c for c in load_checks() if c.meta.scope is Scope.DOMAIN]
    found = _judge(dns_server, "gone.example", checks)
    root = found["domain.nxdomain"]
    assert root.status is Status.FAIL
    assert [c for c, f in found.items() if f.status is Status.FAIL] == ["domain.nxdomain"]
    for check_id in ("spf.missing", "dmarc.missing", "mx.missing"):
        assert found[check_id].status is Status.SKIPPED and found[check_id].caused_by == root.id, check_id
