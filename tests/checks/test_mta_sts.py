"""mta_sts.policy_invalid and mta_sts.mx_mismatch over real DNS and real HTTPS on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from checks.evaluate import evaluate
from checks.mta_sts import mta_sts_mx_mismatch, mta_sts_policy_invalid
from checks.registry import Policy
from scanner.dns.client import DnsClient
from scanner.model import Domain, Finding, Inventory, Status, Tenant
from scanner.dns.mtasts import PolicyFetcher
from scanner.loopback.policyserver import LoopbackCA, PolicyResponse, PolicyServer
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
HOSTS = ["mta-sts.good.example", "mta-sts.bad.example", "mta-sts.testing.example", "mta-sts.none.example"]


def _policy(mode: str, *mx: str) -> str:
    return "version: STSv1\nmode: " + mode + "\n" + "".join(f"mx: {m}\n" for m in mx) + "max_age: 604800\n"


@pytest.fixture(scope="module")
def ca() -> LoopbackCA:
    return LoopbackCA()


@pytest.fixture
def bundle(ca: LoopbackCA, tmp_path: Path) -> Path:
    return ca.write(tmp_path / "ca.pem")


@pytest.fixture
def policy_server(ca: LoopbackCA) -> Iterator[PolicyServer]:
    """An HTTPS server on 127.0.0.1 with a certificate naming the policy hosts in HOSTS."""
    with PolicyServer({}, ca.server_context(HOSTS)) as server:
        yield server


def _zone(add_zone, name: str, mx: str = "@ MX 10 mx1.{d}.\n@ MX 20 a.mx.{d}.", extra: str = "") -> None:
    records = mx.format(d=name) + f'\n_mta-sts TXT "v=STSv1; id=1"\nmta-sts A 127.0.0.1\n{extra}'
    add_zone(name, records)


def _judge(dns: ZoneServer, https: PolicyServer, bundle: Path, check, *names: str, timeout: float = 2.0) -> dict[str, Finding]:
    client = DnsClient([dns.nameserver], timeout=0.6)
    fetcher = PolicyFetcher(port=https.port, ca_bundle=bundle, timeout=timeout)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n, policies=fetcher) for n in names))

    facts = asyncio.run(gather())
    tenant = Tenant("acme", None, names)
    domains = tuple(Domain(n, "acme", False, None, f) for n, f in zip(names, facts))
    findings = evaluate(Inventory((tenant,), domains), [check], policy=Policy(), senders={}, now=NOW)
    assert len(findings) == len(names)  # every subject in scope gets a result
    return {f.subject: f for f in findings}


# --- mta_sts.policy_invalid --------------------------------------------------------------------------


def test_valid_policy_passes(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(_policy("enforce", "mx1.good.example", "*.mx.good.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "good.example")["good.example"]
    assert finding.status is Status.PASS and finding.evidence["mode"] == "enforce"


def test_domain_without_mta_sts_passes_as_not_published(dns_server, add_zone, policy_server, bundle) -> None:
    add_zone("plain.example", '@ MX 10 mx.plain.example.\n_mta-sts TXT "v=STSv2; id=1"')
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "plain.example")["plain.example"]
    assert finding.status is Status.PASS and finding.evidence["published"] is False
    assert policy_server.requests == []


def test_invalid_policy_fails_with_problems_and_the_policy_to_serve(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "bad.example")
    policy_server.policies["mta-sts.bad.example"] = PolicyResponse("version: STSv1\nmode: strict\nmax_age: 1\n")
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "bad.example")["bad.example"]
    assert finding.status is Status.FAIL
    assert any("is not enforce, testing or none" in p for p in finding.evidence["problems"])
    assert finding.evidence["policy_seen"] == "version: STSv1\nmode: strict\nmax_age: 1\n"
    publish = finding.evidence["publish"]
    assert publish["policy"] == "version: STSv1\nmode: testing\nmx: mx1.bad.example\nmx: a.mx.bad.example\nmax_age: 86400\n"
    assert publish["txt"] == '_mta-sts.bad.example. TXT "v=STSv1; id=20261125083000"'
    assert publish["policy_url"] == "https://mta-sts.bad.example/.well-known/mta-sts.txt"


def test_missing_policy_fails(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "bad.example")  # the server has no policy for this host: 404
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "bad.example")["bad.example"]
    assert finding.status is Status.FAIL and finding.evidence["http_status"] == 404
    assert finding.evidence["fetch"] == "rejected"


def test_bad_certificate_fails(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "uncertified.example")  # not named in the server's certificate
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "uncertified.example")["uncertified.example"]
    assert finding.status is Status.FAIL and finding.evidence["fetch"] == "certificate"


def test_two_sts_records_fail(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example", extra='_mta-sts TXT "v=STSv1; id=2"')
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(_policy("enforce", "mx1.good.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "good.example")["good.example"]
    assert finding.status is Status.FAIL and finding.evidence["problem"] == "more than one v=STSv1 record"


def test_bad_record_id_fails(dns_server, add_zone, policy_server, bundle) -> None:
    add_zone("good.example", '_mta-sts TXT "v=STSv1; id=not-alnum!"\nmta-sts A 127.0.0.1')
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(_policy("none"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "good.example")["good.example"]
    assert finding.status is Status.FAIL and finding.evidence["problem"] == "invalid _mta-sts record"


def test_txt_servfail_gives_error(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    dns_server.servfail_names.add("_mta-sts.good.example")
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "good.example")["good.example"]
    assert finding.status is Status.ERROR and "SERVFAIL" in finding.reason


def test_policy_fetch_timeout_gives_error(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(hang=True)
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "good.example", timeout=0.4)["good.example"]
    assert finding.status is Status.ERROR and "timed out" in finding.reason


def test_hostile_policy_gets_a_verdict(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "bad.example")
    hostile = "<script>alert(1)</script>\n" + "mx: " + "x" * 70 + "\n" + "\u202e\u00e9: v\n" * 2000
    policy_server.policies["mta-sts.bad.example"] = PolicyResponse(hostile)
    finding = _judge(dns_server, policy_server, bundle, mta_sts_policy_invalid, "bad.example")["bad.example"]
    assert finding.status is Status.FAIL and len(finding.evidence["problems"]) == 50
    assert finding.evidence["problems"][-1].startswith("... and ")


# --- mta_sts.mx_mismatch ----------------------------------------------------------------------------


def test_mx_host_outside_an_enforce_policy_fails(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "bad.example", mx="@ MX 10 mx1.{d}.\n@ MX 20 a.b.mx.{d}.\n@ MX 30 backup.other.example.")
    policy_server.policies["mta-sts.bad.example"] = PolicyResponse(_policy("enforce", "mx1.bad.example", "*.mx.bad.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "bad.example")["bad.example"]
    assert finding.status is Status.FAIL
    assert finding.evidence["unmatched"] == ["a.b.mx.bad.example", "backup.other.example"]  # '*.' is one label
    assert "mx: backup.other.example\n" in finding.evidence["publish"]["policy"]
    assert "mode: enforce\n" in finding.evidence["publish"]["policy"]


def test_testing_mode_is_judged_too(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "testing.example")
    policy_server.policies["mta-sts.testing.example"] = PolicyResponse(_policy("testing", "mx1.testing.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "testing.example")["testing.example"]
    assert finding.status is Status.FAIL and finding.evidence["unmatched"] == ["a.mx.testing.example"]


def test_every_mx_host_covered_passes(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example", mx="@ MX 10 MX1.{d}.\n@ MX 20 a.mx.{d}.")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(_policy("enforce", "mx1.good.example", "*.mx.good.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "good.example")["good.example"]
    assert finding.status is Status.PASS


def test_mode_none_passes(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "none.example")
    policy_server.policies["mta-sts.none.example"] = PolicyResponse(_policy("none", "elsewhere.example"))
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "none.example")["none.example"]
    assert finding.status is Status.PASS and finding.evidence["mode"] == "none"


def test_no_mta_sts_passes(dns_server, add_zone, policy_server, bundle) -> None:
    add_zone("plain.example", "@ MX 10 mx.plain.example.")
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "plain.example")["plain.example"]
    assert finding.status is Status.PASS and finding.evidence["published"] is False


def test_unusable_policy_gives_error_not_pass(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "bad.example")
    policy_server.policies["mta-sts.bad.example"] = PolicyResponse(_policy("enforce"))  # no mx: invalid
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "bad.example")["bad.example"]
    assert finding.status is Status.ERROR and "mta_sts.policy_invalid" in finding.reason


def test_mx_timeout_gives_error(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(_policy("enforce", "mx1.good.example"))
    dns_server.timeout_names.add("good.example")
    finding = _judge(dns_server, policy_server, bundle, mta_sts_mx_mismatch, "good.example")["good.example"]
    assert finding.status is Status.ERROR and "timeout" in finding.reason
