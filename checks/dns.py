"""DNS checks across records: the domain's declared baseline."""

from __future__ import annotations

from collections.abc import Iterator

from checks.registry import Result, RunContext, check
from scanner.dns.records import (
    dkim_key,
    dmarc_policy,
    dmarc_record,
    dmarc_rua,
    dmarc_tags,
    mta_sts_mode,
    mx_hosts,
    spf_record,
    spf_terms,
)
from scanner.model import Baseline, DnsAnswer, Domain, Scope, Severity


def _unknown(domain: Domain, key: str, fact: str) -> str | None:
    answer = domain.dns.get(key)
    if answer is None:
        return f"{fact} was not collected for {domain.name}"
    if answer.failed:
        return f"DNS lookup of {answer.name} {answer.rdtype} failed: {answer.error}"
    return None


def _dmarc_fix(
    domain: Domain, answer: DnsAnswer | None, *, p: str | None = None, rua: tuple[str, ...] | None = None
) -> str:
    tags = dmarc_tags(dmarc_record(answer)) or {"v": "DMARC1", "p": "none"}
    tags.pop("v", None)
    if p is not None:
        tags["p"] = p
    if rua is not None:
        if rua:
            tags["rua"] = ",".join(rua)
        else:
            tags.pop("rua", None)
    # RFC 7489 §6.4: v= first, then p=.
    ordered = ["v=DMARC1", f"p={tags.pop('p', 'none')}", *(f"{k}={v}" for k, v in tags.items())]
    return f'_dmarc.{domain.name}. TXT "{"; ".join(ordered)}"'


def _mx(domain: Domain, expected: tuple[str, ...]) -> Result:
    actual = mx_hosts(domain.dns.get("mx"))
    # An expected entry without a preference ("mx1.example") compares the host only.
    with_pref = all(" " in e for e in expected)
    seen = set(actual) if with_pref else {a.split()[-1] for a in actual}
    if seen == set(expected):
        return Result.passed(item="mx", expected=list(expected), actual=list(actual))
    fix = [f"{domain.name}. MX {e if with_pref else '10 ' + e}." for e in expected]
    return Result.failed(item="mx", expected=list(expected), actual=list(actual),
                         missing=sorted(set(expected) - seen), unexpected=sorted(seen - set(expected)), publish=fix)


def _spf(domain: Domain, expected: tuple[str, ...]) -> Result:
    record = spf_record(domain.dns.get("txt"))
    actual = spf_terms(record)
    if set(actual) == set(expected) and record is not None:
        return Result.passed(item="spf_terms", expected=list(expected), actual=list(actual), record=record)
    return Result.failed(
        item="spf_terms", expected=list(expected), actual=list(actual), record=record,
        missing=sorted(set(expected) - set(actual)), unexpected=sorted(set(actual) - set(expected)),
        publish=f'{domain.name}. TXT "v=spf1 {" ".join(expected)}"',
    )


def _dkim(domain: Domain, expected: tuple[str, ...]) -> Result:
    unknown: list[str] = []
    missing: list[str] = []
    for selector in expected:
        answer = domain.dns.get(f"dkim:{selector}")
        if answer is None:
            unknown.append(f"DKIM selector {selector!r} is not looked up: add it to the tenant's dkim_selectors")
        elif answer.failed:
            unknown.append(f"DNS lookup of {answer.name} TXT failed: {answer.error}")
        elif (dkim_key(answer) or ("", 0))[1] == 0:
            missing.append(selector)
    present = sorted(
        name.partition(":")[2] for name, answer in domain.dns.answers.items()
        if name.startswith("dkim:") and not answer.failed and (dkim_key(answer) or ("", 0))[1] > 0
    )
    unexpected = sorted(set(present) - set(expected))
    if missing or unexpected:
        return Result.failed(
            item="dkim_selectors", expected=list(expected), actual=present, missing=missing, unexpected=unexpected,
            publish=[f'{s}._domainkey.{domain.name}. TXT "v=DKIM1; k=rsa; p=<the sender\'s public key>"'
                     for s in missing]
            + [f"remove {s}._domainkey.{domain.name} TXT, or add {s!r} to the baseline" for s in unexpected],
        )
    if unknown:
        return Result.error("; ".join(unknown), item="dkim_selectors")
    return Result.passed(item="dkim_selectors", expected=list(expected), actual=present)


def _aspects(domain: Domain, baseline: Baseline) -> Iterator[Result]:
    if baseline.mx is not None:
        why = _unknown(domain, "mx", "dns.mx")
        yield Result.error(why, item="mx") if why else _mx(domain, baseline.mx)
    if baseline.spf_terms is not None:
        why = _unknown(domain, "txt", "dns.spf")
        yield Result.error(why, item="spf_terms") if why else _spf(domain, baseline.spf_terms)
    dmarc = domain.dns.get("dmarc")
    for item, expected, actual_of in (
        ("dmarc_policy", baseline.dmarc_policy, lambda: dmarc_policy(dmarc_record(dmarc))),
        ("dmarc_rua", baseline.dmarc_rua, lambda: dmarc_rua(dmarc_record(dmarc))),
    ):
        if expected is None:
            continue
        why = _unknown(domain, "dmarc", "dns.dmarc")
        if why:
            yield Result.error(why, item=item)
            continue
        actual = actual_of()
        want = sorted(expected) if isinstance(expected, tuple) else expected
        got = list(actual) if isinstance(actual, tuple) else actual
        evidence = {"expected": want, "actual": got, "record": dmarc_record(dmarc)}
        if got == want:
            yield Result.passed(item=item, **evidence)
        elif item == "dmarc_policy":
            yield Result.failed(item=item, **evidence, publish=_dmarc_fix(domain, dmarc, p=str(expected)))
        else:
            yield Result.failed(item=item, **evidence, publish=_dmarc_fix(domain, dmarc, rua=tuple(want)))
    if baseline.dkim_selectors is not None:
        yield _dkim(domain, baseline.dkim_selectors)
    if baseline.mta_sts_mode is not None:
        mode, why = mta_sts_mode(domain.dns)
        if mode is None:
            yield Result.error(why, item="mta_sts_mode")
        elif mode == baseline.mta_sts_mode:
            yield Result.passed(item="mta_sts_mode", expected=baseline.mta_sts_mode, actual=mode)
        else:
            yield Result.failed(
                item="mta_sts_mode", expected=baseline.mta_sts_mode, actual=mode,
                publish=f"mode: {baseline.mta_sts_mode} in https://mta-sts.{domain.name}/.well-known/mta-sts.txt "
                        f"(and a new id= in _mta-sts.{domain.name} TXT)",
            )


@check(
    id="dns.baseline_drift",
    title="Domain's mail DNS deviates from its declared baseline",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    rationale=(
        "A baseline states what the domain's MX, SPF, DMARC, DKIM and MTA-STS should be; any deviation "
        "is an unreviewed change, whether a mistake, a half-done migration or an attack."
    ),
    references=("RFC 7208 §4.6", "RFC 7489 §6.3", "RFC 6376 §3.6.1", "RFC 8461 §5"),
)
def baseline_drift(domain: Domain, ctx: RunContext) -> Iterator[Result]:
    """One result per declared baseline key: fail where the DNS differs from it."""
    baseline = ctx.inventory.baselines.get(domain.name)
    if baseline is None:
        yield Result.passed(baseline=None, note="no baseline declared for this domain")
        return
    for result in _aspects(domain, baseline):
        yield Result(result.status, {**result.evidence, "baseline": baseline.source} if result.evidence else {},
                     result.item, result.reason)
