"""DMARC checks (RFC 7489)."""

from __future__ import annotations

import re

from checks.registry import Result, RunContext, check
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity

# RFC 7489 §6.4: the record starts with the version tag "v=DMARC1" (the value is case-sensitive).
_DMARC_VERSION = re.compile(r"^\s*[vV]\s*=\s*DMARC1\s*(;|$)")


def dmarc_records(answer: DnsAnswer | None) -> list[str]:
    """The TXT strings of an answer that are DMARC records; other TXT records are ignored (RFC 7489 §6.6.3)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    return [r for r in answer.records if _DMARC_VERSION.match(r)]


def suggested_record(domain: Domain, ctx: RunContext) -> str:
    """The DMARC record to publish for a domain that has none."""
    policy = "reject" if domain.parked else ctx.policy.dmarc_min_policy
    if policy == "none":
        policy = "quarantine"
    return f'_dmarc.{domain.name}. TXT "v=DMARC1; p={policy}; rua=mailto:dmarc-reports@{domain.name}"'


@check(
    id="dmarc.missing",
    title="Domain publishes no DMARC record",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Without DMARC, receivers have no policy for mail that fails SPF and DKIM, so anyone can send "
        "as the domain and the owner never hears about it."
    ),
    references=("RFC 7489 §6.6.3", "CISA BOD 18-01", "SCuBA MS.EXO.4.1v1", "SCuBA GWS.GMAIL.4.1v0.6"),
    remediation=None,
)
def dmarc_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when neither the domain nor its organizational domain publishes a DMARC record."""
    own = domain.dns.get("dmarc")
    assert own is not None  # the evaluate stage only calls a check whose required facts exist
    if dmarc_records(own):
        return Result.passed(record=dmarc_records(own)[0], looked_up=own.name)
    inherited = domain.dns.get("dmarc_org")
    if inherited is not None:
        if inherited.failed:
            return Result.error(f"DNS lookup of {inherited.name} TXT failed: {inherited.error}")
        if dmarc_records(inherited):
            return Result.passed(record=dmarc_records(inherited)[0], looked_up=inherited.name, inherited=True)
    seen = list(own.records) if own.outcome is Outcome.ANSWER else []
    return Result.failed(
        looked_up=own.name,
        outcome=own.outcome.value,
        records_seen=seen,
        publish=suggested_record(domain, ctx),
    )
