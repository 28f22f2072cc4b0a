"""DMARC checks, judged by RFC 9989 (DMARCbis) with what RFC 7489 receivers still do where the two differ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from checks.registry import Result, RunContext, check, per_subject, sender_of
from scanner.dns.dkim import zone_txt
from scanner.dns.dmarc import (
    POLICIES,
    DmarcRecord,
    Discovery,
    discover,
    is_dmarc_record,
    parse_dmarc_record,
    rewrite_record,
)
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity, SourceTraffic

# A check that judges the policy rests on there being exactly one well-formed record to judge.
_ON_RECORD = ("dmarc.missing", "dmarc.multiple", "dmarc.syntax")

def dmarc_records(answer: DnsAnswer | None) -> list[str]:
    """The TXT strings of an answer that are DMARC records; other TXT records are ignored (RFC 9989 §4.10 step 2)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    return [r for r in answer.records if is_dmarc_record(r)]


@per_subject
def discovery_of(domain: Domain) -> Discovery:
    """The DNS tree walk from the domain, through the answers collected for it (RFC 9989 §4.10), worked out once
    for all the DMARC checks of the domain."""
    return discover(domain.name, lambda n: domain.dns.get("dmarc" if n == domain.name else f"dmarc_walk:{n}"))


def suggested_record(domain: Domain, ctx: RunContext) -> str:
    """The DMARC record to publish for a domain that has none: cross-version, p= first, explicit sp= and np=."""
    policy = "reject" if domain.parked else ctx.policy.dmarc_min_policy
    if policy not in POLICIES or policy == "none":
        policy = "quarantine"
    return (f'_dmarc.{domain.name}. TXT "v=DMARC1; p={policy}; sp={policy}; np={policy}; '
            f'rua=mailto:dmarc-reports@{domain.name}"')


_HOW = {
    "own": "the domain's own record: its p= applies to the domain (RFC 9989 §4.11)",
    "org": "the domain has no record of its own: receivers apply its Organizational Domain's record (RFC 9989 §4.11)",
    "psd": "neither the domain nor its Organizational Domain publishes a record: receivers apply the Public Suffix "
           "Domain's record (psd=y, RFC 9989 §4.11)",
}
_HOW_SUB = {
    "own": "the domain is its own Organizational Domain: its sp= (np= for names that do not exist) governs its "
           "subdomains (RFC 9989 §4.11, §4.12)",
    "org": "a subdomain without a record walks past the domain to its Organizational Domain, whose sp= (np= for "
           "names that do not exist) applies; the domain's own sp=/np= are ignored (RFC 9989 §4.11, §5.3)",
    "psd": "no Organizational Domain record: the Public Suffix Domain's sp= (np=) applies (RFC 9989 §4.11)",
}


def _walk_evidence(walk: Discovery) -> dict[str, Any]:
    return {"tree_walk": [f"_dmarc.{n}" for n in walk.asked], "organizational_domain": walk.org_domain,
            "organizational_domain_why": walk.org_reason}


def _applied(domain: Domain, subdomains: bool = False) -> tuple[str, DmarcRecord, dict[str, Any]] | Result:
    """The record that governs the domain's mail (or, with ``subdomains``, its subdomains' mail) with evidence
    naming it and why it applies; an error result when the tree walk could not decide; a fail-free pass marker
    (Result with status pass) is never returned: a missing record gives an error result naming dmarc.missing."""
    walk = discovery_of(domain)
    chosen = walk.subdomain_policy if subdomains else walk.policy
    if chosen is None and walk.walk_failed is not None and (subdomains or walk.record_at(domain.name) is None):
        failed = walk.walk_failed
        return Result.error(f"DNS lookup of {failed.name} TXT failed, so the DMARC tree walk (RFC 9989 §4.10) "
                            f"cannot tell which record applies: {failed.error}")
    if chosen is None:
        return Result.error("no DMARC record applies (dmarc.missing or dmarc.multiple judge that)")
    name, record, how = chosen
    evidence: dict[str, Any] = {"policy_record": f"_dmarc.{name}", "record": _text_at(domain, name),
                                "applies_because": (_HOW_SUB if subdomains else _HOW)[how], **_walk_evidence(walk)}
    if how != "own" and not subdomains:
        evidence["inherited"] = True
    return name, record, evidence


