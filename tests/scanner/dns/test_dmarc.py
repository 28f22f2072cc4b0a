"""The DMARC record parser (RFC 9989 §5.3, §5.4, §4.11), record rewriting and the DNS tree walk (§4.10, §4.12)."""

from __future__ import annotations

import pytest

import checkdmarc.dmarc

from scanner.dns.dmarc import discover, is_dmarc_record, parse_dmarc_record, report_domains, rewrite_record, walk_targets
from scanner.model import DnsAnswer, Outcome


def test_a_full_valid_record() -> None:
    record = parse_dmarc_record(
        "v=DMARC1; p=Reject; sp=quarantine; pct=50; rua=mailto:a@rep.example!10m,mailto:b@x.example; "
        "ruf=mailto:f@x.example; adkim=s; aspf=r; fo=1:d; rf=afrf; ri=3600"
    )
    assert record.problems == ()
    assert (record.policy, record.subdomain_policy, record.pct, record.adkim) == ("reject", "quarantine", 50, "s")
    assert [u.domain for u in record.rua] == ["rep.example", "x.example"] and record.rua[0].size_limit == "10m"
    assert record.mailto_domains == ("rep.example", "x.example")
    assert (record.applied_policy, record.applied_subdomain_policy) == ("reject", "quarantine")


def test_defaults() -> None:
    record = parse_dmarc_record("v=DMARC1; p=none")
    assert (record.pct, record.adkim, record.aspf, record.fo, record.testing, record.psd) == (
        100, "r", "r", ("0",), False, "u"
    )
    assert record.applied_subdomain_policy == "none"  # sp defaults to p
    assert record.applied_nonexistent_policy == "none"  # np defaults to sp


def test_a_record_without_p_is_p_none_and_no_syntax_problem() -> None:
    # RFC 9989 §5.3 p: "If this tag is not present in an otherwise syntactically valid DMARC record, then the
    # record is treated as if it included p=none"; p is RECOMMENDED, no longer required.
    for text in ("v=DMARC1; rua=mailto:d@a.example", "v=DMARC1"):
        record = parse_dmarc_record(text)
        assert record.problems == () and record.applied_policy == "none"


def test_an_invalid_np_voids_the_policy_unless_rua_is_valid() -> None:
    # RFC 9989 §4.11: an invalid p, sp or np: p=none with a valid rua, else no DMARC processing.
    assert parse_dmarc_record("v=DMARC1; p=reject; np=block; rua=mailto:d@a.example").applied_policy == "none"
    assert parse_dmarc_record("v=DMARC1; p=reject; np=block").applied_policy is None


def test_np_t_and_psd_are_parsed() -> None:
    record = parse_dmarc_record("v=DMARC1; p=reject; sp=quarantine; np=none; t=y; psd=n")
    assert (record.applied_policy, record.applied_subdomain_policy, record.applied_nonexistent_policy) == (
        "reject", "quarantine", "none")
    assert record.testing and record.psd == "n" and record.problems == ()


def test_rf_ri_and_unknown_tags_are_ignored_in_any_order() -> None:
    # RFC 9989 §5.3: rf and ri are removed and unknown tags MUST be ignored; tag order after v is free.
    record = parse_dmarc_record("v=DMARC1; rf=iodef; ri=soon; zz=1; rua=mailto:d@a.example; p=reject")
    assert record.problems == () and record.applied_policy == "reject"


def test_invalid_sp_invalidates_the_policy() -> None:
    record = parse_dmarc_record("v=DMARC1; p=reject; sp=block; rua=mailto:d@a.example")
    assert record.applied_policy == "none" and record.applied_subdomain_policy == "none"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v=DMARC1; p=monitor", "p='monitor'"),
        ("v=DMARC1; p=reject; pct=150", "pct='150'"),
        ("v=DMARC1; p=reject; pct=-1", "pct='-1'"),
        ("v=DMARC1; p=reject; pct=0100", "pct='0100'"),
        ("v=DMARC1; p=reject; adkim=x", "adkim='x'"),
        ("v=DMARC1; p=reject; aspf=relaxed", "aspf='relaxed'"),
        ("v=DMARC1; p=reject; fo=2", "fo='2'"),
        ("v=DMARC1; p=reject; np=monitor", "np='monitor'"),
        ("v=DMARC1; p=reject; t=maybe", "t='maybe'"),
        ("v=DMARC1; p=reject; psd=x", "psd='x'"),
        ("v=DMARC1; p=reject; rua=d@a.example", "not a URI"),
        ("v=DMARC1; p=reject; rua=mailto:d@a.example!big", "invalid size limit"),
        ("v=DMARC1; p=reject; rua=mailto:nobody", "valid address"),
        ("v=DMARC1; p=reject; rua=mailto:d@caf\u00e9.example", "not a URI"),
        ("v=DMARC1; p=reject; rua=mailto:d@-bad-.example", "valid address"),
        ("p=reject; v=DMARC1", "must start with v=DMARC1"),
        ("v=DMARC1; p=reject; p=none", "appears more than once"),
    ],
)
def test_invalid_values(text: str, problem: str) -> None:
    record = parse_dmarc_record(text)
    assert any(problem in p for p in record.problems), record.problems


def test_unknown_tags_are_ignored_and_names_fold_case() -> None:
    record = parse_dmarc_record("v=DMARC1; P=Quarantine; np=reject; psd=n; x=<script>")
    assert record.problems == () and record.policy == "quarantine"


def test_non_mailto_uri_is_kept_but_has_no_mailto_domain() -> None:
    record = parse_dmarc_record("v=DMARC1; p=reject; rua=https://rep.example/dmarc")
    assert record.problems == () and record.rua[0].scheme == "https" and record.mailto_domains == ()


