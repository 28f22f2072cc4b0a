"""SPF checks (RFC 7208) over the recursive evaluation collected in DnsFacts.spf."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from typing import Any

from checks.registry import Result, RunContext, check
from scanner.model import Domain, Outcome, Scope, Severity
from scanner.dns.spf import (
    LOOKUP_LIMIT,
    VOID_LIMIT,
    SpfEvaluation,
    SpfNode,
    parse_record,
    render_record,
)

_TXT_STRING = 255  # RFC 1035 §3.3.14: one character-string holds at most 255 octets
# A hostile record can name thousands of includes; past this many, the rest are reported together.
_MAX_ITEMS = 50


def _txt(name: str, record: str) -> str:
    """A TXT record in zone-file form, split into 255-octet strings (RFC 7208 §3.3)."""
    escaped = [record[i : i + _TXT_STRING] for i in range(0, len(record), _TXT_STRING)] or [""]
    strings = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in escaped)
    return f"{name}. TXT {strings}"


def _evaluation(domain: Domain) -> SpfEvaluation | Result:
    """The domain's SPF evaluation, or the result to give when there is no single policy to judge."""
    spf = domain.dns.spf
    if spf is None:
        return Result.error(f"SPF was not evaluated for {domain.name}")
    if spf.tree is not None and spf.tree.failure:
        return Result.error(spf.tree.failure)
    if len(spf.records) > 1:
        return Result.error(
            f"{domain.name} publishes {len(spf.records)} SPF records, so receivers stop with permerror before "
            "evaluating any (RFC 7208 §4.5): see spf.multiple"
        )
    return spf


def _no_record(spf: SpfEvaluation) -> Result | None:
    """A pass for a domain without an SPF record (spf.missing judges that), else None."""
    if spf.record is None:
        return Result.passed(record=None, note="no SPF record: spf.missing judges this domain")
    return None


def _declared_patterns(ctx: RunContext) -> dict[str, tuple[str, ...]]:
    """The SPF include patterns of each sender the tenant declares."""
    return {name: ctx.senders[name].spf_include for name in ctx.tenant.senders if name in ctx.senders}


def _sender_of(target: str, patterns: dict[str, tuple[str, ...]]) -> str | None:
    for name, globs in patterns.items():
        if any(fnmatch.fnmatchcase(target, g.lower().rstrip(".")) for g in globs):
            return name
    return None


def _owned(domain: Domain, ctx: RunContext, name: str) -> bool:
    return name == domain.name or ctx.tenant.owns(name)


def _chain(tree: SpfNode, path: tuple[str, ...]) -> list[SpfNode]:
    """The nodes along a path of record names from the root."""
    nodes = [tree]
    for name in path[1:]:
        following = next((c for c in nodes[-1].children if c.domain == name), None)
        if following is None:
            break
        nodes.append(following)
    return nodes


class _Edits:
    """Changes to the records under the tenant's control, rendered as the records to publish."""

    def __init__(self, domain: Domain, ctx: RunContext, tree: SpfNode) -> None:
        self.domain, self.ctx, self.tree = domain, ctx, tree
        self.drop: dict[str, set[str]] = {}
        self.replace: dict[str, dict[str, str]] = {}
        self.append: dict[str, list[str]] = {}
        self.nodes: dict[str, SpfNode] = {}

    def _at(self, node: SpfNode) -> str:
        self.nodes.setdefault(node.domain, node)
        return node.domain

    def remove(self, path: tuple[str, ...], term: str = "") -> None:
        """Remove ``term`` from the record at the end of ``path``; with no term, the include leading there.

        A record the tenant does not control is left alone: the include that reaches it is removed instead.
        """
        nodes = _chain(self.tree, path)
        last = len(nodes) - 1
        if not term:
            if last == 0:
                return
            term, last = nodes[last].term, last - 1
        for depth in range(last, -1, -1):
            node = nodes[depth]
            if depth == 0 or _owned(self.domain, self.ctx, node.domain):
                self.drop.setdefault(self._at(node), set()).add(term if depth == last else nodes[depth + 1].term)
                return

    def rewrite(self, path: tuple[str, ...]) -> None:
        """Render the record at the end of ``path`` again (dropping duplicate modifiers), or drop its include."""
        nodes = _chain(self.tree, path)
        if len(nodes) == 1 or _owned(self.domain, self.ctx, nodes[-1].domain):
            self._at(nodes[-1])
        else:
            self.remove(path)

    def substitute(self, node: SpfNode, old: str, new: str) -> None:
        """Replace one term of a record."""
        self.replace.setdefault(self._at(node), {})[old] = new

    def add(self, node: SpfNode, term: str) -> None:
        """Append a term to a record."""
        self.append.setdefault(self._at(node), []).append(term)

    def record(self, name: str) -> str:
        """The record at ``name`` with the edits applied (duplicate redirect=/exp= dropped, §6)."""
        node = self.nodes[name]
        terms = node.terms
        kept: list[str] = []
        seen_modifiers: set[str] = set()
        for term in terms:
            if term.text in self.drop.get(name, set()):
                continue
            if term.name in ("redirect", "exp") and "=" in term.text:
                if term.name in seen_modifiers:
                    continue
                seen_modifiers.add(term.name)
            kept.append(self.replace.get(name, {}).get(term.text, term.text))
        kept += [t for t in self.append.get(name, []) if t not in kept]
        return render_record(kept)

    def publish(self) -> str:
        """Every changed record, one per line, the checked domain first."""
        names = sorted(self.nodes, key=lambda n: (n != self.domain.name, n))
        return "\n".join(_txt(n, self.record(n)) for n in names)