def _text_at(domain: Domain, name: str) -> str:
    answer = domain.dns.get("dmarc" if name == domain.name else f"dmarc_walk:{name}")
    records = dmarc_records(answer)
    return records[0] if records else ""


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
    references=("RFC 9989 §4.10", "RFC 9989 §4.11"),
    remediation=None,
    rests_on=("dmarc.multiple",),
)
def dmarc_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the tree walk finds no DMARC record that applies to the domain."""
    own = domain.dns.get("dmarc")
    assert own is not None  # the evaluate stage only calls a check whose required facts exist
    if dmarc_records(own):
        return Result.passed(record=dmarc_records(own)[0], looked_up=own.name)
    walk = discovery_of(domain)
    chosen = walk.policy
    if chosen is not None:
        name, _, how = chosen
        return Result.passed(record=_text_at(domain, name), looked_up=f"_dmarc.{name}", inherited=True,
                             applies_because=_HOW[how], **_walk_evidence(walk))
    if walk.walk_failed is not None:
        return Result.error(f"DNS lookup of {walk.walk_failed.name} TXT failed: {walk.walk_failed.error}")
    seen = list(own.records) if own.outcome is Outcome.ANSWER else []
    return Result.failed(
        looked_up=own.name,
        outcome=own.outcome.value,
        records_seen=seen,
        **_walk_evidence(walk),
        publish=suggested_record(domain, ctx),
    )


def _rank(policy: str | None) -> int:
    """Strength of a policy: no DMARC < none < quarantine < reject."""
    return POLICIES.index(policy) if policy in POLICIES else -1


def _minimum(ctx: RunContext) -> str:
    """The weakest acceptable policy from the run's policy (unknown values fall back to quarantine)."""
    return ctx.policy.dmarc_min_policy if ctx.policy.dmarc_min_policy in POLICIES else "quarantine"


def _publish(location: str, text: str) -> str:
    """A DMARC record as a zone-file line."""
    return zone_txt(location, text)


