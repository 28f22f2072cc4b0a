"""The spf.* checks against zones served over real DNS on loopback, hostile data included."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from checks.evaluate import evaluate
from checks.registry import Policy, Sender
from checks.spf import (
    spf_missing,
    spf_multiple,
    spf_permissive_all,
    spf_ptr,
    spf_syntax,
    spf_too_many_lookups,
    spf_undeclared_sender,
    spf_void_lookups,
)
from scanner.dns.client import DnsClient
from scanner.model import Domain, Finding, Inventory, Status, Tenant
from scanner.loopback.zoneserver import ZoneServer

NOW = datetime(2026, 11, 25, tzinfo=UTC)
ALL = [spf_missing, spf_multiple, spf_syntax, spf_too_many_lookups, spf_void_lookups, spf_permissive_all, spf_ptr,
       spf_undeclared_sender]
CATALOGUE = {
    "mailhost": Sender("mailhost", "Mail host", spf_include=("_spf.mailhost.example",)),
    "bulk": Sender("bulk", "Bulk sender", spf_include=("*.bulk.example",)),
}
PROVIDER = """
_spf TXT "v=spf1 include:_nb1.mailhost.example include:_nb2.mailhost.example ~all"
_nb1 TXT "v=spf1 ip4:127.1.0.0/16 -all"
_nb2 TXT "v=spf1 ip6:::1 ip4:127.2.0.1 -all"
"""


def _quoted(record: str) -> str:
    """A record as master-file TXT strings of at most 255 characters."""
    return " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))


def _judge(server: ZoneServer, *names: str, senders: tuple[str, ...] = ("mailhost",),
           parked: tuple[str, ...] = (), client: DnsClient | None = None) -> dict[tuple[str, str], list[Finding]]:
    """Collect the domains over loopback DNS and run every SPF check; findings by (check, domain)."""
    client = client or DnsClient([server.nameserver], timeout=0.5)

    async def gather() -> list:
        return await asyncio.gather(*(client.collect_domain(n) for n in names))

    facts = asyncio.run(gather())
    tenant = Tenant("acme", None, tuple(n for n in names if n not in parked), senders=senders, parked_domains=parked)
    domains = tuple(Domain(n, "acme", n in parked, None, f) for n, f in zip(names, facts))
    out: dict[tuple[str, str], list[Finding]] = {}
    for finding in evaluate(Inventory((tenant,), domains), ALL, policy=Policy(), senders=CATALOGUE, now=NOW):
        out.setdefault((finding.check, finding.subject), []).append(finding)
    return out


def _one(found: dict[tuple[str, str], list[Finding]], check_id: str, domain: str) -> Finding:
    (finding,) = found[(check_id, domain)]
    return finding


# ---------------------------------------------------------------- spf.missing


def test_missing_fails_with_a_record_built_from_the_declared_senders(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "google-site-verification=abc"\n@ MX 10 mx.acme.example.\nmx A 127.0.0.25')
    finding = _one(_judge(dns_server, "acme.example"), "spf.missing", "acme.example")
    assert finding.status is Status.FAIL
    assert finding.evidence["records_seen"] == ["google-site-verification=abc"]
    assert finding.evidence["publish"] == 'acme.example. TXT "v=spf1 include:_spf.mailhost.example -all"'


def test_missing_on_a_parked_domain_asks_for_minus_all(dns_server, add_zone) -> None:
    add_zone("old.example", "")
    finding = _one(_judge(dns_server, "old.example", parked=("old.example",)), "spf.missing", "old.example")
    assert finding.status is Status.FAIL and finding.evidence["outcome"] == "nodata"
    assert finding.evidence["publish"] == 'old.example. TXT "v=spf1 -all"'


def test_missing_passes_and_is_an_error_on_servfail(dns_server, add_zone) -> None:
    add_zone("ok.example", '@ TXT "v=spf1 -all"')
    add_zone("broken.example", '@ TXT "v=spf1 -all"')
    dns_server.servfail_names.add("broken.example")
    found = _judge(dns_server, "ok.example", "broken.example")
    assert _one(found, "spf.missing", "ok.example").status is Status.PASS
    broken = _one(found, "spf.missing", "broken.example")
    assert broken.status is Status.ERROR and "SERVFAIL" in broken.reason
    # Every SPF check depends on the apex answer: none of them may pass.
    assert {f.status for (c, d), fs in found.items() if d == "broken.example" for f in fs} == {Status.ERROR}


# ---------------------------------------------------------------- spf.multiple


def test_multiple_records_fail_with_one_merged_record(dns_server, add_zone) -> None:
    add_zone("two.example", '@ TXT "v=spf1 ip4:127.0.0.1 -all"\n@ TXT "V=SPF1 include:_spf.mailhost.example ~all"')
    add_zone("mailhost.example", PROVIDER)
    found = _judge(dns_server, "two.example")
    finding = _one(found, "spf.multiple", "two.example")
    assert finding.status is Status.FAIL and len(finding.evidence["records_seen"]) == 2
    assert finding.evidence["publish"] in (
        'two.example. TXT "v=spf1 ip4:127.0.0.1 include:_spf.mailhost.example -all"',
        'two.example. TXT "v=spf1 include:_spf.mailhost.example ip4:127.0.0.1 -all"',
    )
    # No single policy exists, so the per-record checks cannot judge it: they only restate spf.multiple
    # (skipped, naming it), never pass.
    skipped = _one(found, "spf.permissive_all", "two.example")
    assert skipped.status is Status.SKIPPED and skipped.caused_by == finding.id


def test_multiple_passes_with_one_record_and_errors_on_timeout(dns_server, add_zone) -> None:
    add_zone("one.example", '@ TXT "v=spf1 -all"\n@ TXT "v=spf10 other"')
    add_zone("slow.example", '@ TXT "v=spf1 -all"')
    dns_server.timeout_names.add("slow.example")
    found = _judge(dns_server, "one.example", "slow.example")
    assert _one(found, "spf.multiple", "one.example").status is Status.PASS
    slow = _one(found, "spf.multiple", "slow.example")
    assert slow.status is Status.ERROR and "timeout" in slow.reason


# ---------------------------------------------------------------- spf.syntax


def test_syntax_error_fails_naming_the_term_and_the_fixed_record(dns_server, add_zone) -> None:
    add_zone("typo.example", '@ TXT "v=spf1 ip4:127.0.0.1 a:mailhost ip4:127.0.0.300 -all"')
    finding = _one(_judge(dns_server, "typo.example"), "spf.syntax", "typo.example")
    assert finding.status is Status.FAIL
    assert finding.evidence["record"] == "v=spf1 ip4:127.0.0.1 a:mailhost ip4:127.0.0.300 -all"
    assert any("a:mailhost" in p for p in finding.evidence["problems"])
    assert any("127.0.0.300" in p for p in finding.evidence["problems"])
    assert finding.evidence["publish"] == 'typo.example. TXT "v=spf1 ip4:127.0.0.1 -all"'


def test_include_of_a_name_without_spf_is_broken(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "v=spf1 include:gone.other.example -all"')
    add_zone("other.example", "")
    finding = _one(_judge(dns_server, "acme.example"), "spf.syntax", "acme.example")
    assert finding.status is Status.FAIL
    assert "gone.other.example publishes no SPF record" in finding.evidence["problems"][0]
    assert finding.evidence["publish"] == 'acme.example. TXT "v=spf1 -all"'


def test_duplicate_redirect_is_a_syntax_error(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "v=spf1 redirect=_spf.acme.example redirect=_spf.acme.example"\n'
                             '_spf TXT "v=spf1 -all"')
    finding = _one(_judge(dns_server, "acme.example"), "spf.syntax", "acme.example")
    assert finding.status is Status.FAIL
    assert finding.evidence["publish"] == 'acme.example. TXT "v=spf1 redirect=_spf.acme.example"'


def test_syntax_passes_and_errors_when_an_include_times_out(dns_server, add_zone) -> None:
    add_zone("good.example", '@ TXT "v=spf1 mx a:mail.good.example include:_spf.mailhost.example -all"\n'
                             '@ MX 10 mail.good.example.\nmail A 127.0.0.25')
    add_zone("mailhost.example", PROVIDER)
    add_zone("hung.example", '@ TXT "v=spf1 include:_spf.slow.example -all"')
    add_zone("slow.example", '_spf TXT "v=spf1 -all"')
    dns_server.timeout_names.add("_spf.slow.example")
    found = _judge(dns_server, "good.example", "hung.example")
    assert _one(found, "spf.syntax", "good.example").status is Status.PASS
    hung = _one(found, "spf.syntax", "hung.example")
    assert hung.status is Status.ERROR and "_spf.slow.example" in hung.reason and "timeout" in hung.reason


# ---------------------------------------------------------------- spf.too_many_lookups


def test_too_many_lookups_fails_and_flattens_address_only_includes(dns_server, add_zone) -> None:
    providers = "\n".join(f'inc{i} TXT "v=spf1 ip4:127.3.0.{i} -all"' for i in range(1, 12))
    add_zone("prov.example", providers)
    includes = " ".join(f"include:inc{i}.prov.example" for i in range(1, 12))
    add_zone("big.example", f"@ TXT {_quoted(f'v=spf1 {includes} -all')}")
    finding = _one(_judge(dns_server, "big.example"), "spf.too_many_lookups", "big.example")
    assert finding.status is Status.FAIL
    assert finding.evidence["lookups"] == 11 and finding.evidence["limit"] == 10
    assert finding.evidence["lookups_after_fix"] <= 10
    assert "ip4:127.3.0.1" in finding.evidence["publish"] and finding.evidence["flattened"]


def test_include_loop_fails_and_stops(dns_server, add_zone) -> None:
    add_zone("loop.example", '@ TXT "v=spf1 include:a.loop.example -all"\n'
                             'a TXT "v=spf1 include:b.loop.example -all"\nb TXT "v=spf1 include:a.loop.example -all"')
    found = _judge(dns_server, "loop.example")
    finding = _one(found, "spf.too_many_lookups", "loop.example")
    assert finding.status is Status.FAIL
    assert "a.loop.example -> b.loop.example -> a.loop.example" in finding.evidence["problems"][0]
    assert _one(found, "spf.syntax", "loop.example").status is Status.PASS


def test_more_than_ten_mx_names_fail(dns_server, add_zone) -> None:
    mx = "\n".join(f"@ MX {i} mx{i}.manymx.example." for i in range(11))
    add_zone("manymx.example", f'@ TXT "v=spf1 mx -all"\n{mx}')
    finding = _one(_judge(dns_server, "manymx.example"), "spf.too_many_lookups", "manymx.example")
    assert finding.status is Status.FAIL and "11 MX names" in finding.evidence["problems"][0]


def test_lookups_pass_at_the_limit_and_error_on_servfail(dns_server, add_zone) -> None:
    terms = " ".join(f"a:h{i}.ten.example" for i in range(10))
    hosts = "\n".join(f"h{i} A 127.0.0.{i + 1}" for i in range(10))
    add_zone("ten.example", f'@ TXT "v=spf1 {terms} -all"\n{hosts}')
    add_zone("sf.example", '@ TXT "v=spf1 include:_spf.sf.example -all"\n_spf TXT "v=spf1 -all"')
    dns_server.servfail_names.add("_spf.sf.example")
    found = _judge(dns_server, "ten.example", "sf.example")
    ten = _one(found, "spf.too_many_lookups", "ten.example")
    assert ten.status is Status.PASS and ten.evidence["lookups"] == 10
    sf = _one(found, "spf.too_many_lookups", "sf.example")
    assert sf.status is Status.ERROR and "SERVFAIL" in sf.reason


# ---------------------------------------------------------------- spf.void_lookups


def test_void_lookups_fail_over_two(dns_server, add_zone) -> None:
    add_zone("void.example", '@ TXT "v=spf1 a:old1.void.example a:old2.void.example mx:old3.void.example '
                             'ip4:127.0.0.1 -all"\nhost A 127.0.0.9')
    finding = _one(_judge(dns_server, "void.example"), "spf.void_lookups", "void.example")
    assert finding.status is Status.FAIL and finding.evidence["void_lookups"] == 3
    assert finding.evidence["publish"] == 'void.example. TXT "v=spf1 ip4:127.0.0.1 -all"'


def test_void_lookups_pass_at_two_and_error_on_timeout(dns_server, add_zone) -> None:
    add_zone("two.example", '@ TXT "v=spf1 a:old1.two.example a:old2.two.example -all"')
    add_zone("wait.example", '@ TXT "v=spf1 a:host.wait.example -all"\nhost A 127.0.0.9')
    dns_server.timeout_names.add("host.wait.example")
    found = _judge(dns_server, "two.example", "wait.example")
    assert _one(found, "spf.void_lookups", "two.example").status is Status.PASS
    wait = _one(found, "spf.void_lookups", "wait.example")
    assert wait.status is Status.ERROR and "host.wait.example" in wait.reason


# ---------------------------------------------------------------- spf.permissive_all


def test_plus_all_question_all_and_no_all_fail(dns_server, add_zone) -> None:
    add_zone("plus.example", '@ TXT "v=spf1 ip4:127.0.0.1 +all"')
    add_zone("query.example", '@ TXT "v=spf1 ip4:127.0.0.1 ?all"')
    add_zone("bare.example", '@ TXT "v=spf1 ip4:127.0.0.1"')
    found = _judge(dns_server, "plus.example", "query.example", "bare.example")
    plus = _one(found, "spf.permissive_all", "plus.example")
    assert plus.status is Status.FAIL and plus.evidence["all"] == "+all"
    assert plus.evidence["publish"] == 'plus.example. TXT "v=spf1 ip4:127.0.0.1 -all"'
    assert _one(found, "spf.permissive_all", "query.example").evidence["all"] == "?all"
    bare = _one(found, "spf.permissive_all", "bare.example")
    assert bare.status is Status.FAIL and bare.evidence["publish"] == 'bare.example. TXT "v=spf1 ip4:127.0.0.1 -all"'


def test_redirect_and_open_includes_are_followed(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "v=spf1 redirect=_spf.acme.example"\n_spf TXT "v=spf1 ip4:127.0.0.1 ?all"')
    add_zone("strict.example", '@ TXT "v=spf1 redirect=_spf.strict.example"\n_spf TXT "v=spf1 ip4:127.0.0.1 -all"')
    add_zone("open.example", '@ TXT "v=spf1 include:any.lax.example -all"')
    add_zone("lax.example", 'any TXT "v=spf1 +all"')
    found = _judge(dns_server, "acme.example", "strict.example", "open.example")
    acme = _one(found, "spf.permissive_all", "acme.example")
    assert acme.status is Status.FAIL and acme.evidence["all_published_at"] == "_spf.acme.example"
    assert acme.evidence["publish"] == '_spf.acme.example. TXT "v=spf1 ip4:127.0.0.1 -all"'
    strict = _one(found, "spf.permissive_all", "strict.example")
    assert strict.status is Status.PASS and strict.evidence["all"] == "-all"
    opened = _one(found, "spf.permissive_all", "open.example")
    assert opened.status is Status.FAIL and "matches every host" in opened.evidence["reasons"][0]
    assert opened.evidence["publish"] == 'open.example. TXT "v=spf1 -all"'


def test_permissive_all_errors_when_the_redirect_times_out(dns_server, add_zone) -> None:
    add_zone("redir.example", '@ TXT "v=spf1 redirect=_spf.redir.example"\n_spf TXT "v=spf1 -all"')
    dns_server.timeout_names.add("_spf.redir.example")
    finding = _one(_judge(dns_server, "redir.example"), "spf.permissive_all", "redir.example")
    assert finding.status is Status.ERROR and "timeout" in finding.reason


# ---------------------------------------------------------------- spf.ptr


def test_ptr_fails_in_the_record_and_in_an_include(dns_server, add_zone) -> None:
    add_zone("ptr.example", '@ TXT "v=spf1 ptr ip4:127.0.0.1 -all"')
    add_zone("via.example", '@ TXT "v=spf1 include:_spf.old.example -all"')
    add_zone("old.example", '_spf TXT "v=spf1 ptr:old.example ?all"')
    found = _judge(dns_server, "ptr.example", "via.example")
    own = _one(found, "spf.ptr", "ptr.example")
    assert own.status is Status.FAIL and own.evidence["publish"] == 'ptr.example. TXT "v=spf1 ip4:127.0.0.1 -all"'
    via = _one(found, "spf.ptr", "via.example")
    assert via.status is Status.FAIL and via.evidence["ptr_terms"] == ["_spf.old.example: ptr:old.example"]
    assert via.evidence["publish"] == 'via.example. TXT "v=spf1 -all"'  # not ours to edit: drop the include


def test_ptr_passes_and_errors_on_a_failed_include(dns_server, add_zone) -> None:
    add_zone("clean.example", '@ TXT "v=spf1 ip4:127.0.0.1 -all"')
    add_zone("unk.example", '@ TXT "v=spf1 include:_spf.unk.example -all"\n_spf TXT "v=spf1 ptr -all"')
    dns_server.servfail_names.add("_spf.unk.example")
    found = _judge(dns_server, "clean.example", "unk.example")
    assert _one(found, "spf.ptr", "clean.example").status is Status.PASS
    assert _one(found, "spf.ptr", "unk.example").status is Status.ERROR


# ---------------------------------------------------------------- spf.undeclared_sender


def test_undeclared_includes_fail_one_per_item(dns_server, add_zone) -> None:
    add_zone("mailhost.example", PROVIDER)
    add_zone("bulk.example", 'eu TXT "v=spf1 ip4:127.4.0.0/16 -all"')
    add_zone("stranger.example", '_spf TXT "v=spf1 ip4:127.5.0.1 -all"')
    add_zone("acme.example", '@ TXT "v=spf1 include:_spf.mailhost.example include:eu.bulk.example '
                             'include:_spf.stranger.example -all"')
    found = _judge(dns_server, "acme.example", senders=("mailhost",))
    by_item = {f.item: f for f in found[("spf.undeclared_sender", "acme.example")]}
    assert set(by_item) == {"_spf.mailhost.example", "eu.bulk.example", "_spf.stranger.example"}
    assert by_item["_spf.mailhost.example"].status is Status.PASS
    bulk = by_item["eu.bulk.example"]
    assert bulk.status is Status.FAIL and bulk.evidence["catalogue_sender"] == "bulk"
    assert bulk.evidence["publish"] == (
        'acme.example. TXT "v=spf1 include:_spf.mailhost.example include:_spf.stranger.example -all"')
    stranger = by_item["_spf.stranger.example"]
    assert stranger.status is Status.FAIL and "catalogue_sender" not in stranger.evidence


def test_declared_senders_pass_through_the_tenants_own_sub_record(dns_server, add_zone) -> None:
    add_zone("bulk.example", 'eu TXT "v=spf1 ip4:127.4.0.0/16 -all"')
    add_zone("acme.example", '@ TXT "v=spf1 redirect=_spf.acme.example"\n_spf TXT "v=spf1 include:eu.bulk.example -all"')
    found = _judge(dns_server, "acme.example", senders=("bulk",))
    (finding,) = found[("spf.undeclared_sender", "acme.example")]
    assert finding.status is Status.PASS and finding.item == "eu.bulk.example" and finding.evidence["sender"] == "bulk"


def test_undeclared_sender_errors_when_the_tenants_sub_record_fails(dns_server, add_zone) -> None:
    add_zone("acme.example", '@ TXT "v=spf1 include:_spf.acme.example -all"\n_spf TXT "v=spf1 -all"')
    dns_server.servfail_names.add("_spf.acme.example")
    (finding,) = _judge(dns_server, "acme.example")[("spf.undeclared_sender", "acme.example")]
    assert finding.status is Status.ERROR and finding.item == "_spf.acme.example"


# ---------------------------------------------------------------- hostile data


def test_record_split_into_many_255_byte_strings_is_joined(dns_server, add_zone) -> None:
    record = "v=spf1 " + " ".join(f"ip4:127.{i // 250}.{i % 250}.1" for i in range(700)) + " -all"
    add_zone("long.example", f"@ TXT {_quoted(record)}")
    found = _judge(dns_server, "long.example")
    assert len(record) > 10_000
    assert _one(found, "spf.syntax", "long.example").status is Status.PASS
    assert _one(found, "spf.permissive_all", "long.example").status is Status.PASS
    assert _one(found, "spf.too_many_lookups", "long.example").evidence["lookups"] == 0


def test_non_ascii_and_markup_get_verdicts_not_crashes(dns_server, add_zone) -> None:
    add_zone("utf.example", '@ TXT "v=spf1 a:m\\195\\164il.utf.example -all"')
    add_zone("xss.example", '@ TXT "v=spf1 include:<script>alert(1)</script>.xss.example -all"')
    found = _judge(dns_server, "utf.example", "xss.example")
    utf = _one(found, "spf.syntax", "utf.example")
    assert utf.status is Status.FAIL and "\\xe4" in utf.evidence["problems"][0]
    assert utf.evidence["publish"] == 'utf.example. TXT "v=spf1 -all"'
    xss = _one(found, "spf.syntax", "xss.example")
    assert xss.status is Status.FAIL and "publishes no SPF record" in xss.evidence["problems"][0]
    assert all(f.status is not Status.ERROR for (c, d), fs in found.items() for f in fs)


def test_cname_loop_at_an_include_gives_error_naming_the_chain(dns_server, add_zone) -> None:
    # A resolver cannot answer through a CNAME loop (RFC 1034 §3.6.2), so receivers get temperror: unknown, not pass.
    add_zone("cn.example", '@ TXT "v=spf1 include:_spf.cn.example -all"\n_spf CNAME spin.cn.example.\n'
                           'spin CNAME _spf.cn.example.')
    found = _judge(dns_server, "cn.example")
    for check_id in ("spf.syntax", "spf.too_many_lookups", "spf.void_lookups", "spf.ptr"):
        finding = _one(found, check_id, "cn.example")
        assert finding.status is Status.ERROR and "CNAME loop: _spf.cn.example -> spin.cn.example -> _spf.cn.example" in finding.reason, check_id
    assert _one(found, "spf.permissive_all", "cn.example").status is Status.PASS  # the apex -all decides


def test_64_kb_answer_is_judged_within_the_budget(dns_server, add_zone) -> None:
    terms = " ".join(f"include:n{i}.far.example" for i in range(3000))
    record = f"v=spf1 {terms} -all"[:63_000]
    add_zone("huge.example", f"@ TXT {_quoted(record)}")
    add_zone("far.example", "")
    client = DnsClient([dns_server.nameserver], timeout=0.5)
    started = time.monotonic()
    found = _judge(dns_server, "huge.example", client=client)
    assert time.monotonic() - started < 5
    lookups = _one(found, "spf.too_many_lookups", "huge.example")
    assert lookups.status is Status.FAIL and lookups.evidence["lookups"] > 2000
    assert client.queries < 120  # the evaluation stops following after its budget of 50 terms
    assert "evaluation stopped" in lookups.evidence["problems"][0]
    syntax = _one(found, "spf.syntax", "huge.example")
    assert syntax.status is Status.FAIL
    assert any("n0.far.example publishes no SPF record" in p for p in syntax.evidence["problems"])
    assert _one(found, "spf.void_lookups", "huge.example").status is Status.FAIL
    items = found[("spf.undeclared_sender", "huge.example")]
    assert len(items) == 51 and {f.status for f in items} == {Status.FAIL}  # 50 judged one by one, then the rest
    assert items[-1].item == "(more includes)" and "n50.far.example" not in items[-1].evidence["publish"]


def test_a_providers_include_chain_is_queried_once_for_many_domains(dns_server, add_zone) -> None:
    add_zone("mailhost.example", PROVIDER)
    names = [f"c{i}.example" for i in range(40)]
    for name in names:
        add_zone(name, '@ TXT "v=spf1 include:_spf.mailhost.example -all"')
    client = DnsClient([dns_server.nameserver], timeout=0.5)
    found = _judge(dns_server, *names, client=client)
    # Per domain: MX, apex TXT, _dmarc, _mta-sts and _smtp._tls TXT. Once per run: the provider's three records
    # and the DMARC tree walk's _dmarc.example (RFC 9989 §4.10), shared by every domain.
    assert client.queries == 5 * len(names) + 3 + 1
    assert all(_one(found, "spf.undeclared_sender", n).status is Status.PASS for n in names)
    assert all(_one(found, "spf.too_many_lookups", n).evidence["lookups"] == 3 for n in names)
