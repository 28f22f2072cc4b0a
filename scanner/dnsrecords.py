"""Small readers of raw DNS answers for drift and baselines: DMARC tags, SPF terms, MX hosts, DKIM keys.

They read only what drift and baselines compare. Where a full parser exists after merging (scanner.spf's
SpfEvaluation, the DMARC and DKIM checks' parsers), it should replace the matching function here.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from scanner.model import DnsAnswer, DnsFacts, Outcome

# RFC 7489 §6.4: a DMARC record starts with "v=DMARC1".
_DMARC = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)
# RFC 7208 §4.5: an SPF record starts with "v=spf1" followed by a space or the end.
_SPF = re.compile(r"^\s*v=spf1(\s|$)", re.IGNORECASE)

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
    found = [r for r in records(answer) if _DMARC.match(r)]
    return found[0] if len(found) == 1 else None


def dmarc_tags(record: str | None) -> dict[str, str]:
    """A DMARC record's tags (RFC 7489 §6.4), names lowercased."""
    if record is None:
        return {}
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def dmarc_policy(record: str | None) -> str | None:
    """The p= policy, lowercased, or None when the record is missing or its p= is not a known value."""
    value = dmarc_tags(record).get("p", "").lower()
    return value if value in DMARC_POLICIES else None


def dmarc_rua(record: str | None) -> tuple[str, ...]:
    """The rua= reporting URIs (RFC 7489 §6.4), lowercased and sorted."""
    value = dmarc_tags(record).get("rua", "")
    return tuple(sorted({u.strip().lower() for u in value.split(",") if u.strip()}))


def spf_record(answer: DnsAnswer | None) -> str | None:
    """The SPF record among apex TXT strings, when exactly one is published (RFC 7208 §4.5: more is permerror)."""
    found = [r for r in records(answer) if _SPF.match(r)]
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

    None when no key record is published. RFC 6376 §3.6.1: p= is the base64 public key, and an empty
    p= means the key was revoked.
    """
    texts = [r for r in records(answer) if "p=" in r.replace(" ", "")]
    if not texts:
        return None
    tags: dict[str, str] = {}
    for part in texts[0].split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    data = tags.get("p", "")
    if not data:
        return ("revoked", 0)
    try:
        key = load_der_public_key(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error, TypeError):
        if tags.get("k", "rsa").lower() == "ed25519" and len(data) == 44:
            return ("ed25519", 256)  # RFC 8463 §3: the raw 32-byte key, not DER
        return ("revoked", 0)
    if isinstance(key, rsa.RSAPublicKey):
        return ("rsa", int(key.key_size))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ec", int(key.key_size))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("ed25519", 256)
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
