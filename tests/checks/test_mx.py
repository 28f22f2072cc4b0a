"""mx.missing and mx.unexpected against zones served over real DNS on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from checks.evaluate import evaluate
from checks.mx import mx_missing, mx_unexpected
from checks.registry import Policy, Sender
from scanner.dns.client import DnsClient
from scanner.model import Domain, Finding, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
SENDERS = {
    "google": Sender("google", mx_patterns=("smtp.google.com", "*.aspmx.l.google.com")),
    "trekmail": Sender("trekmail", mx_patterns=("mail.trekmail.net",)),
    "sendgrid": Sender("sendgrid", spf_include=("sendgrid.net",)),
}


def _judge(
    server: ZoneServer, check, *names: str, parked: tuple[str, ...] = (), senders: tuple[str, ...] = ("google",)
) -> dict[str, Finding]:
    client = DnsClient([server.nameserver], timeout=0.6)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n) for n in names))

    facts = asyncio.run(gather())
    tenant = Tenant("acme", None, tuple(n for n in names if n not in parked), senders=senders, parked_domains=parked)
    domains = tuple(Domain(n, "acme", n in parked, None, f) for n, f in zip(names, facts))
    findings = evaluate(Inventory((tenant,), domains), [check], policy=Policy(), senders=SENDERS, now=NOW)
    assert len(findings) == len(names)  # every subject in scope gets a result
    return {f.subject: f for f in findings}


# --- mx.missing -------------------------------------------------------------------------------------


def test_domain_without_mx_fails_with_the_record_to_publish(dns_server, add_zone) -> None:
    add_zone("nomx.example", "@ A 127.0.0.10")
    finding = _judge(dns_server, mx_missing, "nomx.example")["nomx.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["outcome"] == "nodata"
    assert finding.evidence["publish"] == ["nomx.example. MX 10 smtp.google.com."]


def test_domain_that_does_not_exist_fails(dns_server, add_zone) -> None:
    add_zone("parent.example", "")
    finding = _judge(dns_server, mx_missing, "gone.parent.example")["gone.parent.example"]
    assert finding.status is Status.FAIL and finding.evidence["outcome"] == "nxdomain"


def test_domain_with_mx_passes(dns_server, add_zone) -> None:
    add_zone("good.example", "@ MX 10 smtp.google.com.")
    finding = _judge(dns_server, mx_missing, "good.example")["good.example"]
    assert finding.status is Status.PASS and finding.evidence["hosts"] == ["smtp.google.com"]


def test_parked_domain_with_null_mx_passes(dns_server, add_zone) -> None:
    add_zone("parked.example", "@ MX 0 .")
    finding = _judge(dns_server, mx_missing, "parked.example", parked=("parked.example",))["parked.example"]
    assert finding.status is Status.PASS and finding.evidence["null_mx"] is True


def test_parked_domain_without_mx_is_told_to_publish_a_null_mx(dns_server, add_zone) -> None:
    add_zone("parked.example", "")
    finding = _judge(dns_server, mx_missing, "parked.example", parked=("parked.example",))["parked.example"]
    assert finding.status is Status.FAIL and finding.evidence["publish"] == ["parked.example. MX 0 ."]


def test_null_mx_on_a_domain_not_declared_parked_fails(dns_server, add_zone) -> None:
    add_zone("refuses.example", "@ MX 0 .")
    finding = _judge(dns_server, mx_missing, "refuses.example")["refuses.example"]
    assert finding.status is Status.FAIL and finding.evidence["null_mx"] is True
    assert "parked_domains" in finding.evidence["or_declare"]


def test_null_mx_mixed_with_other_mx_fails(dns_server, add_zone) -> None:
    add_zone("mixed.example", "@ MX 0 .\n@ MX 10 smtp.google.com.")
    finding = _judge(dns_server, mx_missing, "mixed.example", parked=("mixed.example",))["mixed.example"]
    assert finding.status is Status.FAIL and "RFC 7505" in finding.evidence["problem"]
    assert finding.evidence["publish"] == ["mixed.example. MX 0 ."]


def test_mx_servfail_gives_error_not_pass(dns_server, add_zone) -> None:
    add_zone("broken.example", "@ MX 10 smtp.google.com.")
    dns_server.servfail_names.add("broken.example")
    finding = _judge(dns_server, mx_missing, "broken.example")["broken.example"]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_mx_timeout_gives_error_not_pass(dns_server, add_zone) -> None:
    add_zone("slow.example", "@ MX 10 smtp.google.com.")
    dns_server.timeout_names.add("slow.example")
    finding = _judge(dns_server, mx_missing, "slow.example")["slow.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason


# --- mx.unexpected ----------------------------------------------------------------------------------


def test_mx_host_of_no_declared_sender_fails(dns_server, add_zone) -> None:
    add_zone("leak.example", "@ MX 10 alt1.aspmx.l.google.com.\n@ MX 20 mx.attacker.example.")
    finding = _judge(dns_server, mx_unexpected, "leak.example")["leak.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["unexpected"] == ["mx.attacker.example"]
    assert finding.evidence["remove"] == ["leak.example. MX 20 mx.attacker.example."]
    assert finding.evidence["publish"] == ["leak.example. MX 10 alt1.aspmx.l.google.com."]


def test_mx_hosts_matching_declared_patterns_pass_case_and_dot_insensitively(dns_server, add_zone) -> None:
    add_zone("good.example", "@ MX 1 SMTP.Google.COM.\n@ MX 5 alt2.aspmx.l.google.com.\n@ MX 9 mail.trekmail.net.")
    finding = _judge(dns_server, mx_unexpected, "good.example", senders=("google", "trekmail"))["good.example"]
    assert finding.status is Status.PASS


def test_only_mx_patterns_of_declared_senders_count(dns_server, add_zone) -> None:
    add_zone("other.example", "@ MX 10 mail.trekmail.net.")
    finding = _judge(dns_server, mx_unexpected, "other.example", senders=("google",))["other.example"]
    assert finding.status is Status.FAIL and finding.evidence["publish"] == ["other.example. MX 10 smtp.google.com."]


def test_without_declared_mx_patterns_the_check_is_unsupported(dns_server, add_zone) -> None:
    add_zone("nopat.example", "@ MX 10 mx.nopat.example.")
    finding = _judge(dns_server, mx_unexpected, "nopat.example", senders=("sendgrid",))["nopat.example"]
    assert finding.status is Status.UNSUPPORTED and "mx_patterns" in finding.reason


def test_null_mx_has_nothing_unexpected(dns_server, add_zone) -> None:
    add_zone("parked.example", "@ MX 0 .")
    finding = _judge(dns_server, mx_unexpected, "parked.example", parked=("parked.example",))["parked.example"]
    assert finding.status is Status.PASS


def test_unexpected_mx_servfail_gives_error(dns_server, add_zone) -> None:
    add_zone("broken.example", "@ MX 10 mx.attacker.example.")
    dns_server.servfail_names.add("broken.example")
    assert _judge(dns_server, mx_unexpected, "broken.example")["broken.example"].status is Status.ERROR


def test_hostile_mx_data_gets_a_verdict(dns_server, add_zone) -> None:
    hosts = "\n".join(f"@ MX {i} {'a' * 60}{i}.{'b' * 60}.{'c' * 60}.example." for i in range(300))
    add_zone("many.example", hosts + '\n@ MX 7 \\<script\\>.example.')
    findings = _judge(dns_server, mx_unexpected, "many.example")
    finding = findings["many.example"]
    assert finding.status is Status.FAIL and len(finding.evidence["unexpected"]) == 301
    assert _judge(dns_server, mx_missing, "many.example")["many.example"].status is Status.PASS
