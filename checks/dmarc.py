"""DMARC checks (RFC 7489)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from checks.registry import Result, RunContext, check, sender_of
from scanner.dkim import zone_txt
from scanner.dmarc import POLICIES, DmarcRecord, is_dmarc_record, parse_dmarc_record, rewrite_record
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity, SourceTraffic


def dmarc_records(answer: DnsAnswer | None) -> list[str]:
    """The TXT strings of an answer that are DMARC records; other TXT records are ignored (RFC 7489 §6.6.3)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    return [r for r in answer.records if is_dmarc_record(r)]


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
    references=("RFC 7489 §6.6.3",),
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


@dataclass(frozen=True, slots=True)
class AppliedDmarc:
    """The DMARC records that govern a domain's mail: its own, or its organizational domain's (inherited)."""

    looked_up: str
    records: tuple[str, ...]
    inherited: bool

    @property
    def record(self) -> DmarcRecord | None:
        """The parsed record when exactly one applies (RFC 7489 §6.6.3: several means none applies)."""
        return parse_dmarc_record(self.records[0]) if len(self.records) == 1 else None

    @property
    def evidence(self) -> dict[str, Any]:
        """Where the record was found, and whether it is inherited, for every result's evidence."""
        seen: dict[str, Any] = {"looked_up": self.looked_up, "records_seen": list(self.records)}
        if self.inherited:
            seen["inherited"] = True
            seen["inheritance"] = (
                "the domain has no DMARC record of its own: it is judged on its organizational domain's record, "
                "whose sp= (defaulting to p=) receivers apply to it (RFC 7489 §6.6.3)"
            )
        return seen

    @property
    def owner(self) -> str:
        """The domain that published the records."""
        return self.looked_up.removeprefix("_dmarc.")


def applied_dmarc(domain: Domain) -> AppliedDmarc | Result:
    """The DMARC records that apply to the domain (RFC 7489 §6.6.3 discovery), or an error result."""
    own = domain.dns.get("dmarc")
    if own is None:
        return Result.error(f"the DMARC record of {domain.name} was not collected")
    if own.failed:
        return Result.error(f"DNS lookup of {own.name} TXT failed: {own.error}")
    if dmarc_records(own):
        return AppliedDmarc(own.name, tuple(sorted(dmarc_records(own))), inherited=False)
    org = domain.dns.get("dmarc_org")
    if org is not None:
        if org.failed:
            return Result.error(f"DNS lookup of {org.name} TXT failed: {org.error}")
        if dmarc_records(org):
            return AppliedDmarc(org.name, tuple(sorted(dmarc_records(org))), inherited=True)
    return AppliedDmarc(own.name, (), inherited=False)


def _rank(policy: str | None) -> int:
    """Strength of a policy: no DMARC < none < quarantine < reject."""
    return POLICIES.index(policy) if policy in POLICIES else -1


def _minimum(ctx: RunContext) -> str:
    """The weakest acceptable policy from the run's policy (unknown values fall back to quarantine)."""
    return ctx.policy.dmarc_min_policy if ctx.policy.dmarc_min_policy in POLICIES else "quarantine"


def _no_single_record(applied: AppliedDmarc, domain: Domain, ctx: RunContext, **evidence: Any) -> Result:
    """The failure of a rule that needs a policy when no single DMARC record applies."""
    why = "no DMARC record applies" if not applied.records else "several DMARC records: receivers apply none"
    return Result.failed(**applied.evidence, problem=why, publish=suggested_record(domain, ctx), **evidence)


def _publish(location: str, text: str) -> str:
    """A DMARC record as a zone-file line."""
    return zone_txt(location, text)


