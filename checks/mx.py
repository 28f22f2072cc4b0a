"""MX checks: a domain receives mail somewhere (or declares it does not, RFC 7505), and where it should."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from checks.registry import Result, RunContext, check
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity


@dataclass(frozen=True, slots=True)
class MxRecord:
    """One MX record: its preference and exchange host (lowercase, no trailing dot; ``.`` stays ``.``)."""

    preference: int
    host: str
    raw: str

    @property
    def null(self) -> bool:
        """A null MX (RFC 7505 §3): preference 0 and the root as exchange."""
        return self.preference == 0 and self.host == "."


def mx_records(answer: DnsAnswer | None) -> list[MxRecord]:
    """The MX records of an answer, sorted by preference; records that do not parse are skipped."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    records = []
    for raw in answer.records:
        preference, _, exchange = raw.strip().partition(" ")
        if not preference.isdigit() or not exchange.strip():
            continue
        exchange = exchange.strip().lower()
        records.append(MxRecord(int(preference), "." if exchange == "." else exchange.rstrip("."), raw))
    return sorted(records, key=lambda r: (r.preference, r.host))


def mx_hosts(answer: DnsAnswer | None) -> list[str]:
    """The exchange hosts of an answer's MX records, null MX excluded, in preference order."""
    return [r.host for r in mx_records(answer) if r.host != "."]


def _declared_patterns(ctx: RunContext) -> dict[str, tuple[str, ...]]:
    """The MX patterns of each declared sender that has any, lowercased and without trailing dots."""
    patterns = {}
    for name in ctx.tenant.senders:
        sender = ctx.senders.get(name)
        if sender is not None and sender.mx_patterns:
            patterns[name] = tuple(p.lower().rstrip(".") for p in sender.mx_patterns)
    return patterns


def _suggested_exchange(ctx: RunContext) -> str | None:
    """A concrete MX host (no wildcard) from the declared senders' patterns, for a record to publish."""
    for patterns in _declared_patterns(ctx).values():
        for pattern in patterns:
            if not any(c in pattern for c in "*?["):
                return pattern
    return None


def _mx_line(domain: str, preference: int, host: str) -> str:
    """An MX record in master-file form; the null MX's exchange is the root, ``.``."""
    return f"{domain}. MX {preference} {host if host == '.' else host + '.'}"


@check(
    id="mx.missing",
    title="Domain has no usable MX record",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.mx",),
    rationale=(
        "Without MX records senders fall back to the domain's address records, or bounce: replies, bounces "
        "and DMARC reports are lost. A domain that must receive no mail says so with a null MX instead."
    ),
    references=("RFC 5321 §5.1", "RFC 7505 §3", "RFC 7505 §4"),
    remediation=None,
)
def mx_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when a domain publishes no MX, a malformed null MX, or a null MX while not declared parked."""
    answer = domain.dns.get("mx")
    assert answer is not None  # the evaluate stage only calls a check whose required facts exist
    records = mx_records(answer)
    seen = list(answer.records) if answer.outcome is Outcome.ANSWER else []
    nulls = [r for r in records if r.host == "."]
    if nulls and len(records) > 1:
        # RFC 7505 §3: a domain that advertises a null MX must advertise no other MX record.
        real = [r for r in records if r.host != "."]
        fix = [_mx_line(domain.name, 0, ".")] if domain.parked else [_mx_line(domain.name, r.preference, r.host) for r in real]
        return Result.failed(
            looked_up=answer.name, problem="a null MX mixed with other MX records (RFC 7505 §3)",
            records_seen=seen, publish=fix,
        )
    if nulls:
        null = nulls[0]
        if not null.null:
            fix = _mx_line(domain.name, 0, ".") if domain.parked else _receiving_mx(domain, ctx)
            return Result.failed(
                looked_up=answer.name, problem="a root exchange with a non-zero preference is not a null MX (RFC 7505 §3)",
                records_seen=seen, publish=[fix],
            )
        if domain.parked:
            return Result.passed(looked_up=answer.name, records=seen, null_mx=True, parked=True)
        # Decision: a null MX on a domain the tenant did not declare parked means its mail is refused
        # (RFC 7505 §4): a failure, unless the tenant declares the domain in parked_domains.
        return Result.failed(
            looked_up=answer.name,
            problem="null MX: the domain refuses all mail, but it is not declared in parked_domains",
            records_seen=seen,
            null_mx=True,
            publish=[_receiving_mx(domain, ctx)],
            or_declare=f"add {domain.name} to the tenant's parked_domains",
        )
    if records:
        return Result.passed(looked_up=answer.name, records=seen, hosts=[r.host for r in records])
    # NXDOMAIN, NODATA, or records that do not parse: RFC 5321 §5.1 falls back to the A/AAAA record.
    publish = _mx_line(domain.name, 0, ".") if domain.parked else _receiving_mx(domain, ctx)
    return Result.failed(
        looked_up=answer.name,
        outcome=answer.outcome.value,
        records_seen=seen,
        parked=domain.parked,
        publish=[publish],
    )


def _receiving_mx(domain: Domain, ctx: RunContext) -> str:
    """The MX record a receiving domain should publish, from its declared senders where possible."""
    host = _suggested_exchange(ctx)
    if host is None:
        return f"{domain.name}. MX 10 <your inbound mail host>."
    return _mx_line(domain.name, 10, host)


@check(
    id="mx.unexpected",
    title="MX host belongs to none of the tenant's declared mail services",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.mx",),
    rationale=(
        "An MX host that no declared service owns receives the domain's mail: a leftover from a migration, "
        "a typo, or someone intercepting it."
    ),
    references=("RFC 5321 §5.1",),
    remediation=None,
)
def mx_unexpected(domain: Domain, ctx: RunContext) -> Result:
    """Fail when an MX host matches none of the declared senders' ``mx_patterns`` (shell-style, lowercase)."""
    answer = domain.dns.get("mx")
    assert answer is not None  # the evaluate stage only calls a check whose required facts exist
    records = [r for r in mx_records(answer) if r.host != "."]
    if not records:
        # Nothing receives mail here (no MX or a null MX): mx.missing judges that; nothing is unexpected.
        return Result.passed(looked_up=answer.name, hosts=[], outcome=answer.outcome.value)
    declared = _declared_patterns(ctx)
    if not declared:
        # Decision: without any declared MX pattern nothing can be judged; that is a coverage gap, not a pass.
        senders = ", ".join(ctx.tenant.senders) or "none"
        return Result.unsupported(
            f"no declared sender of tenant {ctx.tenant.name} (declared: {senders}) has mx_patterns in the "
            "sender catalogue; add mx_patterns to judge the MX hosts"
        )
    unexpected = [
        r for r in records if not any(fnmatchcase(r.host, p) for patterns in declared.values() for p in patterns)
    ]
    if not unexpected:
        return Result.passed(looked_up=answer.name, hosts=[r.host for r in records])
    kept = [r for r in records if r not in unexpected]
    publish = [_mx_line(domain.name, r.preference, r.host) for r in kept] or [_receiving_mx(domain, ctx)]
    return Result.failed(
        looked_up=answer.name,
        records_seen=list(answer.records),
        unexpected=[r.host for r in unexpected],
        patterns={name: list(p) for name, p in declared.items()},
        remove=[_mx_line(domain.name, r.preference, r.host) for r in unexpected],
        publish=publish,
    )
