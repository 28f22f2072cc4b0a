"""The RFC 7208 (openspf 2014.04) test suite, served over real DNS on loopback, judged by the spf.* checks.

The suite tests check_host() for one client IP; mailwarden judges the published records for every IP.
So: every case whose expected result is permerror because of the records must be flagged by a check that
reports a permerror-causing fault; no case the suite passes (any result but permerror) may be flagged so;
every temperror case must give ``error``. Cases with a list of acceptable results are not asserted either
way. Where the record-level verdict and the per-IP one legitimately differ, the case is in DIFFERS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.SPF
import dns.zone
import pytest
import yaml

from checks.evaluate import evaluate
from checks.registry import Policy
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

SUITE = Path(__file__).resolve().parents[2] / "data" / "rfc7208-tests.yml"
CHECKS = [spf_missing, spf_multiple, spf_syntax, spf_too_many_lookups, spf_void_lookups, spf_permissive_all,
          spf_ptr, spf_undeclared_sender]
PERMERROR_CHECKS = ("spf.multiple", "spf.syntax", "spf.too_many_lookups", "spf.void_lookups")
NOW = datetime(2026, 11, 25, tzinfo=UTC)

DIFFERS: dict[str, str] = {
    "include-at-limit": (
        "the record holds 11 DNS-querying terms; the test's IP matches ip4:1.2.3.4 after the 10th, so that "
        "check_host() passes, but any IP not matched by then reaches the 11th term and gets permerror"
    ),
    "multispf1": (
        "two identical records are one RRset on the wire (the suite says live DNS cannot reproduce it), "
        "so one record is seen"
    ),
}


@dataclass(frozen=True)
class Case:
    section: str
    name: str
    domain: str
    result: str | tuple[str, ...]


def _sections() -> list[dict[str, Any]]:
    with SUITE.open(encoding="utf-8") as handle:
        return [s for s in yaml.safe_load_all(handle) if s]


def _identity(case: dict[str, Any]) -> str | None:
    """The domain check_host() is asked about: the MAIL FROM domain, or the HELO name (RFC 7208 §2.4)."""
    mailfrom = str(case.get("mailfrom") or "")
    domain = mailfrom.rpartition("@")[2] if mailfrom else str(case.get("helo") or "")
    if not domain or domain.startswith("[") or "." not in domain.strip("."):
        return None  # a domain literal or a bare label: check_host() returns none without DNS
    return domain.lower().rstrip(".")


def _cases(section: dict[str, Any]) -> Iterator[Case]:
    for name, case in section["tests"].items():
        domain = _identity(case)
        if domain is not None:
            result = case["result"]
            yield Case(section["description"], name, domain, tuple(result) if isinstance(result, list) else result)


def _bytes(text: str) -> bytes:
    """The octets a suite string stands for: \\xNN escapes are octets, wider characters UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _name(text: str) -> dns.name.Name:
    """A name from suite text, labels taken verbatim (they may hold ':', '/', '%' or spaces)."""
    labels = [_bytes(label) for label in str(text).rstrip(".").split(".")] if str(text).strip(".") else []
    return dns.name.Name([*labels, b""])


def _strings(value: Any) -> list[bytes]:
    return [_bytes(v) for v in value] if isinstance(value, list) else [_bytes(str(value))]


def load_zone(server: ZoneServer, zonedata: dict[str, list[Any]]) -> None:
    """Serve a section's zone data from one root zone; TIMEOUT names stay silent for the types they lack."""
    zone = dns.zone.Zone(dns.name.root, relativize=False)
    server.timeout_names.clear()
    IN = dns.rdataclass.IN
    with zone.writer() as txn:
        txn.add(dns.name.root, 300, dns.rdata.from_text(IN, dns.rdatatype.SOA, ". . 1 3600 600 86400 300"))
        for owner_text, entries in zonedata.items():
            owner = _name(owner_text)
            spf = [e["SPF"] for e in entries if isinstance(e, dict) and "SPF" in e]
            txt = [e["TXT"] for e in entries if isinstance(e, dict) and "TXT" in e]
            if not txt:
                txt = spf  # the suite's drivers publish each SPF-type record as TXT too
            txt = [t for t in txt if t != "NONE"]
            if "TIMEOUT" in entries and not txt:
                server.timeout_names.add(owner.to_text())  # only queries we would make (TXT, A...) time out
            for value in spf:
                txn.add(owner, 300, dns.rdtypes.ANY.SPF.SPF(IN, dns.rdatatype.SPF, _strings(value) or [b""]))
            for value in txt:
                txn.add(owner, 300, dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, _strings(value) or [b""]))
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                for rdtype, value in entry.items():
                    if rdtype in ("A", "AAAA"):
                        rdata = dns.rdata.from_text(IN, dns.rdatatype.from_text(rdtype), str(value))
                    elif rdtype == "MX":
                        rdata = dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, int(value[0]), _name(value[1]))
                    elif rdtype in ("PTR", "CNAME"):
                        kind = dns.rdatatype.from_text(rdtype)
                        rdata = dns.rdata.get_rdata_class(IN, kind)(IN, kind, _name(value))
                    else:
                        continue
                    txn.add(owner, 300, rdata)
    server.add_zone(zone)