@check(
    id="dmarc.multiple",
    title="Domain publishes more than one DMARC record",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale="With more than one DMARC record receivers apply no DMARC policy at all to the domain's mail.",
    references=("RFC 7489 §6.6.3",),
)
def dmarc_multiple(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the DMARC location that applies to the domain holds several DMARC records."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    if len(applied.records) <= 1:
        return Result.passed(**applied.evidence)
    # Suggest keeping the strongest valid record.
    keep = max(
        (parse_dmarc_record(r) for r in applied.records),  # records are sorted, so ties resolve the same way
        key=lambda r: (_rank(r.applied_policy), -len(r.problems)),
    )
    return Result.failed(**applied.evidence, publish=_publish(applied.looked_up, rewrite_record(keep, {})),
                         note="publish exactly one record and delete the others")


@check(
    id="dmarc.syntax",
    title="DMARC record is malformed",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Receivers discard invalid DMARC tag values in favour of defaults, or the whole policy when p= or "
        "sp= is invalid, so the published intent is not what is enforced."
    ),
    references=("RFC 7489 §6.3", "RFC 7489 §6.4", "RFC 7489 §6.6.3"),
)
def dmarc_syntax(domain: Domain, ctx: RunContext) -> Result:
    """Fail when a DMARC record that applies to the domain breaks the RFC 7489 §6.4 grammar."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    parsed = [parse_dmarc_record(r) for r in applied.records]
    problems = [p for record in parsed for p in record.problems]
    if not problems:
        return Result.passed(**applied.evidence)
    fixed = rewrite_record(parsed[0], {})
    return Result.failed(**applied.evidence, problems=problems, publish=_publish(applied.looked_up, fixed))


def _policy_result(
    applied: AppliedDmarc, domain: Domain, ctx: RunContext, tag: str, policy: str | None, fix: dict[str, str | None]
) -> Result:
    """Pass when ``policy`` is at least the minimum, else fail with the record rewritten by ``fix``."""
    minimum = _minimum(ctx)
    record = applied.record
    assert record is not None
    seen = {**applied.evidence, "judged_tag": tag, "applied_policy": policy or "no DMARC processing",
            "minimum": minimum}
    if not record.policy_valid:
        seen["problem"] = "p= or sp= is missing or invalid, so receivers treat the record as " + (
            "p=none (RFC 7489 §6.6.3)" if policy else "absent (RFC 7489 §6.6.3)")
    if _rank(policy) >= _rank(minimum):
        return Result.passed(**seen)
    location = applied.looked_up
    return Result.failed(**seen, publish=_publish(location, rewrite_record(record, fix)))


@check(
    id="dmarc.policy_weak",
    title="DMARC policy is weaker than the required minimum",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "p=none only monitors: mail that fails DMARC is still delivered, so spoofed mail as the domain "
        "reaches inboxes."
    ),
    references=("RFC 7489 §6.3", "RFC 7489 §6.6.3"),
)
def dmarc_policy_weak(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the policy applied to the domain's own mail is weaker than policy.dmarc_min_policy."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    record = applied.record
    if record is None:
        return _no_single_record(applied, domain, ctx, minimum=_minimum(ctx))
    if applied.inherited:
        # RFC 7489 §6.6.3: mail from a subdomain with no record of its own gets the organizational sp=.
        return _policy_result(applied, domain, ctx, "sp", record.applied_subdomain_policy, {"sp": _minimum(ctx)})
    return _policy_result(applied, domain, ctx, "p", record.applied_policy, {"p": _minimum(ctx)})


@check(
    id="dmarc.subdomain_policy_weak",
    title="DMARC subdomain policy is weaker than the required minimum",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Spoofers use made-up subdomains when the domain itself is protected; sp= (defaulting to p=) "
        "decides what happens to that mail."
    ),
    references=("RFC 7489 §6.3", "RFC 7489 §6.6.3"),
)
def dmarc_subdomain_policy_weak(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the policy applied to the domain's subdomains (sp, else p) is weaker than the minimum."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    record = applied.record
    if record is None:
        return _no_single_record(applied, domain, ctx, minimum=_minimum(ctx))
    return _policy_result(applied, domain, ctx, "sp", record.applied_subdomain_policy, {"sp": _minimum(ctx)})


@check(
    id="dmarc.pct",
    title="DMARC policy applies to only part of the domain's mail (pct under 100)",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale="With pct under 100, receivers apply the policy to a sample only and deliver the rest as if p=none.",
    references=("RFC 7489 §6.3", "RFC 7489 §6.6.4"),
)
def dmarc_pct(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the applied DMARC record sets pct below 100."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    record = applied.record
    if record is None:
        return Result.passed(**applied.evidence, note="no single DMARC record applies (see dmarc.missing, dmarc.multiple)")
    if record.pct >= 100:
        return Result.passed(**applied.evidence, pct=record.pct)
    return Result.failed(**applied.evidence, pct=record.pct,
                         publish=_publish(applied.looked_up, rewrite_record(record, {"pct": None})))


@check(
    id="dmarc.no_rua",
    title="DMARC record asks for no aggregate reports (no rua)",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Without aggregate reports nobody sees who sends as the domain or which legitimate senders fail, "
        "so tightening the policy is guesswork."
    ),
    references=("RFC 7489 §6.2", "RFC 7489 §7.2"),
)
def dmarc_no_rua(domain: Domain, ctx: RunContext) -> Result:
    """Fail when no single DMARC record applies, or it names no valid mailto: aggregate-report destination."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    record = applied.record
    if record is None:
        return _no_single_record(applied, domain, ctx)
    mailto = [u.uri for u in record.rua if u.scheme == "mailto"]
    if mailto:
        return Result.passed(**applied.evidence, rua=mailto)
    others = [u.uri for u in record.rua]
    destination = f"mailto:dmarc-reports@{applied.owner}"
    return Result.failed(
        **applied.evidence,
        rua=others,
        problem="no valid mailto: URI in rua= (receivers only have to support mailto:, RFC 7489 §6.2)",
        publish=_publish(applied.looked_up, rewrite_record(record, {"rua": ",".join([destination, *others])})),
    )


