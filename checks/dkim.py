"""DKIM checks (RFC 6376, RFC 8301, RFC 8463): one result per selector the tenant's senders sign with."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from checks.registry import Result, RunContext, Sender, check, per_subject
from scanner.dns.dkim import CACHED_TEXT, DkimKey, parse_dkim_key, parse_tag_list, zone_txt
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity, Tenant


@dataclass(frozen=True, slots=True)
class Selector:
    """One declared DKIM selector of a domain, who signs with it, and what DNS said there."""

    name: str
    senders: tuple[str, ...]
    answer: DnsAnswer | None

    @property
    def records(self) -> tuple[str, ...]:
        """The TXT records at the selector (empty when there were none)."""
        return self.answer.records if self.answer is not None and self.answer.outcome is Outcome.ANSWER else ()

    @property
    def key_records(self) -> tuple[str, ...]:
        """The TXT records that are meant as key records: a p= tag or a leading v=DKIM1 (other text is not)."""
        return published_keys(self.records)[0]

    @property
    def keys(self) -> tuple[DkimKey, ...]:
        """Each key record at the selector, parsed."""
        return published_keys(self.records)[1]


def _meant_as_key(record: str) -> bool:
    """True when a TXT record is an attempt at a DKIM key record, however broken."""
    tags = parse_tag_list(record)
    return tags.get("p") is not None or record.lstrip(" \t").startswith("v=DKIM")


def _find_keys(records: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[DkimKey, ...]]:
    meant = tuple(r for r in records if _meant_as_key(r))
    return meant, tuple(parse_dkim_key(r) for r in meant)


_find_keys_cached = functools.lru_cache(maxsize=1024)(_find_keys)


def published_keys(records: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[DkimKey, ...]]:
    """The key records among a selector's TXT records, and each of them parsed.

    Every DKIM check of a domain (and the alignment check) reads the same selectors, so this is memoized
    like the parsers it calls, and likewise not for texts longer than scanner.dkim.CACHED_TEXT.
    """
    if sum(map(len, records)) > CACHED_TEXT:
        return _find_keys(records)
    return _find_keys_cached(records)


def declared_selectors(domain: Domain, ctx: RunContext) -> tuple[Selector, ...]:
    """The selectors of the tenant's declared senders plus its own dkim_selectors, with their answers (worked out
    once for all the DKIM checks of the domain)."""
    return _declared_selectors(domain, ctx.tenant, ctx.senders)


@per_subject  # by the tenant and catalogue, not the run context: the last one held would keep the inventory alive
def _declared_selectors(domain: Domain, tenant: Tenant, senders: Mapping[str, Sender]) -> tuple[Selector, ...]:
    owners: dict[str, list[str]] = {}
    for name in tenant.senders:
        sender = senders.get(name)
        for selector in sender.dkim_selectors if sender is not None else ():
            owners.setdefault(selector, []).append(name)
    for selector in tenant.dkim_selectors:
        owners.setdefault(selector, []).append("tenant dkim_selectors")
    return tuple(Selector(s, tuple(owners[s]), domain.dns.get(f"dkim:{s}")) for s in sorted(owners))


def lookup_error(selector: Selector, domain: Domain) -> Result | None:
    """The error for a selector whose key could not be looked up, or None when DNS answered."""
    answer = selector.answer
    if answer is None:
        return Result.error(f"DKIM key at {selector.name}._domainkey.{domain.name} was not collected", item=selector.name)
    if answer.failed:
        return Result.error(f"DNS lookup of {answer.name} TXT failed: {answer.error}", item=selector.name)
    return None


def key_location(selector: Selector, domain: Domain) -> str:
    """The owner name of a selector's key record."""
    return f"{selector.name}._domainkey.{domain.name}."


