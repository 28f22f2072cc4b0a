"""The strict DMARC record parser (RFC 7489 §6.3, §6.4, §6.6.3 step 6) and record rewriting."""

from __future__ import annotations

import pytest

from scanner.dmarc import is_dmarc_record, parse_dmarc_record, report_domains, rewrite_record


def test_a_full_valid_record() -> None:
    record = parse_dmarc_record(
        "v=DMARC1; p=Reject; sp=quarantine; pct=50; rua=mailto:a@rep.example!10m,mailto:b@x.example; "
        "ruf=mailto:f@x.example; adkim=s; aspf=r; fo=1:d; rf=afrf; ri=3600"
    )
    assert record.problems == ()
    assert (record.policy, record.subdomain_policy, record.pct, record.adkim, record.ri) == (
        "reject", "quarantine", 50, "s", 3600
    )
    assert [u.domain for u in record.rua] == ["rep.example", "x.example"] and record.rua[0].size_limit == "10m"
    assert record.mailto_domains == ("rep.example", "x.example")
    assert (record.applied_policy, record.applied_subdomain_policy) == ("reject", "quarantine")


def test_defaults() -> None:
    record = parse_dmarc_record("v=DMARC1; p=none")
    assert (record.pct, record.adkim, record.aspf, record.fo, record.rf, record.ri) == (
        100, "r", "r", ("0",), ("afrf",), 86400
    )
    assert record.applied_subdomain_policy == "none"  # sp defaults to p


def test_missing_p_with_a_valid_rua_is_treated_as_none() -> None:
    # RFC 7489 §6.6.3 step 6.1
    record = parse_dmarc_record("v=DMARC1; rua=mailto:d@a.example")
    assert record.applied_policy == "none" and any("p= is missing" in p for p in record.problems)


def test_missing_p_without_rua_means_no_dmarc() -> None:
    # RFC 7489 §6.6.3 step 6.2
    assert parse_dmarc_record("v=DMARC1").applied_policy is None


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
        ("v=DMARC1; p=reject; rf=iodef", "rf='iodef'"),
        ("v=DMARC1; p=reject; ri=soon", "ri='soon'"),
        ("v=DMARC1; p=reject; ri=99999999999", "ri="),
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
    assert rewrite_record(record, {"p": "reject", "pct": None}) == "v=DMARC1; p=reject; rua=mailto:d@a.example; adkim=r"


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
