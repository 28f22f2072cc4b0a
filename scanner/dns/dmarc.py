"""DMARC records by RFC 9989 (§5.3 tags, §5.4 grammar) with the RFC 7489 view where receivers still differ, and
policy and Organizational Domain discovery by the DNS tree walk (RFC 9989 §4.10): pure functions, no DNS."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from scanner.dns.dkim import CACHED_TEXT, TagList, parse_tag_list, shown
from scanner.model import DnsAnswer, Outcome

# RFC 9989 §5.4 (as RFC 7489 §6.4): dmarc-version = "v" equals %s"DMARC1" (the value is case-sensitive).
_DMARC_VERSION = re.compile(r"^\s*[vV]\s*=\s*DMARC1\s*(;|$)")
POLICIES = ("none", "quarantine", "reject")
"""RFC 9989 §5.4 dmarc-request (p=, sp=, np=), from weakest to strongest."""
TREE_WALK_LIMIT = 8
"""RFC 9989 §4.10: a name of 8 or more labels is cut to 7 after the first query, so a walk asks at most 8."""
# RFC 7489 §6.4: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ].
_SIZE_LIMIT = re.compile(r"^[0-9]+[kmgt]?$", re.IGNORECASE)
# RFC 3986 §3.1 scheme, then only characters a URI may hold (RFC 3986 §2).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
# RFC 6068 §2 with RFC 5322 §3.2.3 atext (percent-encoding allowed): the local part of a mailto: address.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$&'*+\-/=?^_`{|}~.%]+$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FO_OPTIONS = ("0", "1", "d", "s")
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
    """A parsed DMARC policy record; unset tags hold their RFC 9989 §5.3 defaults.

    rf= and ri= (removed by RFC 9989) and unknown tags are ignored (RFC 9989 §5.3: "unknown tags MUST be
    ignored"); pct= is kept because RFC 7489 receivers still apply it (RFC 9989 receivers ignore it).
    """

    tags: TagList
    policy: str | None = None
    subdomain_policy: str | None = None
    nonexistent_policy: str | None = None
    pct: int = 100
    rua: tuple[ReportUri, ...] = ()
    ruf: tuple[ReportUri, ...] = ()
    adkim: str = "r"
    aspf: str = "r"
    fo: tuple[str, ...] = ("0",)
    testing: bool = False
    psd: str = "u"
    policy_valid: bool = False
    problems: tuple[str, ...] = ()

    @property
    def applied_policy(self) -> str | None:
        """The policy a receiver applies to the domain itself; None when it applies no DMARC at all."""
        if self.policy_valid:
            return self.policy or "none"  # RFC 9989 §5.3 p: a record without p= is treated as p=none
        # RFC 9989 §4.11: an invalid p, sp or np: p=none if a rua URI is valid, else no DMARC processing.
        return "none" if self.rua else None

    @property
    def applied_subdomain_policy(self) -> str | None:
        """The policy a receiver applies to existing subdomains (sp, defaulting to p; RFC 9989 §4.11)."""
        if not self.policy_valid:
            return self.applied_policy
        return self.subdomain_policy or self.applied_policy

    @property
    def applied_nonexistent_policy(self) -> str | None:
        """The policy applied to subdomains that do not exist (np, else sp, else p; RFC 9989 §5.3 np)."""
        if not self.policy_valid:
            return self.applied_policy
        return self.nonexistent_policy or self.applied_subdomain_policy

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
    tags = parse_tag_list(text, fold_names=True)  # tag names compare without case (RFC 5234 §2.3)
    problems = list(tags.problems)
    if not tags.tags or tags.tags[0] != ("v", "DMARC1"):
        problems.append("the record must start with v=DMARC1")  # RFC 9989 §5.3: v is required and first
    value = tags.get
    policy = _choice("p", value("p"), POLICIES, problems)
    subdomain_policy = _choice("sp", value("sp"), POLICIES, problems)
    nonexistent_policy = _choice("np", value("np"), POLICIES, problems)
    # RFC 9989 §4.11: an invalid p, sp or np voids the policy; an absent p is p=none (§5.3), no longer an error.
    policy_valid = all(value(tag) is None or parsed is not None
                       for tag, parsed in (("p", policy), ("sp", subdomain_policy), ("np", nonexistent_policy)))
    # RFC 7489 §6.4: dmarc-percent = "pct" *WSP "=" *WSP 1*3DIGIT, 0 to 100 (RFC 9989 removed pct).
    pct = _number("pct", value("pct") or "100", 3, 100, problems)
    fo = _list("fo", value("fo") or "0", _FO_OPTIONS, problems)
    return DmarcRecord(
        tags=tags,
        policy=policy,
        subdomain_policy=subdomain_policy,
        nonexistent_policy=nonexistent_policy,
        pct=100 if pct is None else pct,
        rua=_parse_uris("rua", value("rua") or "", problems) if value("rua") is not None else (),
        ruf=_parse_uris("ruf", value("ruf") or "", problems) if value("ruf") is not None else (),
        adkim=_choice("adkim", value("adkim"), ("r", "s"), problems) or "r",
        aspf=_choice("aspf", value("aspf"), ("r", "s"), problems) or "r",
        fo=fo or ("0",),
        testing=_choice("t", value("t"), ("y", "n"), problems) == "y",
        psd=_choice("psd", value("psd"), ("y", "n", "u"), problems) or "u",
        policy_valid=policy_valid,
        problems=tuple(problems[:_MAX_PROBLEMS]) + ((f"… and {len(problems) - _MAX_PROBLEMS} more problems",)
                                                     if len(problems) > _MAX_PROBLEMS else ()),
    )


_parse_record_cached = functools.lru_cache(maxsize=1024)(_parse_record)


def _uri_text(uris: tuple[ReportUri, ...]) -> str | None:
    """A rua/ruf value from parsed URIs."""
    return ",".join(u.uri + (f"!{u.size_limit}" if u.size_limit else "") for u in uris) or None


def rewrite_record(record: DmarcRecord, changes: Mapping[str, str | None]) -> str:
    """The record re-rendered, cross-version, from its valid values with ``changes`` applied (None drops a tag).

    ``v=DMARC1; p=...`` first, then explicit sp= and np= (so RFC 7489 and RFC 9989 receivers agree on
    subdomains), rua=, then the other tags the record set, in its order. pct= is dropped (RFC 9989 removed it;
    t=y is the trial), and so are rf=, ri= and unknown tags (ignored by RFC 9989 receivers).
    """
    values: dict[str, str | None] = {
        "p": record.policy or record.applied_policy or "none",
        "sp": record.subdomain_policy,
        "np": record.nonexistent_policy,
        "rua": _uri_text(record.rua),
        "ruf": _uri_text(record.ruf),
        "adkim": record.adkim,
        "aspf": record.aspf,
        "fo": ":".join(record.fo),
        "t": "y" if record.testing else None,
        "psd": record.psd if record.psd != "u" else None,
    }
    wanted = {name: values[name] for name in ("p", "sp", "np", "rua")}
    wanted.update({name: values[name] for name in record.tags.names if name in values and name not in wanted})
    wanted.update(changes)
    wanted["sp"] = wanted["sp"] or wanted["p"]  # RFC 9989 §4.11: absent sp means p; said explicitly
    wanted["np"] = wanted["np"] or wanted["sp"]  # RFC 9989 §5.3 np: absent np means sp
    return "; ".join(["v=DMARC1"] + [f"{name}={value}" for name, value in wanted.items() if value is not None])


def report_domains(records: Iterable[str]) -> tuple[str, ...]:
    """The distinct mailto: destination domains of the DMARC records among ``records``."""
    found: dict[str, None] = {}
    for text in records:
        if is_dmarc_record(text):
            found.update(dict.fromkeys(parse_dmarc_record(text).mailto_domains))
    return tuple(found)


def walk_targets(name: str) -> tuple[str, ...]:
    """The names the DNS tree walk asks after the domain itself, nearest first (RFC 9989 §4.10 steps 4-8).

    A name of fewer than 8 labels loses one label per step; a longer one is first cut to its last 7, so a
    walk asks at most 8 names however deep the domain.
    """
    labels = name.lower().rstrip(".").split(".")
    targets = []
    while len(labels) > 1:
        labels = labels[-(TREE_WALK_LIMIT - 1):] if len(labels) >= TREE_WALK_LIMIT else labels[1:]
        targets.append(".".join(labels))
    return tuple(targets)


def single_record(answer: DnsAnswer | None) -> DmarcRecord | None:
    """The one DMARC record of an answer; None for none or several (RFC 9989 §4.10 step 2 discards them all)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return None
    texts = [r for r in answer.records if is_dmarc_record(r)]
    return parse_dmarc_record(texts[0]) if len(texts) == 1 else None


def walk_stops(record: DmarcRecord | None, first: bool) -> bool:
    """Whether the tree walk ends at this record: psd=n anywhere, psd=y above the start (RFC 9989 §4.10 steps 2, 7)."""
    return record is not None and (record.psd == "n" or (record.psd == "y" and not first))


@dataclass(frozen=True, slots=True)
class Discovery:
    """What the DNS tree walk from one domain found (RFC 9989 §4.10-§4.12).

    ``found`` holds the names with exactly one DMARC record, nearest first. ``walk_failed`` is the first
    lookup of the walk above the domain that failed: the Organizational Domain (and a policy inherited
    from above) is then unknown. ``org_domain`` is None exactly when it is unknown.
    """

    domain: str
    asked: tuple[str, ...]
    found: tuple[tuple[str, DmarcRecord], ...]
    walk_failed: DnsAnswer | None
    org_domain: str | None
    org_reason: str

    def record_at(self, name: str | None) -> DmarcRecord | None:
        """The single DMARC record the walk found at ``name``, if any."""
        return next((r for n, r in self.found if n == name), None)

    @property
    def psd(self) -> tuple[str, DmarcRecord] | None:
        """The Public Suffix Domain's record (psd=y) the walk found above the domain, if any."""
        return next(((n, r) for n, r in self.found if r.psd == "y" and n != self.domain), None)

    @property
    def policy(self) -> tuple[str, DmarcRecord, str] | None:
        """Where the policy applied to the domain's own mail lives, the record, and how it was found: ``own``,
        ``org`` (the Organizational Domain's) or ``psd`` (the Public Suffix Domain's), RFC 9989 §4.11; None
        when no record applies (or, with ``walk_failed`` and no own record, when it is unknown)."""
        own = self.record_at(self.domain)
        if own is not None:
            return self.domain, own, "own"
        if self.org_domain is None:
            return None
        org = self.record_at(self.org_domain)
        if org is not None:
            return self.org_domain, org, "org"
        psd = self.psd
        return (psd[0], psd[1], "psd") if psd is not None else None

    @property
    def subdomain_policy(self) -> tuple[str, DmarcRecord, str] | None:
        """Where the policy applied to the domain's subdomains without a record of their own lives (their walk
        meets this domain, then its Organizational Domain): the Organizational Domain's record (or this domain's
        when it is its own Organizational Domain), else the PSD's; RFC 9989 §4.11, §4.12."""
        if self.org_domain is None:
            return None
        own = self.record_at(self.domain)
        if own is not None and (own.psd == "n" or self.org_domain == self.domain):
            return self.domain, own, "own"
        org = self.record_at(self.org_domain)
        if org is not None:
            return self.org_domain, org, "org"
        psd = self.psd
        return (psd[0], psd[1], "psd") if psd is not None else None


def discover(domain: str, answer_at: Callable[[str], DnsAnswer | None]) -> Discovery:
    """Walk the tree from ``domain`` through the answers collected for ``_dmarc.<name>`` (``answer_at(name)``).

    The Organizational Domain is chosen from the records found, longest name first (RFC 9989 §4.12): psd=n
    names itself, psd=y (above the start) names the domain one label below it, else the record with the
    fewest labels; with no record at all, the domain is its own Organizational Domain.
    """
    asked: list[str] = []
    found: list[tuple[str, DmarcRecord]] = []
    failed: DnsAnswer | None = None
    for index, name in enumerate((domain, *walk_targets(domain))):
        answer = answer_at(name)
        if answer is None:
            break  # not asked: collection stopped where the walk stops
        asked.append(name)
        if answer.failed:
            if index:
                failed = answer
            break
        record = single_record(answer)
        if record is not None:
            found.append((name, record))
        if walk_stops(record, first=index == 0):
            break
    if failed is not None:
        return Discovery(domain, tuple(asked), tuple(found), failed, None,
                         f"the tree walk could not read _dmarc.{failed.name.removeprefix('_dmarc.')}: {failed.error}")
    org, reason = domain, "no DMARC record on the way up: the domain is its own Organizational Domain"
    for name, record in found:
        if record.psd == "n":
            org, reason = name, f"_dmarc.{name} says psd=n (RFC 9989 §4.12 rule 1)"
            break
        if record.psd == "y" and name != domain:
            org = ".".join(domain.split(".")[-(name.count(".") + 2):])
            reason = f"_dmarc.{name} says psd=y, so the Organizational Domain is one label below it (RFC 9989 §4.12 rule 2)"
            break
    else:
        if found:
            org = found[-1][0]
            reason = f"_dmarc.{org} is the record with the fewest labels on the way up (RFC 9989 §4.12 rule 3)"
    return Discovery(domain, tuple(asked), tuple(found), None, org, reason)

