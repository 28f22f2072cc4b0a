"""DKIM checks against zones served over real DNS on loopback, with real RSA and Ed25519 keys."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from checks.dkim import dkim_missing, dkim_revoked, dkim_syntax, dkim_testing, dkim_weak_key, without_testing_flag
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
}
ALL = [dkim_missing, dkim_weak_key, dkim_revoked, dkim_testing, dkim_syntax]


def txt(text: str) -> str:
    """A TXT rdata in master-file syntax, split into 255-octet strings as a DNS host would."""
    data = text.encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join('"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in c) + '"'
                    for c in chunks)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    """Base64 public keys generated for this test run: RSA 1024 and 2048 (SubjectPublicKeyInfo), Ed25519 (raw)."""
    found = {}
    for bits in (1024, 2048):
        public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        found[f"rsa{bits}"] = base64.b64encode(der).decode()
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    found["ed25519"] = base64.b64encode(raw).decode()
    return found


def judge(
    server: ZoneServer,
    name: str,
    checks: list,
    *,
    senders: tuple[str, ...] = ("google",),
    dkim_selectors: tuple[str, ...] = (),
    parked: bool = False,
    policy: Policy | None = None,
) -> dict[tuple[str, str], object]:
    """Collect one domain over DNS and run the checks; findings keyed by (check id, item)."""
    tenant = Tenant("acme", None, () if parked else (name,), senders=senders,
                    parked_domains=(name,) if parked else (), dkim_selectors=dkim_selectors)
    selectors = {s for n in senders for s in SENDERS[n].dkim_selectors} | set(dkim_selectors)
    client = DnsClient([server.nameserver], timeout=0.6)
    facts = asyncio.run(client.collect_domain(name, selectors=() if parked else selectors))
    inventory = Inventory((tenant,), (Domain(name, "acme", parked, None, facts),))
    findings = evaluate(inventory, checks, policy=policy or Policy(), senders=SENDERS, now=NOW)
    return {(f.check, f.item): f for f in findings}


# dkim.missing

def test_missing_selector_fails_once_per_selector_with_the_record_to_publish(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa2048'])}\n"
                             's2._domainkey TXT "v=spf1 -all"')
    found = judge(dns_server, "acme.example", [dkim_missing], senders=("google", "sendgrid"))
    assert found[("dkim.missing", "google")].status is Status.PASS
    s1, s2 = found[("dkim.missing", "s1")], found[("dkim.missing", "s2")]
    assert s1.status is Status.FAIL and s1.evidence["outcome"] == "nxdomain" and s1.evidence["senders"] == ["sendgrid"]
    assert s1.evidence["publish"].startswith('s1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<base64')
    assert s2.status is Status.FAIL and s2.evidence["records_seen"] == ["v=spf1 -all"]  # not a key record


def test_selector_behind_a_cname_is_followed(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", "s1._domainkey CNAME s1.domainkey.u123.wl.sendgrid.test.\n"
                             "s2._domainkey CNAME s2.domainkey.u123.wl.sendgrid.test.")
    add_zone("sendgrid.test", f"s1.domainkey.u123.wl TXT {txt('k=rsa; p=' + keys['rsa2048'])}\n"
                              f"s2.domainkey.u123.wl TXT {txt('k=rsa; p=' + keys['rsa2048'])}")
    found = judge(dns_server, "acme.example", ALL, senders=("sendgrid",))
    assert {f.status for f in found.values()} == {Status.PASS}


def test_missing_lookup_failure_is_an_error_for_that_selector_only(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('p=' + keys['rsa2048'])}")
    dns_server.servfail_names.add("s1._domainkey.acme.example")
    dns_server.timeout_names.add("s2._domainkey.acme.example")
    found = judge(dns_server, "acme.example", [dkim_missing], senders=("google", "sendgrid"))
    assert found[("dkim.missing", "google")].status is Status.PASS
    assert found[("dkim.missing", "s1")].status is Status.ERROR and "SERVFAIL" in found[("dkim.missing", "s1")].reason
    assert found[("dkim.missing", "s2")].status is Status.ERROR and "timeout" in found[("dkim.missing", "s2")].reason


def test_missing_with_no_known_selector_is_an_error_not_a_pass(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    found = judge(dns_server, "acme.example", [dkim_missing], senders=("amazon-ses",))
    assert found[("dkim.missing", "")].status is Status.ERROR and "dkim_selectors" in found[("dkim.missing", "")].reason


def test_tenant_selectors_are_checked_too(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"abcdef._domainkey TXT {txt('p=' + keys['rsa2048'])}")
    found = judge(dns_server, "acme.example", [dkim_missing], senders=("amazon-ses",), dkim_selectors=("abcdef", "zzz"))
    assert found[("dkim.missing", "abcdef")].status is Status.PASS
    assert found[("dkim.missing", "zzz")].status is Status.FAIL


def test_parked_domain_needs_no_key(dns_server, add_zone) -> None:
    add_zone("old.example", "")
    found = judge(dns_server, "old.example", ALL, parked=True)
    assert {f.status for f in found.values()} == {Status.PASS}


# dkim.weak_key

def test_1024_bit_key_is_weak_under_the_default_policy(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa1024'])}")
    finding = judge(dns_server, "acme.example", [dkim_weak_key])[("dkim.weak_key", "google")]
    assert finding.status is Status.FAIL
    assert finding.evidence["bits"] == [1024] and finding.evidence["minimum_bits"] == 2048
    assert "2048-bit RSA key" in finding.evidence["publish"]


def test_2048_bit_and_ed25519_keys_are_strong_enough(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa2048'])}\n"
                             f"s1._domainkey TXT {txt('v=DKIM1; k=ed25519; p=' + keys['ed25519'])}")
    found = judge(dns_server, "acme.example", [dkim_weak_key], senders=("google", "sendgrid"))
    assert found[("dkim.weak_key", "google")].status is Status.PASS
    assert found[("dkim.weak_key", "google")].evidence["bits"] == [2048]
    assert found[("dkim.weak_key", "s1")].status is Status.PASS
    assert ("dkim.weak_key", "s2") not in found  # no key there: dkim.missing's business


def test_weak_key_threshold_comes_from_policy(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('p=' + keys['rsa1024'])}")
    lax = judge(dns_server, "acme.example", [dkim_weak_key], policy=Policy(dkim_min_bits=1024))
    assert lax[("dkim.weak_key", "google")].status is Status.PASS


def test_weak_key_lookup_failure_is_an_error(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('p=' + keys['rsa1024'])}")
    dns_server.servfail_names.add("google._domainkey.acme.example")
    finding = judge(dns_server, "acme.example", [dkim_weak_key])[("dkim.weak_key", "google")]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_weak_key_with_no_key_published_passes_with_a_note(dns_server, add_zone) -> None:
    add_zone("acme.example", "")
    finding = judge(dns_server, "acme.example", [dkim_weak_key])[("dkim.weak_key", "")]
    assert finding.status is Status.PASS and finding.evidence["selectors_checked"] == ["google"]


# dkim.revoked

def test_empty_p_is_revoked(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM1; k=rsa; p="\n'
                             f"s1._domainkey TXT {txt('v=DKIM1; p=' + keys['rsa2048'])}")
    found = judge(dns_server, "acme.example", [dkim_revoked, dkim_syntax], senders=("google", "sendgrid"))
    assert found[("dkim.revoked", "google")].status is Status.FAIL
    assert found[("dkim.revoked", "google")].evidence["records_seen"] == ["v=DKIM1; k=rsa; p="]
    assert found[("dkim.revoked", "s1")].status is Status.PASS
    assert found[("dkim.syntax", "google")].status is Status.PASS  # revocation is not a syntax error


def test_revoked_lookup_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM1; p="')
    dns_server.timeout_names.add("google._domainkey.acme.example")
    finding = judge(dns_server, "acme.example", [dkim_revoked])[("dkim.revoked", "google")]
    assert finding.status is Status.ERROR and "timeout" in finding.reason


# dkim.testing

def test_testing_flag_fails_with_the_record_without_it(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; t=y:s; p=' + keys['rsa2048'])}")
    finding = judge(dns_server, "acme.example", [dkim_testing])[("dkim.testing", "google")]
    assert finding.status is Status.FAIL
    assert finding.evidence["publish"] == zone_txt("google._domainkey.acme.example", f"v=DKIM1; t=s; p={keys['rsa2048']}")
    assert finding.evidence["publish"].count('" "') == 1  # over 255 octets: two strings


def test_strict_flag_alone_is_not_testing(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; t=s; p=' + keys['rsa2048'])}")
    assert judge(dns_server, "acme.example", [dkim_testing])[("dkim.testing", "google")].status is Status.PASS


def test_testing_lookup_servfail_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM1; t=y; p="')
    dns_server.servfail_names.add("google._domainkey.acme.example")
    assert judge(dns_server, "acme.example", [dkim_testing])[("dkim.testing", "google")].status is Status.ERROR


def test_without_testing_flag() -> None:
    assert without_testing_flag("v=DKIM1; t=y; p=AB") == "v=DKIM1; p=AB"
    assert without_testing_flag("v=DKIM1; t = s:y ; p=AB") == "v=DKIM1; t=s; p=AB"


# dkim.syntax

def test_undecodable_key_is_a_syntax_failure(dns_server, add_zone) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAA"')
    finding = judge(dns_server, "acme.example", [dkim_syntax])[("dkim.syntax", "google")]
    assert finding.status is Status.FAIL
    assert any("base64" in p or "DER" in p for p in finding.evidence["problems"])
    assert finding.evidence["publish"].startswith('google._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<')


def test_two_key_records_at_one_selector_is_a_syntax_failure(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('p=' + keys['rsa2048'])}\n"
                             f"google._domainkey TXT {txt('p=' + keys['rsa1024'])}")
    finding = judge(dns_server, "acme.example", [dkim_syntax])[("dkim.syntax", "google")]
    assert finding.status is Status.FAIL and "2 TXT records" in finding.evidence["problems"][0]


def test_valid_records_pass_syntax(dns_server, add_zone, keys) -> None:
    add_zone("acme.example", f"google._domainkey TXT {txt('v=DKIM1; h=sha256; s=email; p=' + keys['rsa2048'])}\n"
                             f"s1._domainkey TXT {txt('v=DKIM1; k=ed25519; p=' + keys['ed25519'])}")
    found = judge(dns_server, "acme.example", [dkim_syntax], senders=("google", "sendgrid"))
    assert found[("dkim.syntax", "google")].status is Status.PASS
    assert found[("dkim.syntax", "s1")].status is Status.PASS


def test_syntax_lookup_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", 'google._domainkey TXT "v=DKIM2; p="')
    dns_server.timeout_names.add("google._domainkey.acme.example")
    assert judge(dns_server, "acme.example", [dkim_syntax])[("dkim.syntax", "google")].status is Status.ERROR


# hostile data

def test_hostile_key_records_get_verdicts_not_crashes(dns_server, add_zone, keys) -> None:
    long_note = "v=DKIM1; n=" + "x" * 255 * 40 + "; p=" + keys["rsa2048"]  # ~10 KB: many strings, TCP
    add_zone("acme.example",
             f"google._domainkey TXT {txt(long_note)}\n"
             f"s1._domainkey TXT {txt('v=DKIM1; n=caf' + chr(233) + '; p=' + keys['rsa2048'])}\n"
             f"s2._domainkey TXT {txt('v=DKIM1; k=<script>alert(1)</script>; p=' + keys['rsa2048'])}")
    found = judge(dns_server, "acme.example", ALL, senders=("google", "sendgrid"))
    assert all(f.status is not Status.ERROR for f in found.values())
    assert found[("dkim.syntax", "google")].status is Status.PASS
    assert found[("dkim.weak_key", "google")].evidence["bits"] == [2048]
    assert found[("dkim.syntax", "s1")].status is Status.FAIL
    script = found[("dkim.syntax", "s2")]
    assert script.status is Status.FAIL and "not a known key type" in script.evidence["problems"][0]
