"""What drift and baselines compare, read from raw DNS answers through the shared record parsers.

Drift compares this run's answers with the stored answers of an earlier run, so it works from raw
records (scanner.dns.spf, scanner.dns.dmarc and scanner.dns.dkim do the parsing) rather than from a run's
SpfEvaluation, which earlier snapshots hold only as plain data.
"""

from __future__ import annotations

from scanner.dns.dkim import parse_dkim_key, parse_tag_list
from scanner.dns.dmarc import is_dmarc_record, parse_dmarc_record
from scanner.model import DnsAnswer, DnsFacts, Outcome
from scanner.dns.spf import spf_records

DMARC_POLICIES = ("none", "quarantine", "reject")
"""RFC 7489 §6.3 p= values, weakest first."""
SPF_ALL = ("+", "?", "~", "-")
"""RFC 7208 §4.6.2 qualifiers of "all", loosest first ("" when there is no all: neutral, §4.7)."""
MTA_STS_MODES = ("none", "testing", "enforce")
"""RFC 8461 §5 policy modes, weakest first."""


def records(answer: DnsAnswer | None) -> tuple[str, ...]:
    """An answer's records; () for an absence (callers check ``failed`` first)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return ()
    return answer.records


def dmarc_record(answer: DnsAnswer | None) -> str | None:
    """The DMARC record of an answer, when exactly one is published (RFC 7489 §6.6.3: more is none)."""
    found = [r for r in records(answer) if is_dmarc_record(r)]
    return found[0] if len(found) == 1 else None


def dmarc_tags(record: str | None) -> dict[str, str]:
    """A DMARC record's tags (RFC 7489 §6.4: names case-insensitive), the first of a repeated tag winning."""
    if record is None:
        return {}
    tags: dict[str, str] = {}
    for name, value in parse_tag_list(record, fold_names=True).tags:
        tags.setdefault(name, value)
    return tags


def dmarc_policy(record: str | None) -> str | None:
    """The p= policy, or None when the record is missing or its p= is not a valid value."""
    return None if record is None else parse_dmarc_record(record).policy


def dmarc_rua(record: str | None) -> tuple[str, ...]:
    """The rua= reporting URIs (RFC 7489 §6.4), lowercased and sorted."""
    if record is None:
        return ()
    return tuple(sorted({uri.uri.strip().lower() for uri in parse_dmarc_record(record).rua}))


def spf_record(answer: DnsAnswer | None) -> str | None:
    """The SPF record among apex TXT strings, when exactly one is published (RFC 7208 §4.5: more is permerror)."""
    found = spf_records(records(answer))
    return found[0] if len(found) == 1 else None


def spf_terms(record: str | None) -> tuple[str, ...]:
    """An SPF record's terms after the version, lowercased (RFC 7208 §4.6.1)."""
    if record is None:
        return ()
    return tuple(t.lower() for t in record.split()[1:])


def spf_all(record: str | None) -> str | None:
    """The qualifier of the record's "all" ("" when it has none: neutral by RFC 7208 §4.7); None without a record."""
    if record is None:
        return None
    for term in spf_terms(record):
        if term.lstrip("+?~-") == "all":
            return term[0] if term[0] in "+?~-" else "+"  # RFC 7208 §4.6.2: no qualifier means "+"
    return ""


def spf_all_rank(qualifier: str | None) -> int:
    """How strict an SPF "all" is: 0 no record, 1 "+all", 2 neutral ("?all" or none), 3 "~all", 4 "-all"."""
    if qualifier is None:
        return 0
    return {"+": 1, "?": 2, "": 2, "~": 3, "-": 4}[qualifier]


def mx_hosts(answer: DnsAnswer | None) -> tuple[str, ...]:
    """MX records as "preference host", lowercased without the trailing dot, sorted."""
    out = set()
    for record in records(answer):
        parts = record.split()
        if len(parts) == 2:
            out.add(f"{parts[0]} {parts[1].lower().rstrip('.')}")
        elif parts:
            out.add(record.lower().rstrip("."))
    return tuple(sorted(out, key=lambda r: (len(r.split()), r)))


def dkim_key(answer: DnsAnswer | None) -> tuple[str, int] | None:
    """The DKIM key published in an answer as (algorithm, bits); ("revoked", 0) for an empty or unreadable p=.

    None when no key record is published. RFC 6376 §3.6.1: an empty p= means the key was revoked.
    """
    texts = [r for r in records(answer) if "p=" in r.replace(" ", "")]
    if not texts:
        return None
    key = parse_dkim_key(texts[0])
    if not key.revoked and key.key_type == "rsa" and key.bits:
        return ("rsa", key.bits)
    if not key.revoked and key.key_type == "ed25519" and key.usable:
        return ("ed25519", 256)  # RFC 8463 §3: a raw 32-byte key
    return ("revoked", 0)


def mode_rank(mode: str | None) -> int:
    """How strict an MTA-STS mode is: 0 none or no policy, 1 testing, 2 enforce."""
    return MTA_STS_MODES.index(mode) if mode in MTA_STS_MODES else 0


def mta_sts_mode(facts: DnsFacts) -> tuple[str | None, str]:
    """The MTA-STS mode in force as (mode, ""), or (None, why) when it cannot be known.

    With no ``_mta-sts`` TXT record no policy applies (RFC 8461 §3.1), which is mode "none".
    """
    policy = facts.mta_sts_policy
    mode = getattr(policy, "mode", None) if policy is not None else None
    if mode is not None:
        value = str(getattr(mode, "value", mode)).lower()
        return (value, "") if value in MTA_STS_MODES else (None, f"unknown MTA-STS mode {value[:40]!r}")
    answer = facts.get("mta_sts")
    if answer is None:
        return None, "the _mta-sts record was not collected"
    if answer.failed:
        return None, f"DNS lookup of {answer.name} TXT failed: {answer.error}"
    if not any(r.lower().startswith("v=stsv1") for r in records(answer)):
        return "none", ""
    return None, "an MTA-STS record is published but its policy was not fetched"
