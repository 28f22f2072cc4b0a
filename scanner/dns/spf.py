"""SPF (RFC 7208): strict parsing of published records and their recursive, record-level evaluation.

The evaluation judges the published policy, not one connection: there is no client IP and no sender, so
``ptr`` is counted but not resolved, and targets whose macros need the sender (``%{i}``, ``%{l}``...) are
counted but not followed. Every DNS question goes through the run's DnsClient, so a provider's include
chain is asked once per run however many domains include it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from scanner.dns.dkim import CACHED_TEXT
from scanner.model import DnsAnswer, Outcome

if TYPE_CHECKING:
    import asyncio

    from scanner.dns.client import DnsClient

# RFC 7208 §4.6.4: at most 10 DNS-querying terms, 2 void lookups, 10 MX names per "mx".
LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10
# Hostile trees (64 KB records, wide include fans): stop following once this many DNS-querying terms
# were seen (far past the limit of 10, so the verdict is already certain) or this deep.
_LOOKUP_BUDGET = 50
_MAX_DEPTH = 12

DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_QUALIFIERS = "+-?~"
# RFC 7208 §4.5: "v=spf1" exactly, then a space or the end of the record (case-insensitive).
_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
# RFC 7208 §12: name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ), then "=".
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.DOTALL)
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4_NETWORK = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}\Z")
_DUAL_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?\Z", re.DOTALL)
_VISIBLE = re.compile(r"[\x21-\x7e]*")  # the characters a macro-string may hold literally (§7.1)
_MACRO_BODY = re.compile(r"([slodiphcrtvSLODIPHCRTV])([0-9]*)([rR]?)([.\-+,/_=]*)\Z")
_EXP_ONLY_LETTERS = "crt"
_SENDER_LETTERS = "slipvh"  # need the sender, the client IP or the HELO name: unknown to a record-level view


@dataclass(frozen=True, slots=True)
class SpfTerm:
    """One term of a record as parsed: a directive (qualifier + mechanism) or a modifier."""

    text: str
    kind: str  # "mechanism", "modifier" or "invalid"
    name: str = ""  # lowercase mechanism or modifier name
    qualifier: str = ""  # "+", "-", "?" or "~" for mechanisms
    value: str = ""  # the domain-spec, network or modifier value, without CIDR lengths
    error: str = ""

    @property
    def queries_dns(self) -> bool:
        """True for the mechanisms that count against the lookup limit (redirect is counted apart)."""
        return self.kind == "mechanism" and self.name in DNS_MECHANISMS


@dataclass(frozen=True, slots=True)
class SpfProblem:
    """Something in the published records that makes receivers return permerror."""

    kind: str  # "syntax", "reference", "loop", "mx_limit", "stopped"
    domain: str  # where the record is published
    term: str  # the term as written ("" for record-level problems)
    message: str
    path: tuple[str, ...] = ()  # record names from the checked domain down to ``domain``


@dataclass(frozen=True, slots=True)
class SpfNode:
    """One record reached while evaluating a domain's policy (the root, an include or a redirect target)."""

    domain: str
    via: str = ""  # "", "include" or "redirect"
    qualifier: str = "+"  # the include's qualifier
    term: str = ""  # the term that led here, as written
    record: str | None = None
    records: tuple[str, ...] = ()
    failure: str | None = None  # the TXT lookup of this record failed
    terms: tuple[SpfTerm, ...] = ()
    lookups: int = 0  # DNS-querying terms of this record that are evaluated (§4.6.4)
    voids: tuple[str, ...] = ()  # terms whose lookup came back empty (§4.6.4)
    term_failures: tuple[str, ...] = ()  # a/mx/exists lookups that failed
    unresolved: tuple[str, ...] = ()  # terms whose target needs the sender's data (macros)
    problems: tuple[SpfProblem, ...] = ()
    children: tuple[SpfNode, ...] = ()

    @property
    def all_qualifier(self) -> str | None:
        """The qualifier of this record's own first ``all``, if any."""
        for term in self.terms:
            if term.kind == "mechanism" and term.name == "all":
                return term.qualifier
        return None

    @property
    def redirect(self) -> SpfNode | None:
        """The redirect target's node, when the redirect is in effect and was followed."""
        return next((c for c in self.children if c.via == "redirect"), None)

    def walk(self) -> Iterator[tuple[SpfNode, tuple[str, ...]]]:
        """Every node of the tree with its path of record names, depth first, in term order."""
        stack: list[tuple[SpfNode, tuple[str, ...]]] = [(self, (self.domain,))]
        while stack:
            node, path = stack.pop()
            yield node, path
            stack.extend((c, path + (c.domain,)) for c in reversed(node.children))