def _new_key_record(selector: Selector, domain: Domain, ctx: RunContext) -> str:
    """The record to publish when a selector needs a new key from its sender."""
    who = " / ".join(selector.senders)
    key = f"<base64 public key of a new {ctx.policy.dkim_min_bits}-bit RSA key from {who}>"
    return zone_txt(key_location(selector, domain), f"v=DKIM1; k=rsa; p={key}")


def _judge_keys(
    domain: Domain, ctx: RunContext, judge: Callable[[Selector, Domain, RunContext], Result]
) -> Iterator[Result]:
    """Run ``judge`` on every selector holding records; failed lookups are errors; a pass when none hold any."""
    if domain.parked:
        yield Result.passed(note="parked domain: it sends no mail, so it signs none")
        return
    selectors = declared_selectors(domain, ctx)
    judged = False
    for selector in selectors:
        error = lookup_error(selector, domain)
        if error is not None:
            judged = True
            yield error
        elif selector.key_records:
            judged = True
            yield judge(selector, domain, ctx)
    if not judged:
        yield Result.passed(selectors_checked=[s.name for s in selectors], note="no key is published at any of them")


@check(
    id="dkim.missing",
    title="No DKIM key at a declared sender's selector",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale=(
        "A sender that signs with a selector the domain does not publish produces signatures nobody can "
        "verify, so its mail has no DKIM pass and often no DMARC pass."
    ),
    references=("RFC 6376 §3.6.2.1", "RFC 6376 §6.1.2"),
)
def dkim_missing(domain: Domain, ctx: RunContext) -> list[Result]:
    """Fail for each declared selector with no key record under the domain."""
    if domain.parked:
        return [Result.passed(note="parked domain: it sends no mail, so it needs no DKIM key")]
    selectors = declared_selectors(domain, ctx)
    if not selectors:
        return [Result.error("no DKIM selector is known for this tenant's senders: list them in the tenant's dkim_selectors")]
    results = []
    for selector in selectors:
        error = lookup_error(selector, domain)
        if error is not None:
            results.append(error)
            continue
        assert selector.answer is not None
        if selector.key_records:
            records = list(selector.key_records)
            results.append(Result.passed(item=selector.name, senders=list(selector.senders), records=records))
            continue
        results.append(
            Result.failed(
                item=selector.name,
                senders=list(selector.senders),
                looked_up=selector.answer.name,
                outcome=selector.answer.outcome.value,
                records_seen=list(selector.records),
                publish=_new_key_record(selector, domain, ctx),
            )
        )
    return results


def _weak(selector: Selector, domain: Domain, ctx: RunContext) -> Result:
    minimum = ctx.policy.dkim_min_bits
    weak = [k for k in selector.keys if k.key_type == "rsa" and k.bits is not None and k.bits < minimum]
    sizes = [k.bits for k in selector.keys if k.bits is not None]
    if not weak:
        return Result.passed(item=selector.name, key_types=[k.key_type for k in selector.keys], bits=sizes)
    return Result.failed(
        item=selector.name,
        senders=list(selector.senders),
        records_seen=list(selector.key_records),
        bits=sizes,
        minimum_bits=minimum,
        publish=_new_key_record(selector, domain, ctx),
        note="rotate: have the sender generate the new key, publish it, then remove the old one",
    )


@check(
    id="dkim.weak_key",
    title="DKIM RSA key is shorter than the policy minimum",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale=(
        "Short RSA keys can be factored, after which anyone can sign mail as the domain; 1024-bit keys "
        "are the legacy floor and below it verifiers reject the key outright."
    ),
    references=("RFC 8301 §3.2", "RFC 6376 §3.3.3", "NIST SP 800-131A"),
)
def dkim_weak_key(domain: Domain, ctx: RunContext) -> list[Result]:
    """Fail for each selector whose RSA key is shorter than policy.dkim_min_bits."""
    return list(_judge_keys(domain, ctx, _weak))


