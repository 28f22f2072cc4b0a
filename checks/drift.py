"""Drift checks: what got weaker or changed since the state the store recorded before this run."""

from __future__ import annotations

from collections.abc import Iterator

from checks.registry import Result, RunContext, check
from scanner.dns.records import (
    DMARC_POLICIES,
    dkim_key,
    dmarc_policy,
    dmarc_record,
    dmarc_tags,
    mode_rank,
    mta_sts_mode,
    mx_hosts,
    spf_all,
    spf_all_rank,
    spf_record,
)
from scanner.model import DnsAnswer, Domain, DomainState, Mailbox, Scope, Severity, Status

NO_BASELINE = "no earlier run recorded this domain: nothing to compare with yet"


def _previous(domain: Domain, ctx: RunContext) -> DomainState | None:
    """The domain as the store recorded it before this run, or None when there is no such record."""
    previous = ctx.inventory.previous
    if previous is None:
        return None
    return previous.domains.get(f"{domain.tenant}/{domain.name}")


def _baseline_note(ctx: RunContext) -> dict[str, str]:
    previous = ctx.inventory.previous
    return {"compared_with_run": previous.run_id, "recorded": previous.taken.isoformat()} if previous else {}


def _known(answer: DnsAnswer | None) -> bool:
    return answer is not None and not answer.failed


def _dmarc_rank(answer: DnsAnswer) -> tuple[int, int]:
    record = dmarc_record(answer)
    if record is None:
        return (0, 0)
    policy = dmarc_policy(record) or "none"  # RFC 7489 §6.6.3: an unusable p= is treated as none
    try:
        pct = int(dmarc_tags(record).get("pct", "100"))
    except ValueError:
        pct = 100
    return (DMARC_POLICIES.index(policy) + 1, max(0, min(pct, 100)))


def _weakened_dmarc(domain: Domain, before: DomainState) -> Result:
    old, new = before.answers.get("dmarc"), domain.dns.get("dmarc")
    if new is not None and new.failed:  # a lookup that failed now never passes, baseline or not
        return Result.error(f"DNS lookup of {new.name} TXT failed: {new.error}", item="dmarc")
    if not _known(old):
        return Result.passed(item="dmarc", note=NO_BASELINE)
    assert old is not None
    if new is None:
        return Result.error(f"dns.dmarc was not collected for {domain.name}", item="dmarc")
    was, now = _dmarc_rank(old), _dmarc_rank(new)
    evidence = {"before": dmarc_record(old), "after": dmarc_record(new),
                "policy_before": dmarc_policy(dmarc_record(old)), "policy_after": dmarc_policy(dmarc_record(new))}
    # Weaker: a lower p= (or the record gone), or the same p= applied to a smaller pct (RFC 7489 §6.3).
    if now[0] < was[0] or (now[0] == was[0] and now[1] < was[1]):
        return Result.failed(item="dmarc", looked_up=new.name, **evidence,
                             publish=f'_dmarc.{domain.name}. TXT "{evidence["before"]}"')
    return Result.passed(item="dmarc", **evidence)


def _weakened_spf(domain: Domain, before: DomainState) -> Result:
    old, new = before.answers.get("txt"), domain.dns.get("txt")
    if new is not None and new.failed:
        return Result.error(f"DNS lookup of {new.name} TXT failed: {new.error}", item="spf")
    if not _known(old):
        return Result.passed(item="spf", note=NO_BASELINE)
    if new is None:
        return Result.error(f"dns.spf was not collected for {domain.name}", item="spf")
    was, now = spf_record(old), spf_record(new)
    evidence = {"before": was, "after": now, "all_before": _all_text(spf_all(was)), "all_after": _all_text(spf_all(now))}
    if spf_all_rank(spf_all(now)) < spf_all_rank(spf_all(was)):
        return Result.failed(item="spf", looked_up=new.name, **evidence, publish=f'{domain.name}. TXT "{was}"')
    return Result.passed(item="spf", **evidence)


def _all_text(qualifier: str | None) -> str | None:
    if qualifier is None:
        return None
    return f"{qualifier}all" if qualifier else "(no all: neutral)"


def _weakened_dkim(domain: Domain, before: DomainState) -> Result:
    weakened: list[dict[str, object]] = []
    unknown: list[str] = []
    compared: list[str] = []
    restore: list[str] = []
    for name, old in sorted(before.answers.items()):
        if not name.startswith("dkim:") or not _known(old):
            continue
        was = dkim_key(old)
        if was is None or was[1] == 0:
            continue
        selector = name.partition(":")[2]
        new = domain.dns.get(name)
        if new is None:
            continue  # the selector is no longer looked up (config changed): nothing to compare
        if new.failed:
            unknown.append(f"DNS lookup of {new.name} TXT failed: {new.error}")
            continue
        compared.append(selector)
        now = dkim_key(new)
        if now is None or now[1] == 0:
            change = "removed" if now is None else "revoked"
        elif now[0] == was[0] and now[1] < was[1]:
            change = "shortened"
        else:
            continue
        weakened.append({"selector": selector, "change": change, "before": f"{was[0]} {was[1]} bits",
                         "after": f"{now[0]} {now[1]} bits" if now else None})
        restore.append(f'{new.name}. TXT "{old.records[0]}"' if old.records else new.name)
    if weakened:
        return Result.failed(item="dkim", weakened=weakened, publish=restore)
    unknown += [f"DNS lookup of {a.name} TXT failed: {a.error}" for key, a in sorted(domain.dns.answers.items())
                if key.startswith("dkim:") and a.failed and not _known(before.answers.get(key))]
    if unknown:
        return Result.error("; ".join(unknown), item="dkim")
    if not compared:
        return Result.passed(item="dkim", note="no DKIM key was recorded before: nothing to compare with yet")
    return Result.passed(item="dkim", selectors=compared)


