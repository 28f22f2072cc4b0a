"""TLS-RPT check (RFC 8460): a domain that publishes MTA-STS asks for reports on TLS failures."""

from __future__ import annotations

import re

from checks.registry import Result, RunContext, check
from scanner.model import DnsAnswer, Domain, Outcome, Scope, Severity
from scanner.dns.mtasts import is_domain_name, sts_records

# RFC 8460 §3: tlsrpt-version = %s"v=TLSRPTv1" (case-sensitive), then field-delim = *WSP ";" *WSP.
_TLSRPT_VERSION = re.compile(r"^v=TLSRPTv1[ \t]*(;|$)")


def tlsrpt_records(answer: DnsAnswer | None) -> list[str]:
    """The TXT strings that are TLS-RPT records; others are discarded (RFC 8460 §3)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    return [r for r in answer.records if _TLSRPT_VERSION.match(r)]


def tlsrpt_problems(record: str) -> list[str]:
    """What is wrong with one ``v=TLSRPTv1`` record by RFC 8460 §3; empty when it is valid."""
    fields = [f.strip(" \t") for f in record.split(";")][1:]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing delimiter is allowed
    ruas = [f.partition("=")[2] for f in fields if f.partition("=")[0] == "rua"]
    if not ruas:
        return ["no rua= field"]
    problems = []
    for uri in (u.strip(" \t") for u in ruas[0].split(",")):
        scheme, _, rest = uri.partition(":")
        if scheme.lower() == "mailto":
            # RFC 8460 §3: a mailto: URI (RFC 6068) naming one address.
            local, at, host = rest.partition("@")
            if not (local and at and is_domain_name(host.partition("?")[0])):
                problems.append(f"rua {uri[:120]!r} is not a mailto: address")
        elif scheme.lower() == "https":
            host = rest.removeprefix("//").partition("/")[0].partition(":")[0]
            if not rest.startswith("//") or not is_domain_name(host):
                problems.append(f"rua {uri[:120]!r} is not an https:// URL with a host name")
        else:
            problems.append(f"rua {uri[:120]!r} is neither mailto: nor https: (RFC 8460 §3)")
    return problems


def suggested_record(domain: Domain) -> str:
    """The TLS-RPT record to publish."""
    return f'_smtp._tls.{domain.name}. TXT "v=TLSRPTv1; rua=mailto:tls-reports@{domain.name}"'


@check(
    id="tlsrpt.missing",
    title="Domain publishes MTA-STS but no valid TLS-RPT record",
    severity=Severity.LOW,
    scope=Scope.DOMAIN,
    requires=("dns.mta_sts", "dns.tlsrpt"),
    rationale=(
        "Without TLS-RPT, senders that fail to deliver under the MTA-STS policy have nowhere to report it, "
        "so a broken certificate or a missing MX pattern goes unnoticed until mail is lost."
    ),
    references=("RFC 8460 §3", "RFC 8461 §1"),
    remediation=None,
)
def tlsrpt_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when a domain that publishes a v=STSv1 record has no single valid v=TLSRPTv1 record with rua."""
    mta_sts = domain.dns.get("mta_sts")
    answer = domain.dns.get("tlsrpt")
    assert mta_sts is not None and answer is not None  # the evaluate stage only calls a check whose facts exist
    records = tlsrpt_records(answer)
    if not sts_records(mta_sts):
        # Decision: judged only where MTA-STS is published; elsewhere the rule does not apply.
        return Result.passed(mta_sts_published=False, records=records)
    seen = list(answer.records) if answer.outcome is Outcome.ANSWER else []
    if len(records) == 1 and not tlsrpt_problems(records[0]):
        return Result.passed(looked_up=answer.name, record=records[0])
    if not records:
        problem = f"no v=TLSRPTv1 record ({answer.outcome.value})"
        problems: list[str] = []
    elif len(records) > 1:
        # RFC 8460 §3: if the number of records is not one, senders assume no TLS-RPT.
        problem, problems = "more than one v=TLSRPTv1 record", []
    else:
        problem, problems = "invalid v=TLSRPTv1 record", tlsrpt_problems(records[0])
    return Result.failed(
        looked_up=answer.name,
        problem=problem,
        problems=problems,
        records_seen=seen,
        publish=suggested_record(domain),
    )