def _revoked(selector: Selector, domain: Domain, ctx: RunContext) -> Result:
    keys = selector.keys
    if not any(k.revoked for k in keys):
        return Result.passed(item=selector.name)
    return Result.failed(
        item=selector.name,
        senders=list(selector.senders),
        records_seen=list(selector.key_records),
        publish=_new_key_record(selector, domain, ctx),
        note="the key is revoked (empty p=): mail the sender signs with this selector fails DKIM; "
        "publish its current key, or stop declaring this sender",
    )


@check(
    id="dkim.revoked",
    title="DKIM key at a declared selector is revoked",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale="A revoked key (empty p=) makes every signature with that selector fail, so the sender's mail loses DKIM.",
    references=("RFC 6376 §3.6.1", "RFC 6376 §6.1.2"),
)
def dkim_revoked(domain: Domain, ctx: RunContext) -> list[Result]:
    """Fail for each declared selector whose key record has an empty p= tag."""
    return list(_judge_keys(domain, ctx, _revoked))


def without_testing_flag(record: str) -> str:
    """The key record with the y flag removed from t= (and t= dropped when nothing is left)."""
    parts = []
    for name, value in parse_tag_list(record).tags:
        if name == "t":
            flags = [f.strip() for f in value.split(":") if f.strip() and f.strip() != "y"]
            if not flags:
                continue
            value = ":".join(flags)
        parts.append(f"{name}={value}")
    return "; ".join(parts)


def _testing(selector: Selector, domain: Domain, ctx: RunContext) -> Result:
    testing = [r for r, k in zip(selector.key_records, selector.keys, strict=True) if k.testing]
    if not testing:
        return Result.passed(item=selector.name)
    return Result.failed(
        item=selector.name,
        senders=list(selector.senders),
        records_seen=list(selector.key_records),
        publish=zone_txt(key_location(selector, domain), without_testing_flag(testing[0])),
    )


@check(
    id="dkim.testing",
    title="DKIM key is still in testing mode (t=y)",
    severity=Severity.LOW,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale=(
        "Verifiers must treat mail signed with a key in testing mode like unsigned mail, so the "
        "signature protects nothing."
    ),
    references=("RFC 6376 §3.6.1",),
)
def dkim_testing(domain: Domain, ctx: RunContext) -> list[Result]:
    """Fail for each declared selector whose key record carries the t=y flag."""
    return list(_judge_keys(domain, ctx, _testing))


def _syntax(selector: Selector, domain: Domain, ctx: RunContext) -> Result:
    keys = selector.keys
    problems = [p for k in keys for p in k.problems]
    if len(selector.records) > 1:
        # RFC 6376 §6.1.2: with several records at the selector, a verifier may pick any of them.
        problems.append(f"{len(selector.records)} TXT records at the selector: a verifier may pick any of them")
    if not problems:
        return Result.passed(item=selector.name, key_types=[k.key_type for k in keys])
    key_type = next((k.key_type for k in keys if k.key_type in ("rsa", "ed25519")), "rsa")
    who = " / ".join(selector.senders)
    return Result.failed(
        item=selector.name,
        senders=list(selector.senders),
        records_seen=list(selector.records),
        problems=problems,
        publish=zone_txt(key_location(selector, domain), f"v=DKIM1; k={key_type}; p=<base64 public key from {who}>"),
        note="publish exactly one TXT record at the selector",
    )


@check(
    id="dkim.syntax",
    title="DKIM key record is malformed",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.dkim",),
    rationale=(
        "A key record verifiers cannot parse (bad tags, wrong version, undecodable key, unknown key "
        "type) makes every signature with that selector fail."
    ),
    references=("RFC 6376 §3.2", "RFC 6376 §3.6.1", "RFC 8463 §4.2", "RFC 8301 §3.1"),
)
def dkim_syntax(domain: Domain, ctx: RunContext) -> list[Result]:
    """Fail for each declared selector whose key record breaks the RFC 6376 §3.6.1 grammar."""
    return list(_judge_keys(domain, ctx, _syntax))