@check(
    id="dmarc.multiple",
    title="Domain publishes more than one DMARC record",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale="With more than one DMARC record at a name receivers discard them all, so no policy of the domain's applies.",
    references=("RFC 9989 §4.10",),
)
def dmarc_multiple(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the domain's _dmarc name, or the first name up the tree walk with records, holds several."""
    walk = discovery_of(domain)
    for name in walk.asked:
        records = dmarc_records(domain.dns.get("dmarc" if name == domain.name else f"dmarc_walk:{name}"))
        if len(records) == 1:
            break  # the walk found its record here
        if len(records) > 1:
            keep = max(  # suggest keeping the strongest valid record; sorted, so ties resolve the same way
                (parse_dmarc_record(r) for r in sorted(records)),
                key=lambda r: (_rank(r.applied_policy), -len(r.problems)),
            )
            return Result.failed(looked_up=f"_dmarc.{name}", records_seen=sorted(records), **_walk_evidence(walk),
                                 publish=_publish(f"_dmarc.{name}", rewrite_record(keep, {})),
                                 note="RFC 9989 §4.10 step 2: several records at one name are all discarded; "
                                      "publish exactly one and delete the others")
    return Result.passed(**_walk_evidence(walk))


@check(
    id="dmarc.syntax",
    title="DMARC record is malformed",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Receivers discard invalid DMARC tag values in favour of defaults, or the whole policy when p=, sp= or "
        "np= is invalid, so the published intent is not what is enforced."
    ),
    references=("RFC 9989 §5.3", "RFC 9989 §5.4", "RFC 9989 §4.11"),
    rests_on=("dmarc.missing", "dmarc.multiple"),
)
def dmarc_syntax(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the DMARC record that applies to the domain breaks the RFC 9989 §5.4 grammar.

    rf=, ri= and unknown tags are ignored (RFC 9989 §5.3), never a problem; the failure blocks the policy
    checks only when the policy itself is void (an invalid p=, sp= or np=, or a tag list that does not parse).
    """
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    if not record.problems:
        return Result.passed(**evidence)
    void = not record.policy_valid or bool(record.tags.problems)
    if void:
        evidence["consequence"] = (
            "p=none (a valid rua= remains)" if record.rua else "no DMARC processing at all") + " (RFC 9989 §4.11)"
    return Result.failed(blocks=void, **evidence, problems=list(record.problems),
                         publish=_publish(f"_dmarc.{name}", rewrite_record(record, {})))


def _policy_result(
    name: str, record: DmarcRecord, evidence: dict[str, Any], ctx: RunContext, tag: str, policy: str | None,
    fix: dict[str, str | None],
) -> Result:
    """Pass when ``policy`` is at least the minimum, else fail with the record rewritten by ``fix``."""
    minimum = _minimum(ctx)
    seen = {**evidence, "judged_tag": tag, "applied_policy": policy or "no DMARC processing", "minimum": minimum}
    if record.policy is None and record.policy_valid:
        seen["no_p"] = ("the record has no p=: RFC 9989 receivers treat it as p=none (§5.3); RFC 7489 receivers "
                        "require p= and fall back to p=none only with a valid rua= (RFC 7489 §6.6.3)")
    if _rank(policy) >= _rank(minimum):
        return Result.passed(**seen)
    return Result.failed(**seen, publish=_publish(f"_dmarc.{name}", rewrite_record(record, fix)))


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
    references=("RFC 9989 §5.3", "RFC 9989 §4.11"),
    rests_on=_ON_RECORD,
)
def dmarc_policy_weak(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the policy applied to the domain's own mail is weaker than policy.dmarc_min_policy."""
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    if name != domain.name:
        # RFC 9989 §4.11: an existing domain that inherits its policy gets the record's sp= (else p=).
        return _policy_result(name, record, evidence, ctx, "sp", record.applied_subdomain_policy, {"sp": _minimum(ctx)})
    return _policy_result(name, record, evidence, ctx, "p", record.applied_policy, {"p": _minimum(ctx)})


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
    references=("RFC 9989 §5.3", "RFC 9989 §4.11", "RFC 9989 §4.12"),
    rests_on=_ON_RECORD,
)
def dmarc_subdomain_policy_weak(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the policy applied to the domain's existing subdomains (sp, else p) is weaker than the minimum."""
    applied = _applied(domain, subdomains=True)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    return _policy_result(name, record, evidence, ctx, "sp", record.applied_subdomain_policy, {"sp": _minimum(ctx)})


@check(
    id="dmarc.np_weak",
    title="DMARC policy for nonexistent subdomains (np) is weaker than the required minimum",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "Spoofers make up subdomains that do not exist; an explicit np= weaker than the minimum lets RFC 9989 "
        "receivers deliver that mail even where sp= and p= are strict."
    ),
    references=("RFC 9989 §5.3", "RFC 9989 §4.11", "RFC 9091 §4 (obsoleted by RFC 9989)"),
    rests_on=_ON_RECORD,
)
def dmarc_np_weak(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the record governing the domain's subdomains sets an explicit np= weaker than the minimum."""
    applied = _applied(domain, subdomains=True)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    if record.nonexistent_policy is None:
        return Result.passed(**evidence, np=None, note="no explicit np=: sp= (else p=) applies to nonexistent "
                             "subdomains too, which dmarc.subdomain_policy_weak judges")
    evidence["rfc7489"] = "RFC 7489 receivers ignore np= and apply sp= (else p=) to nonexistent subdomains"
    return _policy_result(name, record, evidence, ctx, "np", record.applied_nonexistent_policy, {"np": _minimum(ctx)})


@check(
    id="dmarc.testing",
    title="DMARC record is in testing mode (t=y)",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "With t=y, RFC 9989 receivers apply one step less than the published policy (quarantine for reject, "
        "none for quarantine), so the domain is less protected than its p= says."
    ),
    references=("RFC 9989 §5.3",),
    rests_on=_ON_RECORD,
)
def dmarc_testing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the DMARC record applied to the domain sets t=y."""
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    if not record.testing:
        return Result.passed(**evidence, t="n")
    step_down = {"reject": "quarantine", "quarantine": "none", "none": "none"}
    policy = record.applied_policy if name == domain.name else record.applied_subdomain_policy
    return Result.failed(**evidence, t="y", published_policy=policy,
                         applied_by_rfc9989_receivers=step_down.get(policy or "", "no DMARC processing"),
                         rfc7489="RFC 7489 receivers ignore t= and apply the published policy",
                         publish=_publish(f"_dmarc.{name}", rewrite_record(record, {"t": None})))


@check(
    id="dmarc.pct",
    title="DMARC policy applies to only part of the domain's mail (pct under 100)",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dmarc",),
    rationale=(
        "With pct under 100, RFC 7489 receivers apply the policy to a sample only and deliver the rest as if "
        "p=none; RFC 9989 removed pct, so the same record means different things to different receivers."
    ),
    references=("RFC 7489 §6.3", "RFC 7489 §6.6.4", "RFC 9989 §5.3"),
    rests_on=_ON_RECORD,
)
def dmarc_pct(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the applied DMARC record sets pct below 100."""
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    if record.pct >= 100:
        return Result.passed(**evidence, pct=record.pct)
    return Result.failed(**evidence, pct=record.pct,
                         rfc9989="RFC 9989 receivers ignore pct= and apply the whole policy",
                         note="for a trial, publish t=y instead (RFC 9989 §5.3): receivers then apply one step less",
                         publish=_publish(f"_dmarc.{name}", rewrite_record(record, {})))


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
    references=("RFC 9989 §5.3", "RFC 9990 §3"),
    rests_on=_ON_RECORD,
)
def dmarc_no_rua(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the applied DMARC record names no valid mailto: aggregate-report destination."""
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    name, record, evidence = applied
    mailto = [u.uri for u in record.rua if u.scheme == "mailto"]
    if mailto:
        return Result.passed(**evidence, rua=mailto)
    others = [u.uri for u in record.rua]
    destination = f"mailto:dmarc-reports@{name}"
    return Result.failed(
        **evidence,
        rua=others,
        problem="no valid mailto: URI in rua= (receivers only have to support mailto:, RFC 9989 §5.3)",
        publish=_publish(f"_dmarc.{name}", rewrite_record(record, {"rua": ",".join([destination, *others])})),
    )


_MAX_UNKNOWN_ITEMS = 10


def _destinations(domain: Domain, record: DmarcRecord) -> Iterator[tuple[str, DnsAnswer]]:
    """The outside report destinations of the applied record, with their authorization answers."""
    for destination in record.mailto_domains:
        answer = domain.dns.get(f"rua_auth:{destination}")
        if answer is not None:  # collection looks up only destinations outside the Organizational Domain
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
    references=("RFC 9990 §3", "RFC 7489 §7.1"),
    rests_on=_ON_RECORD,
)
def dmarc_rua_unauthorized(domain: Domain, ctx: RunContext) -> list[Result]:
    """One result per outside rua/ruf destination: fail when its _report._dmarc record is absent."""
    walk = discovery_of(domain)
    if walk.walk_failed is not None:
        failed = walk.walk_failed
        return [Result.error(f"DNS lookup of {failed.name} TXT failed, so the Organizational Domain (which "
                             f"decides what is outside, RFC 9989 §4.12) is unknown: {failed.error}")]
    applied = _applied(domain)
    if isinstance(applied, Result):
        return [applied]
    _, record, evidence = applied
    results = []
    unknown = []
    for destination, answer in _destinations(domain, record):
        if answer.failed:
            unknown.append(Result.error(f"DNS lookup of {answer.name} TXT failed: {answer.error}", item=destination))
        elif dmarc_records(answer):
            results.append(Result.passed(item=destination, **evidence, authorization=answer.name))
        else:
            results.append(
                Result.failed(
                    item=destination,
                    **evidence,
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
        return [Result.passed(**evidence, note="no report destination outside the Organizational Domain")]
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
    rests_on=_ON_RECORD,
)
def dmarc_reports_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the applied record's rua names an address this installation reads and no report came in the window."""
    applied = _applied(domain)
    if isinstance(applied, Result):
        return applied
    _, record, evidence = applied
    asked = sorted({u.address.lower() for u in record.rua if u.scheme == "mailto" and u.address})
    read = sorted(set(asked) & set(ctx.inventory.report_addresses))
    if not read:
        where = ", ".join(asked) or "no mailto: address"
        return Result.unsupported(f"the DMARC record sends aggregate reports to {where}, which this installation "
                                  "does not read ([dmarc_reports] addresses)")
    traffic = ctx.inventory.traffic.get(domain.name)
    reports = traffic.reports if traffic is not None else 0
    if reports:
        return Result.passed(**evidence, rua=read, reports=reports, window=_days(ctx))
    if domain.parked:
        return Result.passed(**evidence, rua=read, reports=0, window=_days(ctx),
                             note="a parked domain sends no mail: receivers report only mail they saw, so none is due")
    return Result.failed(**evidence, rua=read, reports=0, window=_days(ctx),
                         problem=f"no aggregate report for {domain.name} arrived in {_days(ctx)}",
                         note="receivers report only mail they saw: a domain that sends no mail at all belongs "
                              "in the tenant's parked_domains")