def _seen(spf: SpfEvaluation) -> dict[str, Any]:
    return {"record": spf.record, "looked_up": spf.domain}


def _tree(node: SpfNode) -> dict[str, object]:
    """The include tree as plain data for evidence."""
    out: dict[str, object] = {"domain": node.domain, "record": node.record}
    if node.via:
        out["via"] = node.term
    if node.failure:
        out["failure"] = node.failure
    if node.children:
        out["includes"] = [_tree(c) for c in node.children]
    return out


def _suggested_new(domain: Domain, ctx: RunContext) -> str:
    if domain.parked or domain.name in ctx.tenant.parked_domains:
        return render_record(["-all"])  # RFC 7208 §10.1.2: a domain that sends no mail says so
    includes = []
    for pattern in (p for patterns in _declared_patterns(ctx).values() for p in patterns[:1]):
        if not any(c in pattern for c in "*?["):
            includes.append(f"include:{pattern}")
    mx = domain.dns.get("mx")
    if not includes and mx is not None and mx.outcome is Outcome.ANSWER:
        includes.append("mx")
    return render_record([*includes, "-all"])


@check(
    id="spf.missing",
    title="Domain publishes no SPF record",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "Without SPF, receivers cannot tell which hosts may use the domain as envelope sender, and a domain "
        "that sends no mail cannot say so."
    ),
    references=("RFC 7208 §4.5", "RFC 7208 §10.1.2"),
)
def spf_missing(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the apex publishes no v=spf1 TXT record."""
    txt = domain.dns.get("txt")
    assert txt is not None  # the evaluate stage only calls a check whose required facts exist
    spf = domain.dns.spf
    records = spf.records if spf is not None else ()
    if records:
        return Result.passed(record=records[0], looked_up=txt.name)
    return Result.failed(
        looked_up=txt.name,
        outcome=txt.outcome.value,
        records_seen=list(txt.records),
        publish=_txt(domain.name, _suggested_new(domain, ctx)),
    )


@check(
    id="spf.multiple",
    title="Domain publishes more than one SPF record",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale="With two v=spf1 records every receiver returns permerror, so SPF fails for all of the domain's mail.",
    references=("RFC 7208 §4.5", "RFC 7208 §3.2"),
)
def spf_multiple(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the apex publishes more than one v=spf1 record; publish them merged."""
    spf = domain.dns.spf
    if spf is None:
        return Result.error(f"SPF was not evaluated for {domain.name}")
    if len(spf.records) <= 1:
        return Result.passed(records=list(spf.records))
    terms: list[str] = []
    alls: list[str] = []
    for record in spf.records:
        for term in parse_record(record)[0]:
            if term.name == "all" and term.kind == "mechanism":
                alls.append(term.qualifier)
            elif term.kind == "mechanism" and term.text not in terms:
                terms.append(term.text)
    final = "-all" if "-" in alls or not alls else "~all"
    return Result.failed(
        looked_up=spf.domain,
        records_seen=list(spf.records),
        publish=_txt(domain.name, render_record([*terms, final])),
    )


@check(
    id="spf.syntax",
    title="SPF policy has a syntax error or a broken reference",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "A syntax error anywhere in the record, or an include or redirect to a name without exactly one SPF "
        "record, makes receivers return permerror for every message."
    ),
    references=("RFC 7208 §4.6", "RFC 7208 §5.2", "RFC 7208 §6.1", "RFC 7208 §7.1", "RFC 7208 §12"),
    rests_on=("spf.multiple",),
)
def spf_syntax(domain: Domain, ctx: RunContext) -> Result:
    """Fail on any syntax error or broken include/redirect target in the evaluated tree."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return spf
    if (none := _no_record(spf)) is not None:
        return none
    broken = spf.kinds("syntax", "reference")
    if broken:
        assert spf.tree is not None
        edits = _Edits(domain, ctx, spf.tree)
        for problem in broken:
            if problem.term:
                edits.remove(problem.path, problem.term)
            else:
                edits.rewrite(problem.path)
        return Result.failed(**_seen(spf), problems=[p.message for p in broken], publish=edits.publish())
    if spf.incomplete:
        return Result.error("; ".join(spf.incomplete))
    return Result.passed(**_seen(spf))


def _flatten(node: SpfNode) -> list[str] | None:
    """The ip4/ip6 terms an include stands for, when it holds only those (and pass includes of such)."""
    if node.record is None or node.failure or node.unresolved or node.problems:
        return None
    out: list[str] = []
    for term in node.terms:
        if term.kind == "modifier":
            continue
        if term.kind != "mechanism" or term.qualifier != "+":
            if term.name == "all" and term.qualifier in "-~?":
                break
            return None
        if term.name in ("ip4", "ip6"):
            out.append(term.text.lstrip("+"))
        elif term.name == "include":
            child = next((c for c in node.children if c.term == term.text), None)
            inner = _flatten(child) if child is not None else None
            if inner is None:
                return None
            out += inner
        else:
            return None
    return out


def _subtree_lookups(node: SpfNode) -> int:
    return sum(n.lookups for n, _ in node.walk())


@check(
    id="spf.too_many_lookups",
    title="SPF policy needs more than 10 DNS lookups",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "Receivers stop after 10 DNS-querying terms (or 10 MX names, or an include loop) and return permerror, "
        "so SPF fails for legitimate mail; it usually creeps in when a provider is added or changes its record."
    ),
    references=("RFC 7208 §4.6.4",),
    rests_on=("spf.multiple",),
)
def spf_too_many_lookups(domain: Domain, ctx: RunContext) -> Result:
    """Fail over 10 DNS-querying terms, on include/redirect loops and on mx names over 10."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return spf
    if (none := _no_record(spf)) is not None:
        return none
    limits = spf.kinds("loop", "mx_limit", "stopped")
    if spf.lookups <= LOOKUP_LIMIT and not limits:
        mx_failures = [f for f in spf.failures if f.startswith("MX ")]
        if spf.record_failures or mx_failures:
            return Result.error("; ".join(spf.record_failures + tuple(mx_failures)))
        return Result.passed(**_seen(spf), lookups=spf.lookups, limit=LOOKUP_LIMIT)
    assert spf.tree is not None
    edits = _Edits(domain, ctx, spf.tree)
    for problem in limits:
        edits.remove(problem.path, problem.term)
    for ptr in spf.ptr_terms:
        where, _, term = ptr.partition(": ")
        path = next((p for n, p in spf.tree.walk() if n.domain == where), (where,))
        edits.remove(path, term)
    remaining = spf.lookups - len(spf.ptr_terms)
    flattened: list[str] = []
    # Replace the costliest includes that stand only for address ranges by those ranges.
    candidates = sorted((c for c in spf.tree.children if c.via == "include" and c.qualifier == "+"),
                        key=_subtree_lookups, reverse=True)
    for child in candidates:
        if remaining <= LOOKUP_LIMIT:
            break
        ranges = _flatten(child)
        if ranges is None:
            continue
        edits.substitute(spf.tree, child.term, " ".join(ranges))
        remaining -= _subtree_lookups(child) + 1
        flattened.append(child.domain)
    evidence: dict[str, Any] = {
        **_seen(spf),
        "lookups": spf.lookups,
        "limit": LOOKUP_LIMIT,
        "problems": [p.message for p in limits],
        "include_tree": _tree(spf.tree),
        "publish": edits.publish() if edits.nodes else _txt(domain.name, spf.record or ""),
        "lookups_after_fix": max(remaining, 0),
    }
    if flattened:
        evidence["flattened"] = flattened
        evidence["note"] = "flattened ranges must be refreshed whenever the provider changes its record"
    if remaining > LOOKUP_LIMIT:
        evidence["note"] = "still over the limit after the changes: drop or split senders across subdomains"
    return Result.failed(**evidence)


