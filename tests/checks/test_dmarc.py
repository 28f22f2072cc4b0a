"""DMARC checks against zones served over real DNS on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from checks.dmarc import (
    dmarc_np_weak,
    dmarc_testing,
    dmarc_missing,
    dmarc_multiple,
    dmarc_no_rua,
    dmarc_pct,
    dmarc_policy_weak,
    dmarc_rua_unauthorized,
    dmarc_subdomain_policy_weak,
    dmarc_syntax,
)
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.dns.client import DnsClient
from scanner.model import Domain, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

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
        '_dmarc.nodmarc.example. TXT "v=DMARC1; p=quarantine; sp=quarantine; np=quarantine; '
        'rua=mailto:dmarc-reports@nodmarc.example"'
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


ALL = [dmarc_missing, dmarc_multiple, dmarc_syntax, dmarc_policy_weak, dmarc_subdomain_policy_weak, dmarc_pct,
       dmarc_no_rua, dmarc_rua_unauthorized, dmarc_np_weak, dmarc_testing]


def judge(server: ZoneServer, name: str, checks: list, policy: Policy | None = None) -> dict[tuple[str, str], object]:
    """Collect one domain over DNS and run the checks; findings keyed by (check id, item)."""
    facts = asyncio.run(DnsClient([server.nameserver], timeout=0.6).collect_domain(name))
    tenant = Tenant("acme", None, (name,))
    inventory = Inventory((tenant,), (Domain(name, "acme", False, None, facts),))
    findings = evaluate(inventory, checks, policy=policy or Policy(), senders={}, now=NOW)
    return {(f.check, f.item): f for f in findings}


def one(server: ZoneServer, name: str, check, policy: Policy | None = None):
    """The single finding of one check on one domain."""
    found = judge(server, name, [check], policy)
    assert len(found) == 1, found
    return next(iter(found.values()))


GOOD = '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.example"'


# dmarc.multiple

def test_two_dmarc_records_fail(dns_server, add_zone) -> None:
    add_zone("two.example", '_dmarc TXT "v=DMARC1; p=reject"\n_dmarc TXT "v=DMARC1; p=none"\n_dmarc TXT "other"')
    finding = one(dns_server, "two.example", dmarc_multiple)
    assert finding.status is Status.FAIL and len(finding.evidence["records_seen"]) == 2
    assert finding.evidence["publish"] == '_dmarc.two.example. TXT "v=DMARC1; p=reject; sp=reject; np=reject"'


def test_one_dmarc_record_beside_unrelated_text_passes(dns_server, add_zone) -> None:
    add_zone("good.example", GOOD + '\n_dmarc TXT "google-site-verification=abc"')
    assert one(dns_server, "good.example", dmarc_multiple).status is Status.PASS


def test_multiple_servfail_is_an_error(dns_server, add_zone) -> None:
    add_zone("broken.example", GOOD)
    dns_server.servfail_names.add("_dmarc.broken.example")
    assert one(dns_server, "broken.example", dmarc_multiple).status is Status.ERROR


def test_multiple_records_fail_once_and_the_policy_checks_are_skipped_under_it(dns_server, add_zone) -> None:
    # One cause, one failing finding: the policy checks would only restate dmarc.multiple.
    add_zone("two.example", '_dmarc TXT "v=DMARC1; p=none"\n_dmarc TXT "v=DMARC1; p=none; adkim=s"')
    found = judge(dns_server, "two.example", ALL)
    root = found[("dmarc.multiple", "")]
    assert root.status is Status.FAIL
    assert [c for (c, _), f in found.items() if f.status is Status.FAIL] == ["dmarc.multiple"]
    for check_id in ("dmarc.policy_weak", "dmarc.subdomain_policy_weak", "dmarc.np_weak",
                     "dmarc.testing", "dmarc.no_rua", "dmarc.rua_unauthorized"):
        assert found[(check_id, "")].status is Status.SKIPPED, check_id
        assert found[(check_id, "")].caused_by == root.id


# dmarc.syntax

def test_invalid_tag_values_fail_syntax_with_a_corrected_record(dns_server, add_zone) -> None:
    add_zone("bad.example", '_dmarc TXT "v=DMARC1; p=monitor; pct=150; rua=dmarc@bad.example; fo=2"')
    finding = one(dns_server, "bad.example", dmarc_syntax)
    assert finding.status is Status.FAIL
    assert len(finding.evidence["problems"]) == 4
    assert finding.evidence["publish"] == '_dmarc.bad.example. TXT "v=DMARC1; p=none; sp=none; np=none; fo=0"'


def test_valid_record_passes_syntax(dns_server, add_zone) -> None:
    add_zone("good.example", '_dmarc TXT "v=DMARC1; p=reject; sp=reject; adkim=s; aspf=s; fo=1; ri=3600; '
                             'rua=mailto:a@good.example!10m; ruf=mailto:f@good.example"')
    assert one(dns_server, "good.example", dmarc_syntax).status is Status.PASS


def test_syntax_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("slow.example", '_dmarc TXT "v=DMARC1; p=bogus"')
    dns_server.timeout_names.add("_dmarc.slow.example")
    finding = one(dns_server, "slow.example", dmarc_syntax)
    assert finding.status is Status.ERROR and "timeout" in finding.reason


def test_hostile_dmarc_records_get_verdicts(dns_server, add_zone) -> None:
    filler = " ".join(f'"x{i}={"y" * 250};"' for i in range(40))  # 40 strings of 255 octets, ~10 KB over TCP
    add_zone("long.example", f'_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@long.example;" {filler}')
    add_zone("script.example", '_dmarc TXT "v=DMARC1; p=<script>alert(1)</script>; rua=mailto:d@script.example"')
    add_zone("utf.example", '_dmarc TXT "v=DMARC1; p=r\\195\\169ject; rua=mailto:d@caf\\195\\169.example"')
    long = judge(dns_server, "long.example", ALL)
    assert {f.status for f in long.values()} == {Status.PASS}
    script = judge(dns_server, "script.example", ALL)
    assert script[("dmarc.syntax", "")].status is Status.FAIL
    # An invalid p= voids the policy (RFC 9989 §4.11): the policy checks only restate dmarc.syntax.
    assert script[("dmarc.policy_weak", "")].status is Status.SKIPPED
    assert script[("dmarc.policy_weak", "")].caused_by == script[("dmarc.syntax", "")].id
    assert script[("dmarc.policy_weak", "")].evidence["applied_policy"] == "none"  # valid rua: p=none
    utf = judge(dns_server, "utf.example", ALL)
    assert utf[("dmarc.syntax", "")].status is Status.FAIL
    assert utf[("dmarc.policy_weak", "")].evidence["applied_policy"] == "no DMARC processing"
    assert all(f.status is not Status.ERROR for found in (long, script, utf) for f in found.values())


def test_a_bad_report_uri_in_a_valid_policy_does_not_hide_a_weak_policy(dns_server, add_zone) -> None:
    # An independent second problem of the same record still fails on its own.
    add_zone("two-problems.example", '_dmarc TXT "v=DMARC1; p=none; rua=mailto:d@two-problems.example; fo=9"')
    found = judge(dns_server, "two-problems.example", ALL)
    assert found[("dmarc.syntax", "")].status is Status.FAIL
    assert found[("dmarc.policy_weak", "")].status is Status.FAIL and found[("dmarc.policy_weak", "")].caused_by == ""


# dmarc.policy_weak

def test_p_none_is_weak_and_the_fix_keeps_the_other_tags(dns_server, add_zone) -> None:
    add_zone("weak.example", '_dmarc TXT "v=DMARC1; p=none; rua=mailto:d@weak.example; adkim=s"')
    finding = one(dns_server, "weak.example", dmarc_policy_weak)
    assert finding.status is Status.FAIL and finding.evidence["applied_policy"] == "none"
    assert finding.evidence["publish"] == (
        '_dmarc.weak.example. TXT "v=DMARC1; p=quarantine; sp=quarantine; np=quarantine; rua=mailto:d@weak.example; '
        'adkim=s"'
    )


def test_quarantine_meets_the_default_minimum_but_not_reject(dns_server, add_zone) -> None:
    add_zone("q.example", '_dmarc TXT "v=DMARC1; p=quarantine"')
    assert one(dns_server, "q.example", dmarc_policy_weak).status is Status.PASS
    strict = one(dns_server, "q.example", dmarc_policy_weak, Policy(dmarc_min_policy="reject"))
    assert strict.status is Status.FAIL and strict.evidence["minimum"] == "reject"


def test_no_record_fails_dmarc_missing_alone(dns_server, add_zone) -> None:
    # The "cries wolf" case: no record gave four failures; now dmarc.missing fails and the rest name it.
    add_zone("none.example", "")
    found = judge(dns_server, "none.example", ALL)
    root = found[("dmarc.missing", "")]
    assert root.status is Status.FAIL
    skipped = {c for (c, _), f in found.items() if f.status is Status.SKIPPED and f.caused_by == root.id}
    assert {"dmarc.policy_weak", "dmarc.subdomain_policy_weak", "dmarc.no_rua"} <= skipped
    assert [c for (c, _), f in found.items() if f.status is Status.FAIL] == ["dmarc.missing"]


def test_subdomain_is_judged_on_the_inherited_sp(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject; sp=none; rua=mailto:d@org.example"\nmail A 127.0.0.9')
    finding = one(dns_server, "mail.org.example", dmarc_policy_weak)
    assert finding.status is Status.FAIL
    assert finding.evidence["inherited"] is True and finding.evidence["judged_tag"] == "sp"
    assert "Organizational Domain" in finding.evidence["applies_because"]
    assert finding.evidence["policy_record"] == "_dmarc.org.example"
    assert finding.evidence["organizational_domain"] == "org.example"
    assert finding.evidence["publish"] == (
        '_dmarc.org.example. TXT "v=DMARC1; p=reject; sp=quarantine; np=quarantine; rua=mailto:d@org.example"'
    )


def test_inherited_lookup_failure_is_an_error(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject"\nmail A 127.0.0.9')
    dns_server.servfail_names.add("_dmarc.org.example")
    assert one(dns_server, "mail.org.example", dmarc_policy_weak).status is Status.ERROR


def test_policy_weak_servfail_is_an_error(dns_server, add_zone) -> None:
    add_zone("broken.example", GOOD)
    dns_server.servfail_names.add("_dmarc.broken.example")
    assert one(dns_server, "broken.example", dmarc_policy_weak).status is Status.ERROR


# dmarc.subdomain_policy_weak

def test_sp_none_is_weak(dns_server, add_zone) -> None:
    add_zone("sp.example", '_dmarc TXT "v=DMARC1; p=reject; sp=none"')
    finding = one(dns_server, "sp.example", dmarc_subdomain_policy_weak)
    assert finding.status is Status.FAIL
    assert finding.evidence["publish"] == '_dmarc.sp.example. TXT "v=DMARC1; p=reject; sp=quarantine; np=quarantine"'


def test_sp_defaults_to_p(dns_server, add_zone) -> None:
    add_zone("good.example", GOOD)
    add_zone("weak.example", '_dmarc TXT "v=DMARC1; p=none"')
    assert one(dns_server, "good.example", dmarc_subdomain_policy_weak).status is Status.PASS
    assert one(dns_server, "weak.example", dmarc_subdomain_policy_weak).status is Status.FAIL


def test_subdomain_policy_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("slow.example", GOOD)
    dns_server.timeout_names.add("_dmarc.slow.example")
    assert one(dns_server, "slow.example", dmarc_subdomain_policy_weak).status is Status.ERROR


# dmarc.pct

def test_pct_under_100_fails_and_the_fix_drops_it(dns_server, add_zone) -> None:
    add_zone("pct.example", '_dmarc TXT "v=DMARC1; p=reject; pct=25; rua=mailto:d@pct.example"')
    finding = one(dns_server, "pct.example", dmarc_pct)
    assert finding.status is Status.FAIL and finding.evidence["pct"] == 25
    assert finding.evidence["publish"] == (
        '_dmarc.pct.example. TXT "v=DMARC1; p=reject; sp=reject; np=reject; rua=mailto:d@pct.example"')
    assert "t=y" in finding.evidence["note"]


def test_pct_default_and_100_pass(dns_server, add_zone) -> None:
    add_zone("good.example", GOOD)
    add_zone("full.example", '_dmarc TXT "v=DMARC1; p=reject; pct=100"')
    assert one(dns_server, "good.example", dmarc_pct).status is Status.PASS
    assert one(dns_server, "full.example", dmarc_pct).status is Status.PASS


def test_pct_servfail_is_an_error(dns_server, add_zone) -> None:
    add_zone("broken.example", '_dmarc TXT "v=DMARC1; p=reject; pct=1"')
    dns_server.servfail_names.add("_dmarc.broken.example")
    assert one(dns_server, "broken.example", dmarc_pct).status is Status.ERROR


# dmarc.no_rua

def test_no_rua_fails_with_a_record_that_adds_one(dns_server, add_zone) -> None:
    add_zone("quiet.example", '_dmarc TXT "v=DMARC1; p=reject"')
    finding = one(dns_server, "quiet.example", dmarc_no_rua)
    assert finding.status is Status.FAIL
    assert finding.evidence["publish"] == (
        '_dmarc.quiet.example. TXT "v=DMARC1; p=reject; sp=reject; np=reject; rua=mailto:dmarc-reports@quiet.example"'
    )


def test_rua_without_a_mailto_uri_fails(dns_server, add_zone) -> None:
    add_zone("https.example", '_dmarc TXT "v=DMARC1; p=reject; rua=https://127.0.0.1/dmarc"')
    finding = one(dns_server, "https.example", dmarc_no_rua)
    assert finding.status is Status.FAIL and finding.evidence["rua"] == ["https://127.0.0.1/dmarc"]


def test_rua_present_passes(dns_server, add_zone) -> None:
    add_zone("good.example", GOOD)
    assert one(dns_server, "good.example", dmarc_no_rua).status is Status.PASS


def test_no_rua_timeout_is_an_error(dns_server, add_zone) -> None:
    add_zone("slow.example", '_dmarc TXT "v=DMARC1; p=reject"')
    dns_server.timeout_names.add("_dmarc.slow.example")
    assert one(dns_server, "slow.example", dmarc_no_rua).status is Status.ERROR


# dmarc.rua_unauthorized

def test_outside_destination_without_authorization_fails(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@reports.test,mailto:d@ok.test,'
                             'mailto:d@acme.example; ruf=mailto:f@mail.acme.example"')
    add_zone("reports.test", '@ TXT "v=spf1 -all"')
    add_zone("ok.test", 'acme.example._report._dmarc TXT "v=DMARC1"')
    found = judge(dns_server, "acme.example", [dmarc_rua_unauthorized])
    assert set(found) == {("dmarc.rua_unauthorized", "reports.test"), ("dmarc.rua_unauthorized", "ok.test")}
    bad = found[("dmarc.rua_unauthorized", "reports.test")]
    assert bad.status is Status.FAIL and bad.evidence["outcome"] == "nxdomain"
    assert bad.evidence["publish"] == 'acme.example._report._dmarc.reports.test. TXT "v=DMARC1"'
    assert found[("dmarc.rua_unauthorized", "ok.test")].status is Status.PASS


def test_wildcard_authorization_counts(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@agg.test"')
    add_zone("agg.test", '*._report._dmarc TXT "v=DMARC1"')
    assert one(dns_server, "acme.example", dmarc_rua_unauthorized).status is Status.PASS


def test_destinations_inside_the_organizational_domain_pass(dns_server, add_zone) -> None:
    add_zone("good.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@good.example,mailto:e@reports.good.example"')
    finding = one(dns_server, "good.example", dmarc_rua_unauthorized)
    assert finding.status is Status.PASS and "no report destination outside" in finding.evidence["note"]


def test_authorization_lookup_failure_is_an_error(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@reports.test"')
    add_zone("reports.test", 'acme.example._report._dmarc TXT "v=DMARC1"')
    dns_server.servfail_names.add("acme.example._report._dmarc.reports.test")
    finding = one(dns_server, "acme.example", dmarc_rua_unauthorized)
    assert finding.status is Status.ERROR and finding.item == "reports.test" and "SERVFAIL" in finding.reason


def test_inherited_record_is_authorized_for_the_organizational_domain(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@reports.test"\nmail A 127.0.0.9')
    add_zone("reports.test", 'org.example._report._dmarc TXT "v=DMARC1"')
    finding = one(dns_server, "mail.org.example", dmarc_rua_unauthorized)
    assert finding.status is Status.PASS and finding.evidence["inherited"] is True
    assert finding.evidence["authorization"] == "org.example._report._dmarc.reports.test"


def test_many_destinations_are_bounded(dns_server, add_zone) -> None:
    record = "v=DMARC1; p=reject; rua=" + ",".join(f"mailto:d@r{i}.test" for i in range(30))
    strings = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
    add_zone("many.example", f"_dmarc TXT {strings}")
    for i in range(30):
        add_zone(f"r{i}.test", "")
    found = judge(dns_server, "many.example", [dmarc_rua_unauthorized])
    failed = [f for f in found.values() if f.status is Status.FAIL]
    errors = [f for f in found.values() if f.status is Status.ERROR]
    assert len(failed) == 10 and len(errors) == 11  # 10 looked up; 20 not: 10 shown, the rest summed up
    assert "10 more report destinations" in found[("dmarc.rua_unauthorized", "more destinations")].reason


def _reported(server: ZoneServer, name: str, traffic: object, *, addresses: tuple[str, ...] = (),
              senders: object = None, reports: bool = True) -> list:  # type: ignore[type-arg]
    from checks.dmarc import dmarc_reports_missing, dmarc_source_failing
    from checks.registry import Sender
    from scanner.model import Coverage, Fact, FactState

    facts = asyncio.run(DnsClient([server.nameserver], timeout=0.6).collect_domain(name))
    tenant = Tenant("acme", None, (name,), senders=("relay",))
    state = FactState.COLLECTED if reports else FactState.UNSUPPORTED
    inventory = Inventory((tenant,), (Domain(name, "acme", False, None, facts),), traffic=traffic or {},
                          report_addresses=addresses,
                          coverage=(Coverage("acme", Fact.DMARC_REPORTS, state, "no reports are read"),))
    catalogue = senders or {"relay": Sender("relay", "Relay", ptr_patterns=("*.relay.example",))}
    return evaluate(inventory, [dmarc_source_failing, dmarc_reports_missing],
                    policy=Policy(dmarc_min_messages=10, dmarc_max_fail_ratio=0.1), senders=catalogue, now=NOW)


def _sources(name: str, reports: int, *rows: tuple[str, str, int, int]) -> dict[str, object]:
    from scanner.model import DomainTraffic, SourceTraffic

    return {name: DomainTraffic(name, NOW, NOW, reports, tuple(
        SourceTraffic(name, ip, messages, passed, passed, 0, NOW, NOW, 2, ptr, bool(ptr)) for ip, ptr, messages, passed in rows))}


def test_failing_sources_fail_one_by_one_with_who_they_are(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    traffic = _sources("acme.example", 4,
                       ("192.0.2.10", "out.relay.example", 200, 120),  # 40% fail: fails
                       ("198.51.100.7", "", 50, 0),  # all fail, no PTR, not a declared sender: fails
                       ("192.0.2.11", "out2.relay.example", 100, 99),  # 1% fail: under the threshold
                       ("203.0.113.5", "", 5, 0))  # too few messages to judge
    findings = [f for f in _reported(dns_server, "acme.example", traffic, addresses=("dmarc@msp.example",))
                if f.check == "dmarc.source_failing"]
    failing = {f.item: f for f in findings if f.status is Status.FAIL}
    assert set(failing) == {"192.0.2.10", "198.51.100.7"} and len(findings) == 2
    relay = failing["192.0.2.10"]
    assert (relay.evidence["sender"], relay.evidence["ptr"], relay.evidence["declared"]) == (
        "relay", "out.relay.example", True)
    assert (relay.evidence["messages"], relay.evidence["dmarc_fail"]) == (200, 80)
    assert relay.evidence["failed"] == ["SPF alignment", "DKIM alignment"]
    stranger = failing["198.51.100.7"]
    assert stranger.evidence["sender"] == "unknown" and "spoofing" in stranger.evidence["note"]


def test_sources_within_the_threshold_pass_with_counts(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    traffic = _sources("acme.example", 2, ("192.0.2.11", "out2.relay.example", 100, 99))
    [source] = [f for f in _reported(dns_server, "acme.example", traffic) if f.check == "dmarc.source_failing"]
    assert source.status is Status.PASS and source.evidence["messages"] == 100


def test_reports_missing_only_where_they_should_arrive_here(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:DMARC@msp.example"')
    add_zone("other.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@elsewhere.example"')
    here = {f.check: f for f in _reported(dns_server, "acme.example", _sources("acme.example", 0),
                                          addresses=("dmarc@msp.example",))}
    assert here["dmarc.reports_missing"].status is Status.FAIL
    assert here["dmarc.reports_missing"].evidence["rua"] == ["dmarc@msp.example"]
    assert here["dmarc.source_failing"].status is Status.UNSUPPORTED  # silence is not a pass
    arrived = {f.check: f for f in _reported(dns_server, "acme.example", _sources("acme.example", 3),
                                             addresses=("dmarc@msp.example",))}
    assert arrived["dmarc.reports_missing"].status is Status.PASS and arrived["dmarc.reports_missing"].evidence[
        "reports"] == 3
    elsewhere = {f.check: f for f in _reported(dns_server, "other.example", {}, addresses=("dmarc@msp.example",))}
    assert elsewhere["dmarc.reports_missing"].status is Status.UNSUPPORTED
    assert "d@elsewhere.example" in elsewhere["dmarc.reports_missing"].reason


def test_without_imported_reports_both_checks_are_unsupported(dns_server, add_zone) -> None:
    add_zone("acme.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    findings = _reported(dns_server, "acme.example", {}, addresses=("dmarc@msp.example",), reports=False)
    assert {f.status for f in findings} == {Status.UNSUPPORTED}
    assert all("no reports are read" in f.reason for f in findings)


def test_a_parked_domain_owes_no_reports(dns_server, add_zone) -> None:
    from checks.dmarc import dmarc_reports_missing
    from scanner.model import Coverage, Fact, FactState

    add_zone("old.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@msp.example"')
    facts = asyncio.run(DnsClient([dns_server.nameserver], timeout=0.6).collect_domain("old.example"))
    inventory = Inventory((Tenant("acme", None, (), parked_domains=("old.example",)),),
                          (Domain("old.example", "acme", True, None, facts),), report_addresses=("dmarc@msp.example",),
                          coverage=(Coverage("acme", Fact.DMARC_REPORTS, FactState.COLLECTED),))
    [finding] = evaluate(inventory, [dmarc_reports_missing], policy=Policy(), senders={}, now=NOW)
    assert finding.status is Status.PASS and "parked" in finding.evidence["note"]
# dmarc.np_weak and dmarc.testing (RFC 9989 §5.3)

def test_an_explicit_np_weaker_than_the_minimum_fails(dns_server, add_zone) -> None:
    add_zone("np.example", '_dmarc TXT "v=DMARC1; p=reject; sp=reject; np=none; rua=mailto:d@np.example"')
    add_zone("npgood.example", '_dmarc TXT "v=DMARC1; p=reject; np=reject"')
    add_zone("nonp.example", '_dmarc TXT "v=DMARC1; p=reject"')
    finding = one(dns_server, "np.example", dmarc_np_weak)
    assert finding.status is Status.FAIL and finding.evidence["judged_tag"] == "np"
    assert "np=quarantine" in finding.evidence["publish"] and "RFC 7489 receivers ignore np" in finding.evidence["rfc7489"]
    assert one(dns_server, "npgood.example", dmarc_np_weak).status is Status.PASS
    assert one(dns_server, "nonp.example", dmarc_np_weak).status is Status.PASS


def test_a_subdomains_own_np_is_ignored_for_the_organizational_domains(dns_server, add_zone) -> None:
    # RFC 9989 §5.3 np: ignored on records of subdomains of an Organizational Domain (the walk passes them).
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject; np=none"\n_dmarc.mail TXT "v=DMARC1; p=reject; np=reject"')
    finding = one(dns_server, "mail.org.example", dmarc_np_weak)
    assert finding.status is Status.FAIL and finding.evidence["policy_record"] == "_dmarc.org.example"


def test_testing_mode_fails_and_names_what_receivers_apply(dns_server, add_zone) -> None:
    add_zone("trial.example", '_dmarc TXT "v=DMARC1; p=reject; t=y; rua=mailto:d@trial.example"')
    add_zone("good.example", GOOD)
    finding = one(dns_server, "trial.example", dmarc_testing)
    assert finding.status is Status.FAIL and finding.evidence["applied_by_rfc9989_receivers"] == "quarantine"
    assert "t=" not in finding.evidence["publish"]
    assert one(dns_server, "good.example", dmarc_testing).status is Status.PASS


def test_the_tree_walk_finds_the_policy_above_an_intermediate_name(dns_server, add_zone) -> None:
    # RFC 9989 §4.10: a.mail.org.example walks past mail.org.example (no record) to org.example.
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject; sp=quarantine"\na.mail A 127.0.0.9')
    found = judge(dns_server, "a.mail.org.example", [dmarc_missing, dmarc_policy_weak])
    assert found[("dmarc.missing", "")].status is Status.PASS
    weak = found[("dmarc.policy_weak", "")]
    assert weak.status is Status.PASS and weak.evidence["policy_record"] == "_dmarc.org.example"
    assert weak.evidence["tree_walk"] == ["_dmarc.a.mail.org.example", "_dmarc.mail.org.example",
                                          "_dmarc.org.example", "_dmarc.example"]


def test_a_failed_walk_above_the_domain_is_an_error_for_inherited_policy(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject"\nmail A 127.0.0.9')
    dns_server.servfail_names.add("_dmarc.example")
    finding = one(dns_server, "mail.org.example", dmarc_subdomain_policy_weak)
    assert finding.status is Status.ERROR and "tree walk" in finding.reason
