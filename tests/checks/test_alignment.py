"""alignment.sender_unaligned over DKIM keys served on loopback DNS and a stand-in SPF evaluation."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from checks.alignment import sender_unaligned
from checks.evaluate import evaluate
from checks.registry import Policy, Sender
from scanner.dns.dkim import zone_txt
from scanner.dns.client import DnsClient
from scanner.model import Domain, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
SENDERS = {
    "google": Sender("google", "Google Workspace", ("_spf.google.com",), ("google",), return_path="customer"),
    "sendgrid": Sender("sendgrid", "SendGrid", ("sendgrid.net",), ("s1", "s2"), return_path="own"),
    "amazon-ses": Sender("amazon-ses", "Amazon SES", ("amazonses.com",), (), return_path="own"),
    "mailcow": Sender("mailcow", "mailcow", (), ("dkim",), return_path="customer"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class SpfStandIn:
    """The shape of scanner.spf.SpfEvaluation, until the SPF branch lands."""

    record: str | None
    includes: tuple[str, ...] = ()
    failure: str | None = None


@pytest.fixture(scope="module")
def key() -> str:
    """A real 2048-bit RSA public key (SubjectPublicKeyInfo, base64)."""
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def record(text: str) -> str:
    """A TXT rdata split into strings of at most 255 octets."""
    return " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


def judge(
    server: ZoneServer,
    name: str,
    senders: tuple[str, ...],
    spf: SpfStandIn | None,
    *,
    dkim_selectors: tuple[str, ...] = (),
    parked: bool = False,
) -> dict[str, object]:
    """Collect a domain's DKIM over DNS, attach the SPF evaluation, run the check; findings by sender."""
    tenant = Tenant("acme", None, () if parked else (name,), senders=senders,
                    parked_domains=(name,) if parked else (), dkim_selectors=dkim_selectors)
    selectors = {s for n in senders if n in SENDERS for s in SENDERS[n].dkim_selectors} | set(dkim_selectors)
    facts = asyncio.run(DnsClient([server.nameserver], timeout=0.6).collect_domain(name, selectors=selectors))
    facts = dataclasses.replace(facts, spf=spf)
    inventory = Inventory((tenant,), (Domain(name, "acme", parked, None, facts),))
    findings = evaluate(inventory, [sender_unaligned], policy=Policy(), senders=SENDERS, now=NOW)
    return {f.item: f for f in findings}