@dataclass(frozen=True, slots=True)
class SpfEvaluation:
    """A domain's published SPF policy, evaluated recursively through include and redirect."""

    domain: str
    record: str | None  # the apex record, when exactly one is published
    records: tuple[str, ...]  # every v=spf1 record at the apex (§4.5)
    includes: tuple[str, ...]  # include and redirect targets reached, recursively, lowercase
    all_qualifier: str | None  # the effective all, following redirect
    lookups: int  # DNS-querying terms across the tree (§4.6.4)
    void_lookups: int
    problems: tuple[str, ...]  # readable messages, one per SpfProblem
    failure: str | None  # the first DNS failure that left the evaluation incomplete
    issues: tuple[SpfProblem, ...] = ()
    failures: tuple[str, ...] = ()  # every DNS failure, record fetches and term lookups alike
    record_failures: tuple[str, ...] = ()  # failures that hid a whole record (include/redirect target)
    all_domain: str | None = None  # where the effective all is published
    all_unknown: str | None = None  # the redirect chain to the effective all failed: why
    ptr_terms: tuple[str, ...] = ()  # "domain: term" for every evaluated ptr
    void_terms: tuple[str, ...] = ()  # "domain: term" for every void lookup
    unresolved: tuple[str, ...] = ()  # "domain: term" not followed because it needs the sender
    tree: SpfNode | None = None

    def kinds(self, *kinds: str) -> tuple[SpfProblem, ...]:
        """The problems of the given kinds."""
        return tuple(p for p in self.issues if p.kind in kinds)

    @property
    def incomplete(self) -> tuple[str, ...]:
        """Why part of the tree is unknown: failed record lookups, or the evaluation stopped early."""
        return self.record_failures + tuple(p.message for p in self.kinds("stopped"))