_MAX_UNKNOWN_ITEMS = 10


def _destinations(domain: Domain, applied: AppliedDmarc) -> Iterator[tuple[str, DnsAnswer]]:
    """The outside report destinations of the applied records, with their authorization answers."""
    seen: dict[str, None] = {}
    for text in applied.records:
        seen.update(dict.fromkeys(parse_dmarc_record(text).mailto_domains))
    for destination in seen:
        answer = domain.dns.get(f"rua_auth:{destination}")
        if answer is not None:  # collection looks up only destinations outside the organizational domain
            yield destination, answer


@check(
    id="dmarc.rua_unauthorized",
    title="DMARC report destination outside the domain has not authorized it",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Receivers send no reports to an outside destination that has not published its authorization "
        "record, so the domain owner is blind while believing reports are arriving."
    ),
    references=("RFC 7489 §7.1",),
)
def dmarc_rua_unauthorized(domain: Domain, ctx: RunContext) -> list[Result]:
    """One result per outside rua/ruf destination: fail when its _report._dmarc record is absent."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return [applied]
    results = []
    unknown = []
    for destination, answer in _destinations(domain, applied):
        if answer.failed:
            unknown.append(Result.error(f"DNS lookup of {answer.name} TXT failed: {answer.error}", item=destination))
        elif dmarc_records(answer):
            results.append(Result.passed(item=destination, **applied.evidence, authorization=answer.name))
        else:
            results.append(
                Result.failed(
                    item=destination,
                    **applied.evidence,
                    authorization_looked_up=answer.name,
                    outcome=answer.outcome.value,
                    authorization_records_seen=list(answer.records),
                    publish=_publish(answer.name, "v=DMARC1"),
                    note=f"the owner of {destination} publishes this, or the rua/ruf URI is changed",
                )
            )
    if len(unknown) > _MAX_UNKNOWN_ITEMS:  # hostile records list thousands: keep the report readable
        rest = unknown[_MAX_UNKNOWN_ITEMS:]
        unknown[_MAX_UNKNOWN_ITEMS:] = [Result.error(f"{len(rest)} more report destinations were not checked: "
                                                     f"{rest[0].reason}", item="more destinations")]
    if not results and not unknown:
        return [Result.passed(**applied.evidence, note="no report destination outside the organizational domain")]
    return results + unknown


def _days(ctx: RunContext) -> str:
    return f"the last {ctx.policy.dmarc_window_days} days"


def _source(source: SourceTraffic, ctx: RunContext) -> dict[str, Any]:
    """A source's traffic as evidence: who it is, what it sent, what aligned."""
    sender = sender_of(source.source_ip, source.trusted_ptr, ctx.senders)
    return {
        "source_ip": source.source_ip, "ptr": source.ptr or None, "ptr_confirmed": source.ptr_confirmed,
        "sender": sender or "unknown",
        "declared": sender in ctx.tenant.senders, "messages": source.messages, "dmarc_pass": source.dmarc_pass,
        "dmarc_fail": source.dmarc_fail, "spf_aligned": source.spf_aligned, "dkim_aligned": source.dkim_aligned,
        "first_seen": source.first_seen.isoformat(), "last_seen": source.last_seen.isoformat(),
        "reports": source.reports,
    }


