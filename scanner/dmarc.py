"""DMARC records (RFC 7489 §6.3, §6.4): a strict pure parser, no DNS."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scanner.dkim import CACHED_TEXT, TagList, parse_tag_list, shown

# RFC 7489 §6.4: dmarc-version = "v" *WSP "=" *WSP "DMARC1" (the value is case-sensitive).
_DMARC_VERSION = re.compile(r"^\s*[vV]\s*=\s*DMARC1\s*(;|$)")
POLICIES = ("none", "quarantine", "reject")
"""RFC 7489 §6.3 p= and sp= values, from weakest to strongest."""
# RFC 7489 §6.4: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ].
_SIZE_LIMIT = re.compile(r"^[0-9]+[kmgt]?$", re.IGNORECASE)
# RFC 3986 §3.1 scheme, then only characters a URI may hold (RFC 3986 §2).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
# RFC 6068 §2 with RFC 5322 §3.2.3 atext (percent-encoding allowed): the local part of a mailto: address.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$&'*+\-/=?^_`{|}~.%]+$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FO_OPTIONS = ("0", "1", "d", "s")
# RFC 7489 §11.5 (Failure Report Formats registry): "afrf" is the only registered format.
_REPORT_FORMATS = ("afrf",)
_RI_MAX = 2**32 - 1
_MAX_PROBLEMS = 20


def is_dmarc_record(text: str) -> bool:
    """True when a TXT string starts with the DMARC version tag (RFC 7489 §6.6.3 discards the rest)."""
    return _DMARC_VERSION.match(text) is not None


def is_hostname(name: str) -> bool:
    """True for an LDH domain name of at least two labels that DNS can hold (RFC 1035 §2.3.4)."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