def spf_records(texts: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The SPF records among TXT strings (RFC 7208 §4.5): "v=spf1" then a space or the end."""
    return tuple(t for t in texts if _VERSION.match(t))


def _show(text: str, limit: int = 120) -> str:
    """A term or record for a message: control and non-ASCII characters escaped, long text cut."""
    shown = text.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in shown)
    return shown if len(shown) <= limit else shown[:limit] + "..."


# ---------------------------------------------------------------- parsing (RFC 7208 §12)


@dataclass(frozen=True, slots=True)
class _Macro:
    """One macro-expand of §7.1: a letter with its transformers and delimiters."""

    letter: str
    digits: int | None
    reverse: bool
    delimiters: str


def _macro_tokens(text: str, *, exp_letters: bool) -> list[str | _Macro] | str:
    """Tokens of a macro-string (§7.1): literals and macros; or an error message."""
    if "%" not in text and _VISIBLE.fullmatch(text):
        return list(text)  # no macro (only '%' starts one): every character is a literal
    tokens: list[str | _Macro] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "%":
            if not "\x21" <= char <= "\x7e":
                return f"character {_show(char)!s} is not allowed (printable ASCII only, RFC 7208 §7.1)"
            tokens.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following in ("%", "_", "-"):
            tokens.append({"%": "%", "_": " ", "-": "%20"}[following])
            i += 2
            continue
        if following != "{":
            return f"'%' must be followed by '{{', '%', '_' or '-' (RFC 7208 §7.1), not {_show(following or 'the end')}"
        end = text.find("}", i + 2)
        if end < 0:
            return "a macro '%{' is not closed (RFC 7208 §7.1)"
        body = _MACRO_BODY.match(text[i + 2 : end])
        if body is None:
            return f"invalid macro {_show(text[i:end + 1])} (RFC 7208 §7.1)"
        letter, digits, reverse, delimiters = body.groups()
        if letter.lower() in _EXP_ONLY_LETTERS and not exp_letters:
            return f"macro letter {letter!r} is only allowed in explanation text (RFC 7208 §7.3)"
        if digits and int(digits) == 0:
            return f"macro {_show(text[i:end + 1])} keeps zero labels (RFC 7208 §7.3)"
        tokens.append(_Macro(letter, int(digits) if digits else None, bool(reverse), delimiters))
        i = end + 1
    return tokens


def _domain_spec_error(spec: str) -> str:
    """Why a domain-spec breaks §7.1 (macro-string domain-end), or "" when it is valid."""
    if not spec:
        return "the domain is empty"
    tokens = _macro_tokens(spec, exp_letters=False)
    if isinstance(tokens, str):
        return tokens
    if spec.endswith(("%%", "%_", "%-")) or (tokens and isinstance(tokens[-1], _Macro)):
        return ""  # domain-end = macro-expand
    tail = spec[spec.rfind("}") + 1 :] if "%{" in spec else spec
    tail = tail[:-1] if tail.endswith(".") else tail
    if "." not in tail:
        return f"{_show(spec)} does not end in '.' and a top-level label (RFC 7208 §7.1)"
    if not _TOPLABEL.match(tail.rpartition(".")[2]):
        return f"{_show(spec)} ends in an invalid top-level label (RFC 7208 §7.1)"
    return ""


def _cidr_error(value: str | None, maximum: int, family: str) -> str:
    if value is None:
        return ""
    if (len(value) > 1 and value.startswith("0")) or int(value) > maximum:
        return f"{family} CIDR length /{value} is invalid (0 to {maximum}, no leading zero; RFC 7208 §5.6)"
    return ""


def _parse_mechanism(text: str) -> SpfTerm:
    qualifier = text[0] if text[0] in _QUALIFIERS else "+"
    body = text[1:] if text[0] in _QUALIFIERS else text
    name = re.split(r"[:/]", body, maxsplit=1)[0].lower()
    tail = body[len(name) :]

    def bad(why: str) -> SpfTerm:
        return SpfTerm(text, "invalid", name, qualifier, tail, why)

    if name not in _MECHANISMS:
        if not all("\x21" <= c <= "\x7e" for c in text):
            return bad("contains a character outside printable ASCII (RFC 7208 §3.1, §4.6.1)")
        return bad(f"{_show(name or body)!s} is not a mechanism (RFC 7208 §5) nor a modifier (name=value)")
    if name == "all":
        return SpfTerm(text, "mechanism", name, qualifier) if not tail else bad("'all' takes no argument (RFC 7208 §5.1)")
    if name in ("include", "exists"):
        if not tail.startswith(":"):
            return bad(f"'{name}' needs ':' and a domain (RFC 7208 §5.2, §5.7)")
        error = _domain_spec_error(tail[1:])
        return bad(error) if error else SpfTerm(text, "mechanism", name, qualifier, tail[1:])
    if name == "ptr":
        if tail and not tail.startswith(":"):
            return bad("'ptr' takes an optional ':domain' and no CIDR length (RFC 7208 §5.5)")
        error = _domain_spec_error(tail[1:]) if tail else ""
        return bad(error) if error else SpfTerm(text, "mechanism", name, qualifier, tail[1:])
    if name in ("a", "mx"):
        if tail and tail[0] not in ":/":
            return bad(f"unexpected text after '{name}' (RFC 7208 §5.3, §5.4)")
        split = _DUAL_CIDR.match(tail[1:] if tail.startswith(":") else tail)
        assert split is not None  # the pattern matches any text
        spec, cidr4, cidr6 = split.groups()
        if tail.startswith(":"):
            error = _domain_spec_error(spec)
        elif spec:
            error = f"invalid CIDR length {_show(tail)} (RFC 7208 §5.6: '/n' then '//n')"
        else:
            error = ""
        error = error or _cidr_error(cidr4, 32, "IPv4") or _cidr_error(cidr6, 128, "IPv6")
        return bad(error) if error else SpfTerm(text, "mechanism", name, qualifier, spec)
    # ip4 / ip6
    if not tail.startswith(":"):
        return bad(f"'{name}' needs ':' and a network (RFC 7208 §5.6)")
    network, _, cidr = tail[1:].partition("/")
    if cidr and not cidr.isdigit():
        return bad(f"invalid CIDR length {_show('/' + cidr)} (RFC 7208 §5.6)")
    if name == "ip4":
        if not _IP4_NETWORK.match(network):
            return bad(f"{_show(network)} is not a dotted-quad IPv4 address (RFC 7208 §5.6)")
        error = _cidr_error(cidr or None, 32, "IPv4")
    else:
        try:
            if not re.fullmatch(r"[0-9A-Fa-f:.]+", network):
                raise ValueError(network)
            ipaddress.IPv6Address(network)
        except ValueError:
            return bad(f"{_show(network)} is not an IPv6 address (RFC 7208 §5.6)")
        error = _cidr_error(cidr or None, 128, "IPv6")
    return bad(error) if error else SpfTerm(text, "mechanism", name, qualifier, network)


def parse_term(text: str) -> SpfTerm:
    """Parse one term by the ABNF of RFC 7208 §12."""
    modifier = _MODIFIER.match(text)
    if modifier is not None:
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            error = _domain_spec_error(value)
        else:
            tokens = _macro_tokens(value, exp_letters=True)
            error = tokens if isinstance(tokens, str) else ""
        if error:
            return SpfTerm(text, "invalid", name, "", value, error)
        return SpfTerm(text, "modifier", name, "", value)
    return _parse_mechanism(text)


def parse_record(record: str) -> tuple[tuple[SpfTerm, ...], tuple[str, ...]]:
    """The terms of an SPF record and record-level errors (duplicate redirect/exp)."""
    return _parse_record(record) if len(record) > CACHED_TEXT else _parse_record_cached(record)


def _parse_record(record: str) -> tuple[tuple[SpfTerm, ...], tuple[str, ...]]:
    body = record[len("v=spf1") :]
    # RFC 7208 §4.6.1: terms are separated by one or more spaces (SP only, not tabs or other controls).
    terms = tuple(parse_term(t) for t in body.split(" ") if t)
    errors = []
    for name in ("redirect", "exp"):
        count = sum(1 for t in terms if t.name == name and t.kind in ("modifier", "invalid") and "=" in t.text)
        if count > 1:
            errors.append(f"'{name}=' appears {count} times; it may appear once (RFC 7208 §6)")
    return terms, tuple(errors)


_parse_record_cached = functools.lru_cache(maxsize=1024)(_parse_record)


def render_record(terms: list[str] | tuple[str, ...]) -> str:
    """An SPF record from its terms."""
    return " ".join(("v=spf1", *terms))


# ---------------------------------------------------------------- target names (§7.3, §4.3)


def _expand(spec: str, domain: str, sender_domain: str) -> str | None:
    """The name a domain-spec names for this record, or None when it needs the sender's data."""
    tokens = _macro_tokens(spec, exp_letters=False)
    assert not isinstance(tokens, str)  # only valid terms are expanded
    parts: list[str] = []
    for token in tokens:
        if isinstance(token, str):
            parts.append(token)
            continue
        letter = token.letter.lower()
        if letter in _SENDER_LETTERS:
            return None
        value = domain if letter == "d" else sender_domain
        pieces = re.split("[" + re.escape(token.delimiters or ".") + "]", value)
        if token.reverse:
            pieces.reverse()
        if token.digits is not None:
            pieces = pieces[-token.digits :]
        expanded = ".".join(pieces)
        parts.append(quote(expanded, safe="-._~") if token.letter.isupper() else expanded)
    name = "".join(parts).rstrip(".")
    # RFC 7208 §7.3: a name over 253 characters loses labels from the left until it fits.
    while len(name) > 253 and "." in name:
        name = name.partition(".")[2]
    return name.lower()


def _name_error(name: str) -> str:
    """Why a target cannot be a DNS name (RFC 1035 §2.3.4), or ""."""
    if not name:
        return "is empty"
    for label in name.split("."):
        if not label:
            return "has an empty label"
        if len(label.encode("utf-8")) > 63:
            return "has a label longer than 63 octets"
    if len(name) > 253:
        return "is longer than 253 characters"
    return ""


# ---------------------------------------------------------------- evaluation


class _Walk:
    """One domain's evaluation: the shared DNS client, the checked domain and the hostile-tree budget."""

    def __init__(self, client: DnsClient, root: str) -> None:
        self.client = client
        self.root = root
        self.seen_lookups = 0
        self.stopped = False

    async def node(self, domain: str, path: tuple[str, ...], *, via: str = "", qualifier: str = "+",
                   term: str = "", answer: DnsAnswer | None = None) -> SpfNode:
        """Fetch, parse and follow one record."""
        import asyncio  # here, not at the top: the checks import this module only to parse (start-up time)

        if answer is None:
            answer = await self.client.ask(domain, "TXT")
        path = path + (domain,)
        base = SpfNode(domain, via, qualifier, term)
        if answer.failed:
            return _replace(base, failure=f"TXT lookup of {domain} failed: {answer.error}")
        records = spf_records(answer.records) if answer.outcome is Outcome.ANSWER else ()
        void = (term,) if via and answer.outcome in (Outcome.NXDOMAIN, Outcome.NODATA) else ()
        if len(records) != 1:
            problems: tuple[SpfProblem, ...] = ()
            if via:
                what = "no SPF record" if not records else f"{len(records)} SPF records"
                section = "§5.2" if via == "include" else "§6.1"
                problems = (SpfProblem("reference", path[-2], term,
                                       f"{path[-2]}: {_show(term)}: {domain} publishes {what} "
                                       f"(RFC 7208 {section}: permerror)", path[:-1]),)
            return _replace(base, records=records, voids=void, problems=problems)
        record = records[0]
        terms, record_errors = parse_record(record)
        problems_list = [SpfProblem("syntax", domain, "", f"{domain}: {e}", path) for e in record_errors]
        problems_list += [
            SpfProblem("syntax", domain, t.text, f"{domain}: {_show(t.text)!s}: {t.error}", path)
            for t in terms if t.kind == "invalid"
        ]
        # RFC 7208 §5.1: mechanisms after "all" are never tested; §6.1: redirect is ignored if "all" is present.
        first_all = next((i for i, t in enumerate(terms) if t.kind == "mechanism" and t.name == "all"), None)
        reachable = [t for t in terms[: (first_all + 1 if first_all is not None else len(terms))]
                     if t.kind == "mechanism"]
        redirect = next((t for t in terms if t.kind == "modifier" and t.name == "redirect"), None)
        if first_all is not None:
            redirect = None
        counted = [t for t in reachable if t.queries_dns] + ([redirect] if redirect else [])

        unresolved: list[str] = []
        lookups: list[tuple[SpfTerm, str, asyncio.Future[list[DnsAnswer]]]] = []
        children: list[asyncio.Future[SpfNode]] = []
        followed: dict[tuple[str, str, str], asyncio.Future[SpfNode]] = {}
        for t in counted:
            self.seen_lookups += 1
            if t.name == "ptr":
                continue  # needs the client's address: counted, not resolved
            target = _expand(t.value, domain, self.root) if t.value else domain
            if target is None:
                unresolved.append(t.text)
                continue
            error = _name_error(target)
            if error:
                problems_list.append(SpfProblem("reference", domain, t.text,
                                                f"{domain}: {_show(t.text)!s}: the target {_show(target)} {error}", path))
                continue
            if self.seen_lookups > _LOOKUP_BUDGET or len(path) > _MAX_DEPTH:
                if not self.stopped:
                    self.stopped = True
                    problems_list.append(SpfProblem(
                        "stopped", domain, t.text,
                        f"{domain}: evaluation stopped at {_show(t.text)!s}: over {_LOOKUP_BUDGET} DNS-querying "
                        f"terms or {_MAX_DEPTH} levels deep (RFC 7208 §4.6.4 allows {LOOKUP_LIMIT})", path))
                continue
            if t.name in ("include", "redirect"):
                if target in path:
                    problems_list.append(SpfProblem(
                        "loop", domain, t.text,
                        f"{domain}: {_show(t.text)!s} loops back to {target} "
                        f"({' -> '.join(path + (target,))}); receivers hit the lookup limit (RFC 7208 §4.6.4)", path))
                    continue
                via_name = "redirect" if t.name == "redirect" else "include"
                key = (via_name, t.qualifier, target)
                if key not in followed:
                    followed[key] = asyncio.ensure_future(
                        self.node(target, path, via=via_name, qualifier=t.qualifier or "+", term=t.text))
                children.append(followed[key])
            else:
                rdtypes = {"a": ("A", "AAAA"), "mx": ("MX",), "exists": ("A",)}[t.name]
                lookups.append((t, target, asyncio.ensure_future(
                    asyncio.gather(*(self.client.ask(target, r) for r in rdtypes)))))
        done_children = list(await asyncio.gather(*children))
        voids = list(void)
        term_failures: list[str] = []
        for t, target, future in lookups:
            answers = await future
            failed = [a for a in answers if a.failed]
            if any(a.outcome is Outcome.ANSWER for a in answers):
                if t.name == "mx":
                    names = [r for r in answers[0].records if r.split()[-1] != "."]
                    if len(names) > MX_LIMIT:
                        problems_list.append(SpfProblem(
                            "mx_limit", domain, t.text,
                            f"{domain}: {_show(t.text)!s}: {target} has {len(names)} MX names; "
                            f"more than {MX_LIMIT} is a permerror (RFC 7208 §4.6.4)", path))
            elif failed:
                term_failures += [f"{a.rdtype} lookup of {target} for {_show(t.text)} failed: {a.error}" for a in failed]
            else:
                voids.append(t.text)
        return SpfNode(domain, via, qualifier, term, record, records, None, terms, len(counted), tuple(voids),
                       tuple(term_failures), tuple(unresolved), tuple(problems_list), tuple(done_children))


def _replace(node: SpfNode, **changes: object) -> SpfNode:
    fields = {name: getattr(node, name) for name in node.__dataclass_fields__}
    fields.update(changes)
    return SpfNode(**fields)


async def evaluate_spf(client: DnsClient, domain: str, txt: DnsAnswer) -> SpfEvaluation:
    """Evaluate the SPF policy published at ``domain`` (its apex TXT answer already looked up)."""
    domain = domain.lower().rstrip(".")
    walk = _Walk(client, domain)
    root = await walk.node(domain, (), answer=txt)
    return summarize(domain, root)


def summarize(domain: str, root: SpfNode) -> SpfEvaluation:
    """Fold an evaluated tree into the facts the checks read."""
    nodes = list(root.walk())
    issues = tuple(p for n, _ in nodes for p in n.problems)
    record_failures = tuple(n.failure for n, _ in nodes if n.failure)
    failures = record_failures + tuple(f for n, _ in nodes for f in n.term_failures)
    includes = tuple(dict.fromkeys(n.domain for n, _ in nodes[1:]))
    all_qualifier, all_domain, all_unknown = None, None, None
    cursor: SpfNode | None = root
    while cursor is not None:
        if cursor.failure:
            all_unknown = cursor.failure
            break
        if cursor.all_qualifier is not None:
            all_qualifier, all_domain = cursor.all_qualifier, cursor.domain
            break
        cursor = cursor.redirect
    ptr = tuple(f"{n.domain}: {t.text}" for n, _ in nodes for t in _evaluated(n) if t.name == "ptr")
    return SpfEvaluation(
        domain=domain,
        record=root.record,
        records=root.records,
        includes=includes,
        all_qualifier=all_qualifier,
        lookups=sum(n.lookups for n, _ in nodes),
        void_lookups=sum(len(n.voids) for n, _ in nodes),
        problems=tuple(p.message for p in issues),
        failure=failures[0] if failures else None,
        issues=issues,
        failures=failures,
        record_failures=record_failures,
        all_domain=all_domain,
        all_unknown=all_unknown,
        ptr_terms=ptr,
        # A void include or redirect target is reported against the record that names it.
        void_terms=tuple(f"{path[-2] if n.record is None and n.via else n.domain}: {v}"
                         for n, path in nodes for v in n.voids),
        unresolved=tuple(f"{n.domain}: {u}" for n, _ in nodes for u in n.unresolved),
        tree=root,
    )


def _evaluated(node: SpfNode) -> list[SpfTerm]:
    """The mechanisms of a record that receivers evaluate: those up to the first ``all`` (§5.1)."""
    out = []
    for term in node.terms:
        if term.kind == "mechanism":
            out.append(term)
            if term.name == "all":
                break
    return out