@check(
    id="spf.void_lookups",
    title="SPF policy has more than 2 void DNS lookups",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "Terms that point at names with no records are wasted lookups; past two of them receivers return "
        "permerror. They usually name a retired host or provider."
    ),
    references=("RFC 7208 §4.6.4",),
    rests_on=("spf.multiple",),
)
def spf_void_lookups(domain: Domain, ctx: RunContext) -> Result:
    """Fail over 2 lookups that return NXDOMAIN or no answer."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return spf
    if (none := _no_record(spf)) is not None:
        return none
    if spf.void_lookups <= VOID_LIMIT:
        if spf.failures or spf.incomplete:
            return Result.error("; ".join(dict.fromkeys(spf.failures + spf.incomplete)))
        return Result.passed(**_seen(spf), void_lookups=spf.void_lookups, limit=VOID_LIMIT)
    assert spf.tree is not None
    edits = _Edits(domain, ctx, spf.tree)
    paths = {n.domain: p for n, p in spf.tree.walk()}
    for void in spf.void_terms:
        where, _, term = void.partition(": ")
        edits.remove(paths.get(where, (where,)), term)
    return Result.failed(**_seen(spf), void_lookups=spf.void_lookups, limit=VOID_LIMIT,
                         void_terms=list(spf.void_terms), publish=edits.publish())


def _open_includes(node: SpfNode, path: tuple[str, ...] = ()) -> Iterator[tuple[SpfNode, tuple[str, ...]]]:
    """Pass-qualified includes whose own policy ends in +all: they match every address (RFC 7208 §5.2)."""
    for child in node.children:
        if child.via == "include" and child.qualifier == "+":
            if child.all_qualifier == "+":
                yield child, path + (node.domain,)
            yield from _open_includes(child, path + (node.domain,))


@check(
    id="spf.permissive_all",
    title="SPF policy ends in +all or ?all",
    severity=Severity.HIGH,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "+all authorizes every host on the internet and ?all (or no all at all) asserts nothing, so the "
        "policy does not protect the domain from spoofing."
    ),
    references=("RFC 7208 §5.1", "RFC 7208 §4.7", "RFC 7208 §8"),
    rests_on=("spf.missing", "spf.multiple", "spf.syntax"),
)
def spf_permissive_all(domain: Domain, ctx: RunContext) -> Result:
    """Fail when the effective all (following redirect) is +all or ?all, absent, or an include passes all."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return spf
    if (none := _no_record(spf)) is not None:
        return none
    assert spf.tree is not None
    if spf.all_unknown:
        return Result.error(f"the redirect that holds the effective all could not be read: {spf.all_unknown}")
    open_includes = list(_open_includes(spf.tree))
    qualifier = spf.all_qualifier
    if qualifier in ("-", "~") and not open_includes:
        return Result.passed(**_seen(spf), all=f"{qualifier}all", all_published_at=spf.all_domain)
    edits = _Edits(domain, ctx, spf.tree)
    reasons = []
    if qualifier is None:
        reasons.append("no all mechanism: every other host gets the default neutral result (RFC 7208 §4.7)")
        edits.add(spf.tree, "-all")
    elif qualifier in ("+", "?"):
        reasons.append(f"the policy ends in {qualifier}all (published at {spf.all_domain})")
        holder = next(n for n, _ in spf.tree.walk() if n.domain == spf.all_domain)
        old = next(t.text for t in holder.terms if t.kind == "mechanism" and t.name == "all")
        if holder is spf.tree or _owned(domain, ctx, holder.domain):
            edits.substitute(holder, old, "-all")
        else:
            redirect = next(t.text for t in spf.tree.terms if t.kind == "modifier" and t.name == "redirect")
            edits.substitute(spf.tree, redirect, f"include:{spf.tree.redirect.domain if spf.tree.redirect else ''}")
            edits.add(spf.tree, "-all")
    for node, path in open_includes:
        reasons.append(f"{node.term} (from {path[-1]}) ends in +all, so it matches every host")
        edits.remove(path + (node.domain,))
    return Result.failed(**_seen(spf), all=f"{qualifier}all" if qualifier else None,
                         all_published_at=spf.all_domain, reasons=reasons, publish=edits.publish())