def test_spf_include_with_customer_return_path_aligns(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    spf = SpfStandIn("v=spf1 include:_spf.google.com -all", ("_spf.google.com",))
    finding = judge(dns_server, "acme.example", ("google",), spf)["google"]
    assert finding.status is Status.PASS and finding.evidence["spf"]["state"] == "aligned"
    assert finding.evidence["dkim"]["state"] == "not aligned"


def test_valid_dkim_key_aligns_a_sender_with_its_own_return_path(dns_server, add_zone, key) -> None:
    add_zone("acme.example", f"s1._domainkey TXT {record('v=DKIM1; k=rsa; p=' + key)}")
    spf = SpfStandIn("v=spf1 include:sendgrid.net -all", ("sendgrid.net",))
    finding = judge(dns_server, "acme.example", ("sendgrid",), spf)["sendgrid"]
    assert finding.status is Status.PASS and finding.evidence["dkim"]["state"] == "aligned"
    assert finding.evidence["spf"]["state"] == "not aligned"  # its bounces use its own domain


def test_sender_with_neither_side_fails_and_says_what_to_publish(dns_server, add_zone) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM1; p="')  # revoked: no valid key
    spf = SpfStandIn("v=spf1 include:spf.protection.outlook.com -all", ("spf.protection.outlook.com",))
    finding = judge(dns_server, "acme.example", ("google",), spf)["google"]
    assert finding.status is Status.FAIL
    assert finding.evidence["missing"] == ["spf", "dkim"]
    assert "does not include _spf.google.com" in finding.evidence["spf"]["why"]
    assert finding.evidence["publish"].startswith('google._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<')
    assert finding.evidence["alternatives"] == [
        'acme.example. TXT "v=spf1 include:spf.protection.outlook.com include:_spf.google.com -all"'
    ]


def test_own_return_path_sender_without_dkim_fails_even_with_its_include(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    spf = SpfStandIn("v=spf1 include:sendgrid.net ~all", ("sendgrid.net",))
    finding = judge(dns_server, "acme.example", ("sendgrid",), spf)["sendgrid"]
    assert finding.status is Status.FAIL and "own return-path" in finding.evidence["spf"]["why"]
    assert finding.evidence["alternatives"] == []  # SPF cannot be fixed by publishing anything


def test_one_result_per_declared_sender(dns_server, add_zone, key) -> None:
    add_zone("acme.example", f"google._domainkey TXT {record('p=' + key)}")
    found = judge(dns_server, "acme.example", ("google", "sendgrid", "unknown-crm"), SpfStandIn(None))
    assert set(found) == {"google", "sendgrid", "unknown-crm"}
    assert found["google"].status is Status.PASS and found["sendgrid"].status is Status.FAIL
    assert found["unknown-crm"].status is Status.ERROR and "catalogue" in found["unknown-crm"].reason


def test_failed_spf_evaluation_without_dkim_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    spf = SpfStandIn("v=spf1 include:broken.test -all", ("broken.test",), failure="SERVFAIL at broken.test")
    finding = judge(dns_server, "acme.example", ("google",), spf)["google"]
    assert finding.status is Status.ERROR and "SERVFAIL at broken.test" in finding.reason


def test_missing_spf_evaluation_without_dkim_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    finding = judge(dns_server, "acme.example", ("google",), None)["google"]
    assert finding.status is Status.ERROR and "not collected" in finding.reason


def test_failed_spf_evaluation_with_aligned_dkim_passes(dns_server, add_zone, key) -> None:
    add_zone("acme.example", f"google._domainkey TXT {record('p=' + key)}")
    finding = judge(dns_server, "acme.example", ("google",), SpfStandIn(None, failure="timeout"))["google"]
    assert finding.status is Status.PASS


def test_dkim_timeout_with_unaligned_spf_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    dns_server.timeout_names.add("s1._domainkey.acme.example")
    finding = judge(dns_server, "acme.example", ("sendgrid",), SpfStandIn(None))["sendgrid"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason


def test_dkim_servfail_with_unaligned_spf_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    dns_server.servfail_names.add("google._domainkey.acme.example")
    finding = judge(dns_server, "acme.example", ("google",), SpfStandIn("v=spf1 -all"))["google"]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_sender_without_catalogue_selectors_uses_the_tenant_selectors(dns_server, add_zone, key) -> None:
    add_zone("acme.example", f"tok3n._domainkey TXT {record('p=' + key)}")
    unknown = judge(dns_server, "acme.example", ("amazon-ses",), SpfStandIn(None))["amazon-ses"]
    assert unknown.status is Status.ERROR and "dkim_selectors" in unknown.reason
    known = judge(dns_server, "acme.example", ("amazon-ses",), SpfStandIn(None), dkim_selectors=("tok3n",))
    assert known["amazon-ses"].status is Status.PASS


def test_sender_authorized_by_mx_or_a_cannot_be_judged_on_spf_alone(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    finding = judge(dns_server, "acme.example", ("mailcow",), SpfStandIn("v=spf1 mx -all"))["mailcow"]
    assert finding.status is Status.ERROR and "names no SPF include" in finding.reason


def test_hostile_key_records_do_not_align(dns_server, add_zone, key) -> None:
    noise = "v=DKIM1; n=" + "x" * 255 * 20 + "; k=<script>alert(1)</script>; p=" + key
    add_zone("acme.example", f"google._domainkey TXT {record(noise)}\n"
                             f"s1._domainkey TXT {record('v=DKIM1; p=' + key[:-8] + 'caf' + chr(233))}")
    found = judge(dns_server, "acme.example", ("google", "sendgrid"), SpfStandIn("v=spf1 -all"))
    assert found["google"].status is Status.FAIL and found["sendgrid"].status is Status.FAIL


def test_key_in_testing_mode_does_not_align(dns_server, add_zone, key) -> None:
    add_zone("acme.example", f"google._domainkey TXT {record('v=DKIM1; t=y; p=' + key)}")
    finding = judge(dns_server, "acme.example", ("google",), SpfStandIn(None))["google"]
    assert finding.status is Status.FAIL and "testing mode" in finding.evidence["dkim"]["why"]
    assert finding.evidence["publish"] == zone_txt("google._domainkey.acme.example", f"v=DKIM1; p={key}")


def test_parked_domain_passes_without_senders(dns_server, add_zone) -> None:
    add_zone("old.example", "")
    finding = judge(dns_server, "old.example", ("google",), None, parked=True)[""]
    assert finding.status is Status.PASS


def _traffic(name: str, *sources: tuple[str, str, int, int]) -> dict[str, object]:
    from scanner.model import DomainTraffic, SourceTraffic

    return {name: DomainTraffic(name, NOW, NOW, 3, tuple(
        SourceTraffic(name, ip, messages, passed, passed, 0, NOW, NOW, 1, ptr, bool(ptr)) for ip, ptr, messages, passed in sources
    ))}


def test_observed_traffic_outweighs_dns_both_ways(dns_server, add_zone, key) -> None:
    """A sender whose DNS looks right but whose mail fails at receivers fails; one that aligns there passes."""
    add_zone("acme.example", f"s1._domainkey TXT {record('v=DKIM1; k=rsa; p=' + key)}")
    senders = {**SENDERS, "sendgrid": dataclasses.replace(SENDERS["sendgrid"], ptr_patterns=("*.sendgrid.net",)),
               "google": dataclasses.replace(SENDERS["google"], ip_ranges=("209.85.128.0/17",))}
    tenant = Tenant("acme", None, ("acme.example",), senders=("sendgrid", "google"))
    facts = asyncio.run(DnsClient([dns_server.nameserver], timeout=0.6).collect_domain(
        "acme.example", selectors={"s1", "s2", "google"}))
    facts = dataclasses.replace(facts, spf=SpfStandIn("v=spf1 include:sendgrid.net -all", ("sendgrid.net",)))
    inventory = Inventory((tenant,), (Domain("acme.example", "acme", False, None, facts),),
                          traffic=_traffic("acme.example", ("167.89.1.1", "o1.ptr.sendgrid.net", 400, 100),
                                           ("209.85.220.41", "", 50, 50)))
    found = {f.item: f for f in evaluate(inventory, [sender_unaligned], policy=Policy(), senders=senders, now=NOW)}
    sendgrid, google = found["sendgrid"], found["google"]
    assert sendgrid.status is Status.FAIL  # a valid key at s1 by DNS, yet 300 of 400 messages failed DMARC
    assert (sendgrid.evidence["messages"], sendgrid.evidence["dmarc_fail"]) == (400, 300)
    assert "aggregate reports" in sendgrid.evidence["basis"]
    assert google.status is Status.PASS and google.evidence["dmarc_pass"] == 50  # no google key by DNS