def test_version_detection() -> None:
    assert is_dmarc_record("v=DMARC1; p=none") and is_dmarc_record("v=DMARC1")
    assert not is_dmarc_record("v=dmarc1; p=none")
    assert not is_dmarc_record("v=DMARC10; p=none")
    assert not is_dmarc_record("v=spf1 -all")


def test_rewrite_keeps_valid_tags_and_applies_changes() -> None:
    record = parse_dmarc_record("v=DMARC1; pct=20; p=none; rua=mailto:d@a.example; x=1; adkim=bogus")
    # Cross-version: p first, explicit sp and np, rua; pct (removed by RFC 9989) and unknown tags dropped.
    assert rewrite_record(record, {"p": "reject"}) == (
        "v=DMARC1; p=reject; sp=reject; np=reject; rua=mailto:d@a.example; adkim=r")


def test_report_domains_skip_non_dmarc_text() -> None:
    assert report_domains(["v=spf1 -all", "v=DMARC1; p=none; rua=mailto:a@B.example,mailto:c@b.example"]) == (
        "b.example",
    )


def test_hostile_records() -> None:
    many = ",".join(f"mailto:r{i}@d{i}.example" for i in range(2000))
    hostile = [
        "v=DMARC1; " + "x" * 255 * 200,
        "v=DMARC1; p=reject; rua=" + many,
        "v=DMARC1; p=<script>alert(1)</script>",
        "v=DMARC1; p=r\u00e9ject; rua=mailto:\u202e@x.example",
        "v=DMARC1" + ";" * 3000,
        "v=DMARC1; rua=" + "," * 3000,
    ]
    for text in hostile:
        record = parse_dmarc_record(text)
        assert all(len(p) < 200 for p in record.problems)
    assert len(parse_dmarc_record(hostile[1]).mailto_domains) == 2000
    assert parse_dmarc_record(hostile[2]).applied_policy is None


def test_the_tree_walk_asks_at_most_eight_names() -> None:
    # RFC 9989 §4.10 step 5: fewer than 8 labels lose one label a step; 8 or more are cut to 7 first.
    assert walk_targets("a.mail.example.com") == ("mail.example.com", "example.com", "com")
    deep = "a.b.c.d.e.f.g.h.i.example.com"
    assert walk_targets(deep)[0] == "e.f.g.h.i.example.com" and 1 + len(walk_targets(deep)) <= 8
    assert walk_targets("example") == ()


def _answers(records: dict[str, str]) -> object:
    def answer_at(name: str) -> DnsAnswer:
        text = records.get(name)
        if text is None:
            return DnsAnswer(f"_dmarc.{name}", "TXT", Outcome.NXDOMAIN)
        return DnsAnswer(f"_dmarc.{name}", "TXT", Outcome.ANSWER, (text,))
    return answer_at


def test_the_organizational_domain_is_the_record_with_fewest_labels() -> None:
    # The RFC 9989 §4.12 example: records at mail.example.com and example.com give example.com.
    walk = discover("a.mail.example.com", _answers({"mail.example.com": "v=DMARC1; p=none",
                                                     "example.com": "v=DMARC1; p=reject"}))
    assert walk.org_domain == "example.com" and walk.policy is not None and walk.policy[0] == "example.com"


def test_psd_y_makes_the_domain_one_label_below_it_organizational() -> None:
    # RFC 9989 §4.12 second example: only _dmarc.com with psd=y gives example.com, whose policy is the PSD's.
    walk = discover("a.mail.example.com", _answers({"com": "v=DMARC1; p=reject; psd=y"}))
    assert walk.org_domain == "example.com"
    assert walk.policy is not None and walk.policy[0] == "com" and walk.policy[2] == "psd"


def test_psd_n_stops_the_walk_and_names_the_organizational_domain() -> None:
    walk = discover("a.mail.example.com", _answers({"mail.example.com": "v=DMARC1; p=reject; psd=n",
                                                     "example.com": "v=DMARC1; p=none"}))
    assert walk.org_domain == "mail.example.com" and "_dmarc.example.com" not in walk.asked


def test_a_failed_lookup_above_the_domain_leaves_the_organizational_domain_unknown() -> None:
    def answer_at(name: str) -> DnsAnswer:
        if name == "example.com":
            return DnsAnswer("_dmarc.example.com", "TXT", Outcome.FAILED, error="timeout after 1s")
        return DnsAnswer(f"_dmarc.{name}", "TXT", Outcome.NXDOMAIN)
    walk = discover("mail.example.com", answer_at)
    assert walk.org_domain is None and walk.walk_failed is not None and walk.policy is None


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC1; p=reject; sp=quarantine; np=reject; rua=mailto:d@a.example",
        "v=DMARC1; p=none; t=y; rua=mailto:d@a.example",
        "v=DMARC1; rua=mailto:d@a.example",
        "v=DMARC1; p=quarantine; psd=n",
    ],
)
def test_checkdmarc_agrees_on_the_tags_of_valid_records(text: str) -> None:
    # A second opinion: checkdmarc (>= 5.16 follows RFC 9989) parses the same record to the same policy tags.
    theirs = checkdmarc.dmarc.parse_dmarc_record(text, "a.example", include_tag_descriptions=False)["tags"]
    ours = parse_dmarc_record(text)
    assert ours.problems == ()
    assert theirs["p"]["value"] == ours.applied_policy
    assert theirs["sp"]["value"] == ours.applied_subdomain_policy
    if "np" in theirs:
        assert theirs["np"]["value"] == ours.applied_nonexistent_policy
