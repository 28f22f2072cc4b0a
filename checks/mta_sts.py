"""MTA-STS checks (RFC 8461): a published policy is reachable and valid, and names every MX host."""

from __future__ import annotations

from checks.mx import mx_hosts
from checks.registry import Result, RunContext, check
from scanner.model import Domain, Scope, Severity
from scanner.dns.mtasts import FetchOutcome, MtaStsPolicy, mx_pattern_matches, policy_host, sts_record_problems, sts_records


def suggested_policy(domain: Domain, mode: str = "testing") -> str:
    """The policy text to serve for a domain: its current MX hosts, in ``mode``, for one day."""
    hosts = mx_hosts(domain.dns.get("mx")) or [f"<your inbound mail host for {domain.name}>"]
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {h}" for h in hosts), "max_age: 86400"]
    return "\n".join(lines) + "\n"


def suggested_txt(domain: Domain, ctx: RunContext) -> str:
    """The ``_mta-sts`` TXT record to publish, with a fresh id (RFC 8461 §3.1: a new id for every change)."""
    return f'_mta-sts.{domain.name}. TXT "v=STSv1; id={ctx.now:%Y%m%d%H%M%S}"'


def _policy_url(domain: Domain) -> str:
    return f"https://{policy_host(domain.name)}/.well-known/mta-sts.txt"


def _fetch_evidence(policy: MtaStsPolicy) -> dict[str, object]:
    """What was seen when fetching, for the evidence."""
    return {
        "url": policy.url,
        "fetch": policy.outcome.value,
        "reason": policy.reason,
        "address": policy.address,
        "http_status": policy.status,
        "content_type": policy.content_type,
        "policy_seen": policy.text,
    }


@check(
    id="mta_sts.policy_invalid",
    title="MTA-STS is announced but its policy is missing or invalid",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.mta_sts",),
    rationale=(
        "Senders that find the _mta-sts record but cannot fetch or parse the policy treat the domain as "
        "having none, so mail is delivered without the TLS protection the owner believes is on."
    ),
    references=("RFC 8461 §3.1", "RFC 8461 §3.2", "RFC 8461 §3.3"),
    remediation=None,
)
def mta_sts_policy_invalid(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the _mta-sts TXT is present but invalid, or the policy cannot be fetched or parsed."""
    answer = domain.dns.get("mta_sts")
    assert answer is not None  # the evaluate stage only calls a check whose required facts exist
    records = sts_records(answer)
    if not records:
        # Decision: no v=STSv1 record means MTA-STS is not published; there is no policy to be invalid.
        return Result.passed(looked_up=answer.name, published=False, outcome=answer.outcome.value)
    publish = {
        "txt": suggested_txt(domain, ctx),
        "policy_url": _policy_url(domain),
        "policy": suggested_policy(domain),
    }
    if len(records) > 1:
        # RFC 8461 §3.1: with more than one v=STSv1 record, senders assume there is no policy.
        return Result.failed(
            looked_up=answer.name, problem="more than one v=STSv1 record", records_seen=records, publish=publish
        )
    txt_problems = sts_record_problems(records[0])
    if txt_problems:
        return Result.failed(
            looked_up=answer.name, problem="invalid _mta-sts record", problems=txt_problems,
            records_seen=records, publish=publish,
        )
    policy = domain.dns.mta_sts_policy
    if policy is None:
        return Result.error(f"the MTA-STS policy of {domain.name} was not fetched in this run")
    if policy.outcome is FetchOutcome.UNKNOWN:
        return Result.error(f"fetching {policy.url} could not complete: {policy.reason}")
    if policy.outcome is not FetchOutcome.FETCHED:
        return Result.failed(
            looked_up=answer.name, record=records[0], problem=f"policy {policy.outcome.value}",
            **_fetch_evidence(policy), publish=publish,
        )
    if policy.problems:
        return Result.failed(
            looked_up=answer.name, record=records[0], problem="invalid policy (RFC 8461 §3.2)",
            problems=list(policy.problems), **_fetch_evidence(policy), publish=publish,
        )
    return Result.passed(
        record=records[0], url=policy.url, mode=policy.mode, max_age=policy.max_age, mx=list(policy.mx)
    )


@check(
    id="mta_sts.mx_mismatch",
    title="An MX host is not covered by the MTA-STS policy",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.mx", "dns.mta_sts"),
    rationale=(
        "A sender applying an enforce policy refuses to deliver to an MX host the policy does not name, so "
        "mail to that host bounces (or, in testing mode, is reported as a failure)."
    ),
    references=("RFC 8461 §4.1", "RFC 8461 §5"),
    remediation=None,
)
def mta_sts_mx_mismatch(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the policy's mode is enforce or testing and an MX host matches none of its mx patterns."""
    answer = domain.dns.get("mta_sts")
    assert answer is not None  # the evaluate stage only calls a check whose required facts exist
    if not sts_records(answer):
        return Result.passed(looked_up=answer.name, published=False)
    policy = domain.dns.mta_sts_policy
    if policy is None or not policy.usable:
        # Decision: with no usable policy there is nothing to compare; mta_sts.policy_invalid says why.
        if policy is None:
            why = "was not fetched in this run"
        else:
            why = f"is not usable ({policy.reason or '; '.join(policy.problems[:3])})"
        return Result.error(f"the MTA-STS policy of {domain.name} {why}; see mta_sts.policy_invalid")
    hosts = mx_hosts(domain.dns.get("mx"))
    if policy.mode == "none":
        return Result.passed(mode="none", mx_hosts=hosts, patterns=list(policy.mx), note="mode none is not applied")
    unmatched = [h for h in hosts if not any(mx_pattern_matches(p, h) for p in policy.mx)]
    if not unmatched:
        return Result.passed(mode=policy.mode, mx_hosts=hosts, patterns=list(policy.mx))
    return Result.failed(
        mode=policy.mode,
        mx_hosts=hosts,
        unmatched=unmatched,
        patterns=list(policy.mx),
        url=policy.url,
        policy_seen=policy.text,
        publish={
            "policy_url": _policy_url(domain),
            "policy": suggested_policy(domain, policy.mode or "testing"),
            "txt": suggested_txt(domain, ctx),
        },
    )