@dataclass(frozen=True, slots=True)
class ReportUri:
    """One rua or ruf destination; ``domain`` is set for a mailto: URI."""

    uri: str
    scheme: str
    address: str | None = None
    domain: str | None = None
    size_limit: str | None = None


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC policy record; unset tags hold their RFC 7489 §6.3 defaults."""

    tags: TagList
    policy: str | None = None
    subdomain_policy: str | None = None
    pct: int = 100
    rua: tuple[ReportUri, ...] = ()
    ruf: tuple[ReportUri, ...] = ()
    adkim: str = "r"
    aspf: str = "r"
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    policy_valid: bool = False
    problems: tuple[str, ...] = ()

    @property
    def applied_policy(self) -> str | None:
        """The policy a receiver applies to the domain itself; None when it applies no DMARC at all."""
        if self.policy_valid:
            return self.policy
        # RFC 7489 §6.6.3 step 6: no valid p (or an invalid sp): p=none if a rua URI is valid, else nothing.
        return "none" if self.rua else None

    @property
    def applied_subdomain_policy(self) -> str | None:
        """The policy a receiver applies to subdomains (sp, defaulting to p; RFC 7489 §6.3)."""
        if not self.policy_valid:
            return self.applied_policy
        return self.subdomain_policy or self.policy

    @property
    def mailto_domains(self) -> tuple[str, ...]:
        """The distinct domains of the mailto: rua and ruf destinations, in record order."""
        return tuple(dict.fromkeys(u.domain for u in self.rua + self.ruf if u.domain))


def _parse_uri(text: str) -> tuple[ReportUri | None, str | None]:
    """One dmarc-uri (RFC 7489 §6.4), or why it is not one."""
    uri, bang, size = text.rpartition("!") if "!" in text else (text, "", "")
    if bang and not _SIZE_LIMIT.match(size):
        return None, f"{shown(text)} has an invalid size limit after '!'"
    if not _URI.match(uri):
        return None, f"{shown(text)} is not a URI (commas and '!' must be percent-encoded)"
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme != "mailto":
        return ReportUri(uri, scheme, size_limit=size or None), None
    address = rest.partition("?")[0]
    local, at, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not _LOCAL_PART.match(local) or not is_hostname(domain):
        return None, f"{shown(text)} is not a mailto: URI with a valid address"
    return ReportUri(uri, scheme, address, domain, size or None), None


def _parse_uris(tag: str, value: str, problems: list[str]) -> tuple[ReportUri, ...]:
    """A comma-separated dmarc-uri list; invalid URIs are reported and dropped (RFC 7489 §6.3)."""
    uris = []
    for part in value.split(","):
        parsed, problem = _parse_uri(part.strip(" \t\r\n"))
        if problem:
            problems.append(f"{tag}: {problem}")
        elif parsed is not None:
            uris.append(parsed)
    return tuple(uris)


def _choice(tag: str, value: str | None, allowed: tuple[str, ...], problems: list[str]) -> str | None:
    """A single keyword value from ``allowed`` (case-insensitive, RFC 5234 §2.3), or None with a problem."""
    if value is None:
        return None
    if value.lower() in allowed:
        return value.lower()
    problems.append(f"{tag}={shown(value)} is not one of {', '.join(allowed)}")
    return None


def _list(tag: str, value: str, allowed: tuple[str, ...], problems: list[str]) -> tuple[str, ...] | None:
    """A colon-separated keyword list whose every item is in ``allowed``, or None with a problem."""
    items = tuple(item.strip(" \t\r\n").lower() for item in value.split(":"))
    bad = [item for item in items if item not in allowed]
    if bad:
        problems.append(f"{tag}={shown(value)}: {', '.join(shown(b, 20) for b in bad[:5])} not allowed")
        return None
    return items


def _number(tag: str, value: str, digits: int, maximum: int, problems: list[str]) -> int | None:
    """An unsigned decimal of at most ``digits`` digits and ``maximum``, or None with a problem."""
    if not value.isascii() or not value.isdigit() or len(value) > digits or int(value) > maximum:
        problems.append(f"{tag}={shown(value)} is not a whole number from 0 to {maximum}")
        return None
    return int(value)


def parse_dmarc_record(text: str) -> DmarcRecord:
    """Parse one DMARC record strictly; syntax errors fall back to defaults as RFC 7489 §6.3 says."""
    return _parse_record(text) if len(text) > CACHED_TEXT else _parse_record_cached(text)


def _parse_record(text: str) -> DmarcRecord:
    tags = parse_tag_list(text, fold_names=True)  # RFC 7489 §6.4 tag names are case-insensitive
    problems = list(tags.problems)
    if not tags.tags or tags.tags[0] != ("v", "DMARC1"):
        problems.append("the record must start with v=DMARC1")  # RFC 7489 §6.3: v is required and first
    value = tags.get
    policy = _choice("p", value("p"), POLICIES, problems)
    if value("p") is None:
        problems.append("p= is missing (required in a policy record, RFC 7489 §6.3)")
    subdomain_policy = _choice("sp", value("sp"), POLICIES, problems)
    policy_valid = policy is not None and (value("sp") is None or subdomain_policy is not None)
    # RFC 7489 §6.4: dmarc-percent = "pct" *WSP "=" *WSP 1*3DIGIT, 0 to 100.
    pct = _number("pct", value("pct") or "100", 3, 100, problems)
    ri = _number("ri", value("ri") or "86400", 10, _RI_MAX, problems)
    fo = _list("fo", value("fo") or "0", _FO_OPTIONS, problems)
    rf = _list("rf", value("rf") or "afrf", _REPORT_FORMATS, problems)
    return DmarcRecord(
        tags=tags,
        policy=policy,
        subdomain_policy=subdomain_policy,
        pct=100 if pct is None else pct,
        rua=_parse_uris("rua", value("rua") or "", problems) if value("rua") is not None else (),
        ruf=_parse_uris("ruf", value("ruf") or "", problems) if value("ruf") is not None else (),
        adkim=_choice("adkim", value("adkim"), ("r", "s"), problems) or "r",
        aspf=_choice("aspf", value("aspf"), ("r", "s"), problems) or "r",
        fo=fo or ("0",),
        rf=rf or ("afrf",),
        ri=86400 if ri is None else ri,
        policy_valid=policy_valid,
        problems=tuple(problems[:_MAX_PROBLEMS]) + ((f"… and {len(problems) - _MAX_PROBLEMS} more problems",)
                                                     if len(problems) > _MAX_PROBLEMS else ()),
    )


_parse_record_cached = functools.lru_cache(maxsize=1024)(_parse_record)


def _uri_text(uris: tuple[ReportUri, ...]) -> str | None:
    """A rua/ruf value from parsed URIs."""
    return ",".join(u.uri + (f"!{u.size_limit}" if u.size_limit else "") for u in uris) or None


def rewrite_record(record: DmarcRecord, changes: Mapping[str, str | None]) -> str:
    """The record re-rendered from its valid values with ``changes`` applied (None drops a tag).

    v and p come first, the other tags the record set follow in its order, unknown tags are dropped.
    """
    values: dict[str, str | None] = {
        "p": record.policy or record.applied_policy or "none",
        "sp": record.subdomain_policy,
        "pct": str(record.pct),
        "rua": _uri_text(record.rua),
        "ruf": _uri_text(record.ruf),
        "adkim": record.adkim,
        "aspf": record.aspf,
        "fo": ":".join(record.fo),
        "rf": ":".join(record.rf),
        "ri": str(record.ri),
    }
    wanted = {"p": values["p"], **{name: values[name] for name in record.tags.names if name in values}}
    wanted.update(changes)
    return "; ".join(["v=DMARC1"] + [f"{name}={value}" for name, value in wanted.items() if value is not None])


def report_domains(records: Iterable[str]) -> tuple[str, ...]:
    """The distinct mailto: destination domains of the DMARC records among ``records``."""
    found: dict[str, None] = {}
    for text in records:
        if is_dmarc_record(text):
            found.update(dict.fromkeys(parse_dmarc_record(text).mailto_domains))
    return tuple(found)