def _weakened_mta_sts(domain: Domain, before: DomainState) -> Result:
    announced = domain.dns.get("mta_sts")
    if announced is not None and announced.failed:
        return Result.error(f"DNS lookup of {announced.name} TXT failed: {announced.error}", item="mta_sts")
    if before.mta_sts_mode is None:
        return Result.passed(item="mta_sts", note="no MTA-STS mode was recorded before: nothing to compare with yet")
    now, why = mta_sts_mode(domain.dns)
    if now is None:
        return Result.error(why, item="mta_sts")
    if mode_rank(now) < mode_rank(before.mta_sts_mode):
        return Result.failed(
            item="mta_sts", before=before.mta_sts_mode, after=now,
            publish=f"mode: {before.mta_sts_mode} in https://mta-sts.{domain.name}/.well-known/mta-sts.txt "
                    f"(and a new id= in _mta-sts.{domain.name} TXT)",
        )
    return Result.passed(item="mta_sts", before=before.mta_sts_mode, after=now)


@check(
    id="drift.dns_weakened",
    title="Domain's mail authentication got weaker since the last run",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    rationale=(
        "A DMARC policy lowered, an SPF all loosened, a DKIM key removed or shortened, or MTA-STS "
        "downgraded reopens spoofing or downgrade attacks that were closed; it is usually a mistake or an attack."
    ),
    references=("RFC 7489 §6.3", "RFC 7208 §4.6.2", "RFC 6376 §3.6.1", "RFC 8461 §5"),
)
def dns_weakened(domain: Domain, ctx: RunContext) -> Iterator[Result]:
    """One result per aspect (dmarc, spf, dkim, mta_sts): fail where it is weaker than the recorded state."""
    before = _previous(domain, ctx)
    if before is None:
        # Nothing to compare with, but a lookup that failed now is still unknown, never a pass.
        unknown = [r for judge in (_weakened_dmarc, _weakened_spf, _weakened_dkim, _weakened_mta_sts)
                   if (r := judge(domain, DomainState())).status is Status.ERROR]
        yield from unknown or [Result.passed(note=NO_BASELINE)]
        return
    note = _baseline_note(ctx)
    for judge in (_weakened_dmarc, _weakened_spf, _weakened_dkim, _weakened_mta_sts):
        result = judge(domain, before)
        yield Result(result.status, {**result.evidence, **note} if result.evidence else {}, result.item, result.reason)


@check(
    id="drift.forwarding_added",
    title="Mailbox started forwarding mail since the last run",
    severity=Severity.HIGH,
    scope=Scope.MAILBOX,
    requires=("mailbox.forwards",),
    rationale="A new forward is the classic sign of a compromised mailbox, and copies mail out from then on.",
    references=("MITRE ATT&CK T1114.003",),
    remediation="forwarding.disable",
)
def forwarding_added(mailbox: Mailbox, ctx: RunContext) -> Result:
    """Fail when the mailbox forwards to a target the recorded state did not have."""
    previous = ctx.inventory.previous
    if previous is None or mailbox.tenant not in previous.tenants:
        return Result.passed(note="no earlier run recorded this tenant: nothing to compare with yet")
    before = previous.forwards.get(f"{mailbox.tenant}/{mailbox.address}", ())
    known = {f.target for f in before}
    added = [f for f in mailbox.forwards if f.target not in known]
    evidence = {"before": sorted(known), "after": sorted({f.target for f in mailbox.forwards}),
                **_baseline_note(ctx)}
    if not added:
        return Result.passed(**evidence)
    return Result.failed(added=sorted({f.target for f in added}),
                         mechanisms=sorted({f.mechanism.value for f in added}), **evidence)


@check(
    id="drift.catchall_enabled",
    title="Domain started accepting mail for any address since the last run",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("domain.catch_all",),
    rationale="A catch-all turned on silently collects misaddressed and dictionary-attack mail in one mailbox.",
)
def catchall_enabled(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the domain has a catch-all now and the recorded state had none."""
    before = _previous(domain, ctx)
    if before is None:
        return Result.passed(note=NO_BASELINE)
    evidence = {"before": before.catch_all, "after": domain.catch_all, **_baseline_note(ctx)}
    if before.catch_all is None and domain.catch_all is not None:
        return Result.failed(**evidence)
    return Result.passed(**evidence)


@check(
    id="drift.mx_changed",
    title="Domain's MX records changed since the last run",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.mx",),
    rationale="Changed MX records send the domain's inbound mail somewhere else; unplanned, that is interception.",
    references=("RFC 5321 §5.1",),
)
def mx_changed(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the MX set differs from the recorded one."""
    before = _previous(domain, ctx)
    old = before.answers.get("mx") if before is not None else None
    if not _known(old):
        return Result.passed(note=NO_BASELINE)
    was, now = mx_hosts(old), mx_hosts(domain.dns.get("mx"))
    evidence = {"before": list(was), "after": list(now), **_baseline_note(ctx)}
    if set(was) == set(now):
        return Result.passed(**evidence)
    return Result.failed(
        added=sorted(set(now) - set(was)), removed=sorted(set(was) - set(now)), **evidence,
        publish=[f"{domain.name}. MX {r}." for r in was] or [f"{domain.name}. MX 0 ."],
    )