@check(
    id="dmarc.source_failing",
    title="A source sending as the domain fails DMARC in the receivers' aggregate reports",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dmarc.reports",),
    rationale=(
        "Receivers report every source that sent mail as the domain. A source whose mail fails DMARC is "
        "either a legitimate sender whose SPF and DKIM do not align (its mail is lost once the policy is "
        "enforced) or someone spoofing the domain; either way the operator has to know who it is."
    ),
    references=("RFC 9990 §2.1", "RFC 9989 §4.4"),
)
def dmarc_source_failing(domain: Domain, ctx: RunContext) -> list[Result]:
    """One failure per source that sent enough messages with too many failing DMARC in the window."""
    traffic = ctx.inventory.traffic.get(domain.name)
    if traffic is None or not traffic.sources:
        return [Result.unsupported(f"no DMARC aggregate report describes mail from {domain.name} in {_days(ctx)}")]
    judged = [s for s in traffic.sources if s.messages >= ctx.policy.dmarc_min_messages]
    ratio = ctx.policy.dmarc_max_fail_ratio
    results = []
    for source in judged:
        if source.dmarc_fail / source.messages <= ratio:
            continue
        failed = [side for side, aligned in (("SPF alignment", source.spf_aligned),
                                              ("DKIM alignment", source.dkim_aligned)) if aligned < source.messages]
        evidence = _source(source, ctx)
        if not evidence["declared"]:
            evidence["note"] = ("not a sender the tenant declares: someone spoofing the domain, mail forwarded "
                                "by a third party, or a service to declare and align")
        results.append(Result.failed(item=source.source_ip, **evidence, failed=failed,
                                     fail_ratio=round(source.dmarc_fail / source.messages, 4),
                                     threshold=ratio, window=_days(ctx)))
    if not results:
        results.append(Result.passed(
            sources=len(traffic.sources), judged=len(judged), messages=sum(s.messages for s in traffic.sources),
            dmarc_fail=sum(s.dmarc_fail for s in traffic.sources), threshold=ratio,
            min_messages=ctx.policy.dmarc_min_messages, window=_days(ctx)))
    return results


@check(
    id="dmarc.reports_missing",
    title="The domain's aggregate reports come to this installation, yet none arrived",
    severity=Severity.LOW,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc", "dmarc.reports"),
    rationale=(
        "A rua address that receives nothing means the reports are lost on the way (a full mailbox, a "
        "changed address, a missing authorization record) and the domain's traffic goes unwatched."
    ),
    references=("RFC 9990 §2.1", "RFC 9990 §3"),
)
def dmarc_reports_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the applied record's rua names an address this installation reads and no report came in the window."""
    applied = applied_dmarc(domain)
    if isinstance(applied, Result):
        return applied
    record = applied.record
    if record is None:
        return Result.unsupported("no single DMARC record applies, so no report address is asked for "
                                  "(see dmarc.missing, dmarc.multiple)")
    asked = sorted({u.address.lower() for u in record.rua if u.scheme == "mailto" and u.address})
    read = sorted(set(asked) & set(ctx.inventory.report_addresses))
    if not read:
        where = ", ".join(asked) or "no mailto: address"
        return Result.unsupported(f"the DMARC record sends aggregate reports to {where}, which this installation "
                                  "does not read ([dmarc_reports] addresses)")
    traffic = ctx.inventory.traffic.get(domain.name)
    reports = traffic.reports if traffic is not None else 0
    if reports:
        return Result.passed(**applied.evidence, rua=read, reports=reports, window=_days(ctx))
    if domain.parked:
        return Result.passed(**applied.evidence, rua=read, reports=0, window=_days(ctx),
                             note="a parked domain sends no mail: receivers report only mail they saw, so none is due")
    return Result.failed(**applied.evidence, rua=read, reports=0, window=_days(ctx),
                         problem=f"no aggregate report for {domain.name} arrived in {_days(ctx)}",
                         note="receivers report only mail they saw: a domain that sends no mail at all belongs "
                              "in the tenant's parked_domains")
