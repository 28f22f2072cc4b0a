"""Domain existence: a configured domain whose apex does not exist (NXDOMAIN) has no mail DNS to judge."""

from __future__ import annotations

from checks.registry import Result, RunContext, check
from scanner.model import Domain, Outcome, Scope, Severity


@check(
    id="domain.nxdomain",
    title="Configured domain does not exist in DNS (NXDOMAIN)",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=(),
    rationale=(
        "A domain whose apex does not exist receives and authenticates no mail: its registration lapsed, its "
        "delegation is gone, or the config names it wrongly. Every other DNS finding of it only restates this."
    ),
    references=("RFC 1034 §4.3.2", "RFC 8020 §2"),
)
def domain_nxdomain(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the apex MX or TXT question is answered NXDOMAIN and none shows the name exists."""
    asked = [a for a in (domain.dns.get("mx"), domain.dns.get("txt")) if a is not None]
    if any(a.outcome in (Outcome.ANSWER, Outcome.NODATA) for a in asked):
        return Result.passed(exists=True)
    nx = next((a for a in asked if a.outcome is Outcome.NXDOMAIN), None)
    if nx is None:
        failed = next((a for a in asked if a.failed), None)
        if failed is None:
            return Result.error(f"the apex of {domain.name} was not looked up")
        return Result.error(f"DNS lookup of {failed.name} {failed.rdtype} failed: {failed.error}")
    evidence: dict[str, object] = {
        "question": f"{nx.name} {nx.rdtype}",
        "answer": "NXDOMAIN: the name does not exist (RFC 8020 §2: nor does anything below it)",
        "answered_by": nx.server or "the configured resolver",
    }
    parent = domain.dns.get("parent_soa")
    if parent is not None and parent.outcome is Outcome.ANSWER and parent.records:
        evidence["closest_existing_zone"] = parent.name
        evidence["closest_existing_zone_soa"] = parent.records[0]
    elif parent is not None and parent.failed:
        evidence["closest_existing_zone"] = f"unknown: {parent.name} SOA failed ({parent.error})"
    else:
        evidence["closest_existing_zone"] = "none found up to the top-level domain"
    evidence["fix"] = (f"renew or re-delegate {domain.name}, or correct its name in the config "
                       "(or remove it from the tenant's domains)")
    return Result.failed(**evidence)
