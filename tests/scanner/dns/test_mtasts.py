"""MTA-STS collection: record and policy parsing, and policies fetched over real HTTPS on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner.collect import collect, policy_fetcher
from scanner.config import load_config
from scanner.dns.client import DnsClient
from scanner.errors import ConfigError
from scanner.dns.mtasts import (
    MAX_POLICY_BYTES,
    FetchOutcome,
    MtaStsPolicy,
    PolicyFetcher,
    mx_pattern_matches,
    parse_policy,
    sts_record_problems,
    sts_records,
)
from scanner.model import DnsAnswer, Outcome
from scanner.loopback.policyserver import LoopbackCA, PolicyResponse, PolicyServer
from scanner.loopback.zoneserver import ZoneServer

GOOD = "version: STSv1\nmode: enforce\nmx: mx1.good.example\nmx: *.mx.good.example\nmax_age: 86400\n"


@pytest.fixture(scope="module")
def ca() -> LoopbackCA:
    """One test CA for the module (key generation is the slow part)."""
    return LoopbackCA()


@pytest.fixture
def bundle(ca: LoopbackCA, tmp_path: Path) -> Path:
    return ca.write(tmp_path / "ca.pem")


@pytest.fixture
def policy_server(ca: LoopbackCA) -> Iterator[PolicyServer]:
    """An HTTPS server on 127.0.0.1 whose certificate names mta-sts.good.example and mta-sts.other.example."""
    context = ca.server_context(["mta-sts.good.example", "mta-sts.other.example"])
    with PolicyServer({"mta-sts.good.example": GOOD}, context) as server:
        yield server


def _zone(add_zone, name: str, extra: str = "", address: str = "127.0.0.1") -> None:
    add_zone(name, f'_mta-sts TXT "v=STSv1; id=20261125"\nmta-sts A {address}\n{extra}')


def _fetch(dns_server: ZoneServer, server_port: int, bundle: Path | None, name: str, timeout: float = 2.0):
    client = DnsClient([dns_server.nameserver], timeout=0.6)
    fetcher = PolicyFetcher(port=server_port, ca_bundle=bundle, timeout=timeout)
    return asyncio.run(client.collect_domain(name, policies=fetcher))


# --- the TXT record (RFC 8461 §3.1) ---------------------------------------------------------------


def test_only_records_starting_with_the_version_count() -> None:
    answer = DnsAnswer("_mta-sts.a.example", "TXT", Outcome.ANSWER, ("v=STSv1; id=1", "v=stsv1; id=2", "other"))
    assert sts_records(answer) == ["v=STSv1; id=1"]
    assert sts_records(DnsAnswer("_mta-sts.a.example", "TXT", Outcome.FAILED, error="timeout")) == []


def test_record_needs_an_alphanumeric_id_of_at_most_32() -> None:
    assert sts_record_problems("v=STSv1; id=20261125T1;") == []
    assert sts_record_problems("v=STSv1;") == ["no id= field"]
    assert sts_record_problems("v=STSv1; id=" + "a" * 33) != []
    assert sts_record_problems("v=STSv1; id=<script>") != []


# --- the policy body (RFC 8461 §3.2) --------------------------------------------------------------


def test_valid_policy_parses() -> None:
    parsed = parse_policy(GOOD.replace("\n", "\r\n"))
    assert parsed.problems == ()
    assert (parsed.version, parsed.mode, parsed.max_age) == ("STSv1", "enforce", 86400)
    assert parsed.mx == ("mx1.good.example", "*.mx.good.example")


def test_mode_none_may_omit_mx_but_enforce_may_not() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").problems == ()
    assert "mode enforce but no 'mx' field" in parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").problems


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1", "no 'version' field"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1", "is not 'STSv1'"),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1", "is not enforce, testing or none"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 99999999999", "is not 1 to 10 digits"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601", "over the limit"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1", "is not 1 to 10 digits"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1", "is not a host name"),
        ("version: STSv1\nmode: enforce\nmx: <script>alert(1)</script>\nmax_age: 1", "is not a host name"),
        ("version: STSv1\nmode: enforce\nmx: mx.exämple\nmax_age: 1", "non-ASCII"),
        ("version=STSv1\nmode: enforce\nmx: a.example\nmax_age: 1", "is not 'name: value'"),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1", "repeated field 'mode'"),
        ("<html><body>hello</body></html>", "no 'version' field"),
    ],
)
def test_invalid_policies_are_named(text: str, fragment: str) -> None:
    problems = parse_policy(text).problems
    assert any(fragment in p for p in problems), problems


def test_unknown_extension_fields_are_ignored() -> None:
    assert parse_policy(GOOD + "x-vendor.note: anything goes here\n").problems == ()


def test_wildcards_cover_exactly_one_label() -> None:
    assert mx_pattern_matches("*.mx.good.example", "a.mx.good.example.")
    assert mx_pattern_matches("MX1.good.example", "mx1.GOOD.example")
    assert not mx_pattern_matches("*.mx.good.example", "mx.good.example")
    assert not mx_pattern_matches("*.mx.good.example", "a.b.mx.good.example")
    assert not mx_pattern_matches("mx1.good.example", "mx2.good.example")


# --- fetching over real HTTPS on loopback (RFC 8461 §3.3) --------------------------------------------


def test_policy_is_fetched_from_the_address_dns_gives_with_sni_and_host(
    dns_server, add_zone, policy_server, bundle
) -> None:
    _zone(add_zone, "good.example")
    facts = _fetch(dns_server, policy_server.port, bundle, "good.example")
    policy = facts.mta_sts_policy
    assert isinstance(policy, MtaStsPolicy)
    assert policy.outcome is FetchOutcome.FETCHED and policy.usable, policy
    assert policy.address == "127.0.0.1" and policy.status == 200
    assert policy.mode == "enforce" and policy.mx == ("mx1.good.example", "*.mx.good.example")
    assert policy.url == f"https://mta-sts.good.example:{policy_server.port}/.well-known/mta-sts.txt"
    assert policy_server.requests == [("mta-sts.good.example", "/.well-known/mta-sts.txt")]
    assert policy_server.server_names == ["mta-sts.good.example"]
    assert facts.get("mta_sts").records == ("v=STSv1; id=20261125",)
    assert facts.get("tlsrpt").outcome is Outcome.NXDOMAIN


def test_no_fetch_without_the_txt_record(dns_server, add_zone, policy_server, bundle) -> None:
    add_zone("good.example", "mta-sts A 127.0.0.1")
    facts = _fetch(dns_server, policy_server.port, bundle, "good.example")
    assert facts.mta_sts_policy is None and policy_server.requests == []


def test_certificate_for_another_host_is_refused(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "wrongname.example")  # the server's certificate does not name mta-sts.wrongname.example
    policy = _fetch(dns_server, policy_server.port, bundle, "wrongname.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.CERTIFICATE and "certificate" in policy.reason.lower()
    assert policy_server.requests == []


def test_certificate_from_an_untrusted_ca_is_refused(dns_server, add_zone, policy_server) -> None:
    _zone(add_zone, "good.example")
    policy = _fetch(dns_server, policy_server.port, None, "good.example").mta_sts_policy  # the system store
    assert policy.outcome is FetchOutcome.CERTIFICATE


def test_expired_certificate_is_refused(dns_server, add_zone, ca, bundle) -> None:
    _zone(add_zone, "good.example")
    with PolicyServer({"mta-sts.good.example": GOOD}, ca.server_context(["mta-sts.good.example"], expired=True)) as s:
        policy = _fetch(dns_server, s.port, bundle, "good.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.CERTIFICATE and "expired" in policy.reason


@pytest.mark.parametrize(
    ("response", "fragment"),
    [
        (PolicyResponse(GOOD, status=301, headers={"Location": "https://mta-sts.other.example/.well-known/mta-sts.txt"}),
         "not followed"),
        (PolicyResponse("not here", status=404), "HTTP 404"),
        (PolicyResponse(GOOD, content_type="text/html"), "not text/plain"),
        (PolicyResponse(GOOD + "x" * MAX_POLICY_BYTES), "larger than"),
    ],
)
def test_unusable_answers_are_rejected(dns_server, add_zone, policy_server, bundle, response, fragment) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = response
    policy_server.policies["mta-sts.other.example"] = PolicyResponse(GOOD)
    policy = _fetch(dns_server, policy_server.port, bundle, "good.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.REJECTED and fragment in policy.reason, policy.reason
    assert len(policy.text) <= 8 * 1024
    assert [h for h, _ in policy_server.requests] == ["mta-sts.good.example"]  # the redirect was not followed


def test_text_plain_with_charset_is_accepted(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(GOOD, content_type="Text/Plain; charset=utf-8")
    assert _fetch(dns_server, policy_server.port, bundle, "good.example").mta_sts_policy.usable


def test_policy_host_without_address_is_unreachable(dns_server, add_zone, policy_server, bundle) -> None:
    add_zone("nohost.example", '_mta-sts TXT "v=STSv1; id=1"')
    policy = _fetch(dns_server, policy_server.port, bundle, "nohost.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.UNREACHABLE and "NXDOMAIN" in policy.reason


def test_refused_connection_is_unreachable(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example", address="127.0.0.2")  # nothing listens there
    policy = _fetch(dns_server, policy_server.port, bundle, "good.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.UNREACHABLE and policy.address == "127.0.0.2"


def test_server_that_never_answers_is_unknown_not_invalid(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(hang=True)
    policy = _fetch(dns_server, policy_server.port, bundle, "good.example", timeout=0.4).mta_sts_policy
    assert policy.outcome is FetchOutcome.UNKNOWN and "timed out" in policy.reason


def test_policy_host_dns_failure_is_unknown(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    dns_server.servfail_names.add("mta-sts.good.example")
    policy = _fetch(dns_server, policy_server.port, bundle, "good.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.UNKNOWN and "SERVFAIL" in policy.reason


def test_txt_lookup_failure_is_kept_and_nothing_is_fetched(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    dns_server.timeout_names.add("_mta-sts.good.example")
    facts = _fetch(dns_server, policy_server.port, bundle, "good.example")
    assert facts.get("mta_sts").failed and facts.mta_sts_policy is None


def test_hostile_policy_body_gives_problems_not_a_crash(dns_server, add_zone, policy_server, bundle) -> None:
    _zone(add_zone, "good.example")
    hostile = b"\xff\xfe<script>alert(1)</script>\n" + b"mx: " + b"a" * 60000 + b"\n\x00\x01version: STSv1\n"
    policy_server.policies["mta-sts.good.example"] = PolicyResponse(hostile)
    policy = _fetch(dns_server, policy_server.port, bundle, "good.example").mta_sts_policy
    assert policy.outcome is FetchOutcome.FETCHED and not policy.usable and policy.problems
    assert len(policy.text) <= 8 * 1024 and all(len(m) <= 255 for m in policy.mx)


# --- configuration and the collect stage --------------------------------------------------------------


def test_collect_uses_the_mta_sts_table(dns_server, add_zone, policy_server, bundle, write_config) -> None:
    _zone(add_zone, "good.example")
    path = write_config(
        f'[dns]\nnameservers = ["{dns_server.nameserver}"]\ntimeout = 0.6\n'
        f'[mta_sts]\nport = {policy_server.port}\nca_bundle = "{bundle.name}"\ntimeout = 2.0\n'
        '[[tenants]]\nname = "acme"\ndomains = ["good.example"]\n'
    )
    assert bundle.parent == path.parent  # a relative ca_bundle is read beside the config file
    collection = asyncio.run(collect(load_config(path)))
    assert collection.inventory.domains[0].dns.mta_sts_policy.usable


def test_config_defaults_and_validation(write_config) -> None:
    config = load_config(write_config('[[tenants]]\nname = "a"\ndomains = ["a.example"]\n'))
    assert (config.mta_sts.port, config.mta_sts.ca_bundle, config.mta_sts.timeout) == (443, "", 10.0)
    with pytest.raises(ConfigError, match=r"mta_sts\.port"):
        load_config(write_config('[mta_sts]\nport = 70000\n[[tenants]]\nname = "a"\ndomains = ["a.example"]\n'))
    with pytest.raises(ConfigError, match=r"mta_sts\.verify: unknown key"):
        load_config(write_config('[mta_sts]\nverify = false\n[[tenants]]\nname = "a"\ndomains = ["a.example"]\n'))


def test_unreadable_ca_bundle_is_a_config_error(write_config) -> None:
    config = load_config(
        write_config('[mta_sts]\nca_bundle = "missing.pem"\n[[tenants]]\nname = "a"\ndomains = ["a.example"]\n')
    )
    with pytest.raises(ConfigError, match=r"mta_sts\.ca_bundle: cannot load .*missing\.pem"):
        policy_fetcher(config)
