"""Parked-domain check: a domain declared as sending no mail says so in DNS (null MX, SPF -all, DMARC reject)."""

from __future__ import annotations

from checks.dmarc import discovery_of, dmarc_records
from checks.mx import mx_records
from checks.registry import Result, RunContext, check
from scanner.dns.records import dmarc_tags, records
from scanner.model import Domain, Scope, Severity
from scanner.dns.spf import spf_records


def _lowered(record: str) -> dict[str, str]:
    """A DMARC record's tags with values lowercased (policy values compare case-insensitively)."""
    return {name: value.lower() for name, value in dmarc_tags(record).items()}


def lock_records(domain: str) -> list[str]:
    """The three records that lock a domain that sends and receives no mail."""
    return [
        f"{domain}. MX 0 .",
        f'{domain}. TXT "v=spf1 -all"',
        f'_dmarc.{domain}. TXT "v=DMARC1; p=reject; sp=reject; adkim=s; aspf=s"',
    ]


def _dmarc_policy(domain: Domain) -> tuple[str | None, list[str], Result | None]:
    """The DMARC policy that applies to the domain (own p=, else the inherited sp= or p=), records seen."""
    own = domain.dns.get("dmarc")
    assert own is not None
    records = dmarc_records(own)
    if records:
        return (_lowered(records[0]).get("p") if len(records) == 1 else None), records, None
    walk = discovery_of(domain)
    chosen = walk.policy
    if chosen is None:
        if walk.walk_failed is not None:
            failed = walk.walk_failed
            return None, [], Result.error(f"DNS lookup of {failed.name} TXT failed: {failed.error}")
        return None, [], None  # RFC 9989 §4.11: no record on the tree walk, no DMARC policy applies
    name, record, _ = chosen
    # RFC 9989 §4.11: an existing domain that inherits a policy gets sp=, p= when sp= is absent.
    return record.applied_subdomain_policy, dmarc_records(domain.dns.get(f"dmarc_walk:{name}")), None


@check(
    id="parked.not_locked",
    title="Parked domain is not locked against spoofing",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.mx", "dns.spf", "dns.dmarc"),
    rationale=(
        "A domain that sends no mail is an easy one to spoof: with a null MX, an SPF record that authorizes "
        "nobody and a DMARC reject policy, receivers refuse any mail claiming to come from it."
    ),
    references=("RFC 7505 §3", "RFC 7208 §5.1", "RFC 7489 §6.3", "M3AAWG Protecting Parked Domains (2015)"),
    remediation=None,
)
def parked_not_locked(domain: Domain, ctx: RunContext) -> Result:
    """Fail when a parked domain lacks any of: a null MX, SPF exactly ``v=spf1 -all``, DMARC ``p=reject``."""
    if not domain.parked:
        # Decision: the rule is only about domains declared in parked_domains; others meet it trivially.
        return Result.passed(parked=False)
    mx_answer, txt_answer = domain.dns.get("mx"), domain.dns.get("txt")
    assert mx_answer is not None and txt_answer is not None
    policy, dmarc_seen, error = _dmarc_policy(domain)
    if error is not None:
        return error
    mx = mx_records(mx_answer)
    spf = list(spf_records(records(txt_answer)))
    missing = []
    if not (len(mx) == 1 and mx[0].null):
        missing.append("null MX (RFC 7505)")
    if not (len(spf) == 1 and spf[0].lower().split() == ["v=spf1", "-all"]):
        missing.append('SPF "v=spf1 -all"')
    if policy != "reject":
        missing.append("DMARC p=reject")
    seen = {
        "mx": list(records(mx_answer)),
        "spf": spf,
        "dmarc": dmarc_seen,
    }
    if not missing:
        return Result.passed(parked=True, records=seen)
    return Result.failed(
        parked=True,
        missing=missing,
        records_seen=seen,
        remove=[f"{domain.name}. MX {r.preference} {r.host}." for r in mx if not r.null],
        publish=lock_records(domain.name),
    )