@check(
    id="spf.ptr",
    title="SPF policy uses the deprecated ptr mechanism",
    severity=Severity.LOW,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "ptr is slow, unreliable and puts load on the .arpa servers; RFC 7208 says it SHOULD NOT be published "
        "and some receivers skip it, so mail it was meant to authorize may fail."
    ),
    references=("RFC 7208 §5.5",),
    rests_on=("spf.multiple",),
)
def spf_ptr(domain: Domain, ctx: RunContext) -> Result:
    """Fail when any evaluated record in the tree uses ptr."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return spf
    if (none := _no_record(spf)) is not None:
        return none
    assert spf.tree is not None
    if spf.ptr_terms:
        edits = _Edits(domain, ctx, spf.tree)
        paths = {n.domain: p for n, p in spf.tree.walk()}
        for ptr in spf.ptr_terms:
            where, _, term = ptr.partition(": ")
            edits.remove(paths.get(where, (where,)), term)
        return Result.failed(**_seen(spf), ptr_terms=list(spf.ptr_terms), publish=edits.publish())
    if spf.incomplete:
        return Result.error("; ".join(spf.incomplete))
    return Result.passed(**_seen(spf))


def _sender_includes(domain: Domain, ctx: RunContext, node: SpfNode, declared: dict[str, tuple[str, ...]],
                     path: tuple[str, ...] = ()) -> Iterator[tuple[str, str, SpfNode | None, tuple[str, ...]]]:
    """(target, term, node, path) for each include and effective redirect in the tenant's own records.

    A record of the tenant's own (a subdomain it owns, not a declared sender's include) is followed; a
    sender's own sub-includes are the sender's business.
    """
    path = path + (node.domain,)
    redirect_in_effect = node.all_qualifier is None
    for term in node.terms:
        if not (term.kind == "mechanism" and term.name == "include"
                or term.kind == "modifier" and term.name == "redirect" and redirect_in_effect):
            continue
        child = next((c for c in node.children if c.term == term.text), None)
        target = child.domain if child is not None else term.value.lower().rstrip(".")
        if _owned(domain, ctx, target) and not _sender_of(target, declared):
            if child is not None and child.failure:
                yield target, term.text, child, path
            elif child is not None:
                yield from _sender_includes(domain, ctx, child, declared, path)
            continue  # the tenant's own record (or a loop back into it)
        yield target, term.text, child, path


@check(
    id="spf.undeclared_sender",
    title="SPF authorizes a sender the tenant has not declared",
    severity=Severity.MEDIUM,
    scope=Scope.DOMAIN,
    requires=("dns.spf",),
    rationale=(
        "Every include lets that service's customers send as the domain; one nobody declared is a forgotten "
        "provider or an unauthorized one."
    ),
    references=("RFC 7208 §5.2", "RFC 7208 §10.1"),
    rests_on=("spf.multiple",),
)
def spf_undeclared_sender(domain: Domain, ctx: RunContext) -> Iterable[Result]:
    """One result per include (or redirect) in the tenant's records: fail when no declared sender owns it."""
    spf = _evaluation(domain)
    if isinstance(spf, Result):
        return [spf]
    if (none := _no_record(spf)) is not None:
        return [none]
    assert spf.tree is not None
    declared = _declared_patterns(ctx)
    catalogue = {name: s.spf_include for name, s in ctx.senders.items()}
    results: list[Result] = []
    judged: set[str] = set()
    rest = _Edits(domain, ctx, spf.tree)
    for target, term, node, path in _sender_includes(domain, ctx, spf.tree, declared):
        if target in judged:
            continue
        if len(judged) >= _MAX_ITEMS:
            if _sender_of(target, declared) is None:
                rest.remove(path, term)
                judged.add(target)
            continue
        judged.add(target)
        if node is not None and node.failure and _owned(domain, ctx, target):
            results.append(Result.error(node.failure, item=target))
            continue
        sender = _sender_of(target, declared)
        if sender is not None:
            results.append(Result.passed(item=target, sender=sender, term=term, record_at=path[-1]))
            continue
        edits = _Edits(domain, ctx, spf.tree)
        edits.remove(path, term)
        evidence: dict[str, Any] = {**_seen(spf), "term": term, "record_at": path[-1],
                                       "declared_senders": sorted(declared), "publish": edits.publish()}
        known = _sender_of(target, catalogue)
        if known is not None:
            evidence["catalogue_sender"] = known
            evidence["or_declare"] = f"add {known!r} to the tenant's senders if it is meant to send"
        if "%" in term:
            evidence["note"] = "the target depends on the sender (macros), so no declared sender can vouch for it"
        results.append(Result.failed(item=target, **evidence))
    if rest.nodes:
        results.append(Result.failed(item="(more includes)", **_seen(spf), undeclared=len(judged) - _MAX_ITEMS,
                                     note=f"only the first {_MAX_ITEMS} includes are judged one by one",
                                     publish=rest.publish()))
    if not results:
        results.append(Result.passed(**_seen(spf), includes=[]))
    return results