def judge_section(server: ZoneServer, section: dict[str, Any]) -> dict[str, dict[str, list[Finding]]]:
    """Collect and check every domain the section tests; findings by domain, then by check."""
    load_zone(server, section.get("zonedata") or {})
    domains = sorted({c.domain for c in _cases(section)})
    client = DnsClient([server.nameserver], timeout=0.5)

    async def collect() -> list[Any]:
        return await asyncio.gather(*(client.collect_domain(d) for d in domains))

    facts = asyncio.run(collect())
    tenant = Tenant("suite", None, tuple(domains))
    inventory = Inventory((tenant,), tuple(Domain(d, "suite", False, None, f) for d, f in zip(domains, facts)))
    findings: dict[str, dict[str, list[Finding]]] = {d: {} for d in domains}
    for finding in evaluate(inventory, CHECKS, policy=Policy(), senders={}, now=NOW):
        findings[finding.subject].setdefault(finding.check, []).append(finding)
    return findings


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[Case, dict[str, list[Finding]]]]:
    """Every case with the findings for its domain (one loopback server, one run per section)."""
    out = {}
    with ZoneServer() as server:
        for section in _sections():
            findings = judge_section(server, section)
            for case in _cases(section):
                out[f"{case.section}: {case.name}"] = (case, findings[case.domain])
    return out


def _statuses(found: dict[str, list[Finding]], check_id: str) -> set[Status]:
    return {f.status for f in found.get(check_id, [])}


def test_every_case_is_judged_by_every_check(verdicts) -> None:
    assert len(verdicts) == 200  # 203 cases; 3 ask about a domain literal or a bare label (no DNS)
    for label, (case, found) in verdicts.items():
        assert set(found) == {c.meta.id for c in CHECKS}, label


def test_permerror_from_the_records_is_flagged(verdicts) -> None:
    missed = []
    for label, (case, found) in verdicts.items():
        if case.result != "permerror" or case.name in DIFFERS:
            continue
        if not any(Status.FAIL in _statuses(found, c) for c in PERMERROR_CHECKS):
            missed.append(label)
    assert missed == []


def test_records_the_suite_accepts_are_not_flagged(verdicts) -> None:
    flagged = []
    for label, (case, found) in verdicts.items():
        if isinstance(case.result, tuple) or case.result in ("permerror", "temperror") or case.name in DIFFERS:
            continue
        failing = [c for c in PERMERROR_CHECKS if Status.FAIL in _statuses(found, c)]
        if failing:
            flagged.append((label, failing, [f.evidence.get("problems") for c in failing for f in found[c]]))
    assert flagged == []


def test_no_accepted_record_is_a_syntax_error(verdicts) -> None:
    wrong = [label for label, (case, found) in verdicts.items()
             if "permerror" not in (case.result if isinstance(case.result, tuple) else (case.result,))
             and Status.FAIL in _statuses(found, "spf.syntax")]
    assert wrong == []


def test_timeouts_give_error_never_pass_or_fail(verdicts) -> None:
    temperror = {label: found for label, (case, found) in verdicts.items() if case.result == "temperror"}
    assert len(temperror) == 5
    for label, found in temperror.items():
        # Every lookup counts towards the void limit, so that verdict always depends on the timeout.
        assert _statuses(found, "spf.void_lookups") == {Status.ERROR}, label
        for check_id in (*PERMERROR_CHECKS, "spf.ptr", "spf.permissive_all"):
            assert Status.FAIL not in _statuses(found, check_id), (label, check_id)


def test_the_differences_are_real(verdicts) -> None:
    """Each listed case does differ: a permerror check fails although the suite expects another result."""
    for name in DIFFERS:
        labels = [label for label, (case, _) in verdicts.items() if case.name == name]
        assert labels, name
        for label in labels:
            case, found = verdicts[label]
            if name == "multispf1":
                assert _statuses(found, "spf.multiple") == {Status.PASS}
            else:
                assert any(Status.FAIL in _statuses(found, c) for c in PERMERROR_CHECKS), label
