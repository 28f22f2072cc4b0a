"""Sender alignment: would each declared sender's mail pass DMARC (RFC 7489 §3.1, §4.2)?"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from checks.dkim import Selector, key_location, without_testing_flag
from checks.registry import Result, RunContext, Sender, check, sender_of
from scanner.dns.dkim import zone_txt
from scanner.model import Domain, Scope, Severity


@dataclass(frozen=True, slots=True)
class Side:
    """One DMARC path (SPF or DKIM) for a sender: aligned, not aligned, or unknown, and why."""

    aligned: bool | None
    why: str
    publish: str | None = None

    def evidence(self) -> dict[str, Any]:
        """The side as plain data."""
        state = {True: "aligned", False: "not aligned", None: "unknown"}[self.aligned]
        return {"state": state, "why": self.why}


def _spf_record_with(record: str | None, include: str) -> str:
    """The SPF record with ``include:`` added before its all (or redirect) term, or a new record."""
    if not record:
        return f"v=spf1 include:{include} -all"
    terms = record.split()
    for index, term in enumerate(terms):
        if term.lower().lstrip("+-~?") == "all" or term.lower().startswith("redirect="):
            return " ".join([*terms[:index], f"include:{include}", *terms[index:]])
    return " ".join([*terms, f"include:{include}"])


def spf_side(sender: Sender, domain: Domain) -> Side:
    """Whether SPF can align for the sender: its include is reached and its envelope-from is the domain."""
    if sender.return_path != "customer":
        # RFC 7489 §3.1.2: SPF aligns only when the envelope-from (return path) is the domain itself.
        return Side(False, f"{sender.name} sends with its own return-path domain, so SPF cannot align")
    if not sender.spf_include:
        return Side(None, f"the sender catalogue names no SPF include for {sender.name} (authorized by mx/a?)")
    spf = domain.dns.spf
    if spf is None:
        return Side(None, "the SPF evaluation was not collected")
    includes = tuple(spf.includes)
    found = [i for i in includes if any(fnmatch.fnmatchcase(i, p.lower()) for p in sender.spf_include)]
    if found:
        return Side(True, f"SPF reaches {', '.join(found)}")
    if spf.failure:
        return Side(None, f"the SPF evaluation is incomplete: {spf.failure}")
    wanted = next((p for p in sender.spf_include if "*" not in p and "?" not in p), None)
    fix = _spf_record_with(spf.record, wanted) if wanted else None
    publish = zone_txt(domain.name, fix) if fix else None
    seen = f"SPF record {spf.record!r}" if spf.record else "no SPF record"
    return Side(False, f"{seen} does not include {' or '.join(sender.spf_include)}", publish)


def dkim_side(sender: Sender, domain: Domain, ctx: RunContext) -> Side:
    """Whether DKIM can align for the sender: a usable key, not in testing mode, at one of its selectors."""
    names = sender.dkim_selectors or ctx.tenant.dkim_selectors
    if not names:
        return Side(None, f"no DKIM selector is known for {sender.name}: list it in the tenant's dkim_selectors")
    failures = []
    testing: list[tuple[Selector, str]] = []
    for name in names:
        selector = Selector(name, (sender.name,), domain.dns.get(f"dkim:{name}"))
        answer = selector.answer
        if answer is None:
            failures.append(f"{key_location(selector, domain)} was not collected")
            continue
        if answer.failed:
            failures.append(f"DNS lookup of {answer.name} TXT failed: {answer.error}")
            continue
        for record, key in zip(selector.key_records, selector.keys, strict=True):
            if key.usable and not key.testing:
                return Side(True, f"a valid key is published at {key_location(selector, domain)}")
            if key.usable:
                testing.append((selector, record))
    if failures:
        return Side(None, "; ".join(failures))
    if testing:
        # RFC 6376 §3.6.1 t=y: verifiers treat mail signed with a key in testing mode like unsigned mail.
        selector, record = testing[0]
        where = key_location(selector, domain)
        return Side(False, f"the key at {where} is in testing mode (t=y)", zone_txt(where, without_testing_flag(record)))
    first = Selector(names[0], (sender.name,), None)
    key_text = f"v=DKIM1; k=rsa; p=<base64 public key from {sender.title or sender.name}>"
    looked = ", ".join(f"{n}._domainkey.{domain.name}" for n in names)
    return Side(False, f"no valid, unrevoked key at {looked}", zone_txt(key_location(first, domain), key_text))


def observed_traffic(name: str, domain: Domain, ctx: RunContext) -> Result | None:
    """The verdict real traffic gives a sender: the receivers' aggregate reports over the window, when its
    sources sent at least ``dmarc_min_messages`` as the domain; None when they did not (DNS then decides)."""
    traffic = ctx.inventory.traffic.get(domain.name)
    if traffic is None:
        return None
    sources = [s for s in traffic.sources if sender_of(s.source_ip, s.trusted_ptr, ctx.senders) == name]
    messages = sum(s.messages for s in sources)
    if not sources or messages < ctx.policy.dmarc_min_messages:
        return None
    passed = sum(s.dmarc_pass for s in sources)
    evidence = {
        "sender": name, "basis": f"DMARC aggregate reports of the last {ctx.policy.dmarc_window_days} days",
        "messages": messages, "dmarc_pass": passed, "dmarc_fail": messages - passed,
        "spf_aligned": sum(s.spf_aligned for s in sources), "dkim_aligned": sum(s.dkim_aligned for s in sources),
        "sources": sorted(s.source_ip for s in sources)[:20],
    }
    if (messages - passed) / messages > ctx.policy.dmarc_max_fail_ratio:
        return Result.failed(item=name, **evidence, threshold=ctx.policy.dmarc_max_fail_ratio,
                             problem=f"{messages - passed} of {name}'s {messages} messages failed DMARC at receivers")
    return Result.passed(item=name, **evidence)


@check(
    id="alignment.sender_unaligned",
    title="A declared sender's mail would fail DMARC (neither SPF nor DKIM aligns)",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale=(
        "DMARC passes only when SPF or DKIM passes for the domain itself; a sender with neither aligned "
        "has its legitimate mail quarantined or rejected once the policy is enforced."
    ),
    references=("RFC 7489 §3.1", "RFC 7489 §4.2", "RFC 6376 §3.6.1"),
)
def sender_unaligned(domain: Domain, ctx: RunContext) -> list[Result]:
    """One result per declared sender: fail when its mail fails DMARC in the receivers' reports, or (without
    enough reported traffic) when neither aligned SPF nor aligned DKIM is possible by DNS."""
    if domain.parked:
        return [Result.passed(note="parked domain: no sender may send as it (see parked.not_locked)")]
    if not ctx.tenant.senders:
        return [Result.passed(note="the tenant declares no senders")]
    results = []
    for name in ctx.tenant.senders:
        sender = ctx.senders.get(name)
        if sender is None:
            results.append(Result.error(f"sender {name!r} is not in the sender catalogue", item=name))
            continue
        observed = observed_traffic(name, domain, ctx)
        if observed is not None:
            results.append(observed)
            continue
        spf, dkim = spf_side(sender, domain), dkim_side(sender, domain, ctx)
        seen = {"sender": name, "spf": spf.evidence(), "dkim": dkim.evidence()}
        if spf.aligned or dkim.aligned:
            results.append(Result.passed(item=name, **seen))
        elif spf.aligned is None or dkim.aligned is None:
            unknown = [f"{side}: {s.why}" for side, s in (("SPF", spf), ("DKIM", dkim)) if s.aligned is None]
            results.append(Result.error(f"alignment of {name} cannot be decided ({'; '.join(unknown)})", item=name))
        else:
            fixes = [f for f in (dkim.publish, spf.publish) if f]
            results.append(
                Result.failed(
                    item=name,
                    **seen,
                    missing=["spf", "dkim"],
                    publish=fixes[0] if fixes else None,
                    alternatives=fixes[1:],
                )
            )
    return results
