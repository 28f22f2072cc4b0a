"""report.html: one self-contained, escaped HTML file rendered from the store (no CDN, works from file://)."""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup

from checks.controls import load_catalogue
from checks.registry import RegistryError, Sender, load_checks
from reports.actions import ActionChange, action_change, link_signer, remediation_link
from reports.controls import ControlStatus, ControlTally, control_matrix, tenant_providers
from reports.dmarc_sources import senders_seen
from reports.rootcause import WEIGHTS, CauseIndex, Counts, FindingsNamed, among, postures
from remediation.links import Signer
from scanner.config import RemediationConfig
from scanner.model import Finding, Severity, Status
from scanner.aggregate.store import daily_traffic, latest_report_end, source_traffic
from scanner.store.database import PassCount, RunRecord, Store

TEMPLATES = Path(__file__).resolve().parent / "templates"
SHOWN = (Status.FAIL, Status.ERROR, Status.EXCEPTED, Status.UNSUPPORTED)
EMBEDDED = (Status.FAIL, Status.ERROR, Status.EXCEPTED, Status.UNSUPPORTED, Status.SKIPPED)
"""Statuses embedded finding by finding; passes are embedded as counts per check and domain."""
FIX_FIRST = 100
"""How many root causes the fix-first list renders (ten at first, the rest a click away)."""
TREND_RUNS = 12
"""How many runs (this one included) the trend chart shows."""
LISTED = 50
"""How many new and resolved findings the summary names before saying how many more."""
Snapshot = Mapping[tuple[str, str], Any] | Iterable[tuple[tuple[str, str], Any]]
"""A run's snapshot of one kind: the store's mapping, or its (kind, key) and body pairs in key order (``iter_snapshot``)."""
TABLE_PAGE = 50
"""Rows per page of the findings table (the page's script reads it from the data)."""
DOMAIN_MARK = "\x01"
"""Where a grouped finding's reason or evidence names its domain (report.js writes each member's domain there)."""
PLAIN_NAME = re.compile(r"(?:[a-z0-9-]+\.)+[a-z][a-z0-9-]*")
"""A domain name that can be templated in JSON text (``_templated``)."""
KEY = re.compile(r"[A-Za-z0-9+/]{100,}={0,2}")
"""A run of base64 as long as a public key (a DKIM record's ``p=``): the domain page shows its ends."""


def environment() -> jinja2.Environment:
    """The reports' jinja2 environment: autoescape on for every HTML template, strict about undefined names."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        # every value is escaped, whatever a TXT record or display name holds; .txt templates are plain text
        autoescape=jinja2.select_autoescape(disabled_extensions=("txt.j2",), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def script_json(value: object) -> Markup:
    """JSON safe inside a ``<script type="application/json">`` element.

    HTML §13.2.5 (script data states): ``</script`` ends the element and ``<!--`` changes how the
    parser reads on, so every ``<``, ``>`` and ``&`` is written as a JSON ``\\u`` escape; JSON.parse
    reads them back unchanged.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)  # noqa: S704 - escaped for the script-data context just above


def script_json_parts(value: Mapping[str, Any], size: int = 5000) -> Iterator[Markup]:
    """``script_json(value)`` in parts: each long list or mapping of ``value`` a few thousand entries at a time.

    The page's data is never one string; each part is whole JSON escaped as ``script_json`` escapes it
    (character by character, so the parts join into the same text).
    """
    yield Markup("{")
    for n, (key, item) in enumerate(value.items()):
        yield Markup("," if n else "") + script_json(key) + Markup(":")
        if isinstance(item, dict) and len(item) > size:
            entries = list(item.items())
            yield Markup("{")
            for at in range(0, len(entries), size):
                yield Markup("," if at else "") + script_json(dict(entries[at:at + size]))[1:-1]
            yield Markup("}")
        else:
            yield from _list_parts(item, size)
    yield Markup("}")


def _list_parts(value: Any, size: int) -> Iterator[Markup]:
    """``script_json(value)`` in parts: a long list ``size`` entries at a time; a list holding one (a group of
    the findings table with a column per finding: 120,000 mailboxes' ids) entry by entry."""
    if isinstance(value, list) and len(value) > size:
        yield Markup("[")
        for at in range(0, len(value), size):
            yield Markup("," if at else "") + script_json(value[at:at + size])[1:-1]
        yield Markup("]")
    elif isinstance(value, list) and any(isinstance(entry, list) and _holds_long(entry, size) for entry in value):
        yield Markup("[")
        for n, entry in enumerate(value):
            if n:
                yield Markup(",")
            yield from _list_parts(entry, size)
        yield Markup("]")
    else:
        yield script_json(value)


def _holds_long(value: list[Any], size: int) -> bool:
    return len(value) > size or any(isinstance(entry, list) and len(entry) > size for entry in value)


def _csp_hash(script: str) -> str:
    # CSP Level 3 §8.4: a 'sha256-…' source allows exactly the inline script with that text; anything
    # injected despite the escaping would not run.
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """One run's counts for the trend chart: open failures and errors, and new and resolved findings."""

    run_id: str
    started: str
    counts: Mapping[str, int]
    label: str = ""


VERDICTS = ("exception.expired", "exception.unknown_subject")
"""The checks that judge the exceptions themselves."""


def exception_rows(
    exceptions: Iterable[Mapping[str, Any]], findings: Sequence[Finding], run: RunRecord
) -> list[dict[str, Any]]:
    """Each exception of the run's snapshot with the findings it covers and whether it has ended.

    Whether it expired comes from the run's ``exception.expired`` finding for it (judged as of the
    run's evaluation date); without one, from its expiry date against the run's start.
    """
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    rows = []
    for exception in sorted(exceptions, key=lambda e: (str(e["check"]), str(e["subject"]))):
        key = f"{exception['check']}/{exception['subject']}"
        expires = date.fromisoformat(str(exception["expires"]))
        covered = [
            f for f in by_check.get(str(exception["check"]), ())
            if f.subject.lower() == str(exception["subject"]).lower()
        ]
        verdicts = {
            f.check: f for check in VERDICTS
            for f in by_check.get(check, ()) if f.item == key
        }
        expired_finding = verdicts.get("exception.expired")
        expired = (
            expired_finding.status in (Status.FAIL, Status.EXCEPTED)
            if expired_finding is not None
            else expires < run.started.date()
        )
        unknown = verdicts.get("exception.unknown_subject")
        rows.append({
            "check": exception["check"],
            "subject": exception["subject"],
            "reason": exception["reason"],
            "approved_by": exception["approved_by"],
            "expires": expires.isoformat(),
            "expired": expired,
            "unknown_subject": unknown is not None and unknown.status in (Status.FAIL, Status.EXCEPTED),
            "covers": [(f.status.value, f.subject, f.item) for f in covered],
        })
    return rows


def status_counts(findings: Iterable[Finding]) -> Counter[str]:
    """How many findings have each status."""
    return Counter(f.status.value for f in findings)


def earlier_runs(store: Store, run: RunRecord) -> list[RunRecord]:
    """The finished runs started before this one, oldest first."""
    return [r for r in store.runs() if r.started <= run.started and r.id != run.id
            and r.state in ("complete", "partial")]


def trend(store: Store, run: RunRecord, events: Mapping[str, Sequence[str]],
          counts: Counts | None = None, earlier: Sequence[RunRecord] | None = None,
          cache: dict[str, Counts] | None = None) -> list[TrendPoint]:
    """Open failures and errors (and new and resolved findings) per run, for the recent runs up to this one.

    Each earlier run costs two small queries (its counts by status, in SQL, and its lifecycle events),
    so the chart stays cheap however many findings earlier runs had. ``cache`` keeps each run's counts.
    """
    before = list(earlier if earlier is not None else earlier_runs(store, run))
    shown = before[-(TREND_RUNS - 1):]
    cache = {} if cache is None else cache
    for record in shown:
        if record.id not in cache:
            cache[record.id] = store.finding_counts(record.id)
    points = [_point(record, store.lifecycle_events(record.id), cache[record.id]) for record in shown]
    points.append(_point(run, events, counts or {}))
    first = len(before) - len(shown) + 1
    return [_labelled(p, first + i) for i, p in enumerate(points)]


def _labelled(point: TrendPoint, number: int) -> TrendPoint:
    """The point labelled with its run's number in the store and its start to the minute (two runs a day differ)."""
    return TrendPoint(point.run_id, point.started, point.counts,
                      f"run {number} · {point.started[5:16].replace('T', ' ')}")


def _point(run: RunRecord, events: Mapping[str, Sequence[str]], counts: Counts | None = None) -> TrendPoint:
    by_status: Counter[str] = Counter()
    for (_, status, _), n in (counts or {}).items():
        by_status[status] += n
    return TrendPoint(run.id, run.started.isoformat(), {
        "failing": by_status["fail"],
        "error": by_status["error"],
        "new": len(events.get("new", ())) + len(events.get("reopened", ())),
        "resolved": len(events.get("resolved", ())),
    })


TREND_SERIES = ("failing", "error")


def trend_svg(points: Sequence[TrendPoint], width: int = 640, height: int = 180) -> dict[str, Any]:
    """Polylines and dots (numbers only) for the chart of open failures and errors per run."""
    top = max([max((p.counts.get(s, 0) for s in TREND_SERIES), default=0) for p in points] + [1])
    left, bottom, right, upper = 44, height - 34, width - 16, 12
    step = (right - left) / max(len(points) - 1, 1)

    def xy(i: int, value: int) -> str:
        return f"{left + i * step:.1f},{bottom - (bottom - upper) * value / top:.1f}"

    shown = {0, len(points) - 1} if len(points) > 4 else set(range(len(points)))
    return {
        "width": width, "height": height, "left": left, "bottom": bottom, "right": right, "upper": upper,
        "top": top,
        "lines": [(s, " ".join(xy(i, p.counts.get(s, 0)) for i, p in enumerate(points))) for s in TREND_SERIES],
        "dots": [(s, [(xy(i, p.counts.get(s, 0)).split(","), p.counts.get(s, 0), p.label)
                      for i, p in enumerate(points)]) for s in TREND_SERIES],
        "labels": [(f"{left + i * step:.1f}", p.label.partition(" · ")[0], p.label.partition(" · ")[2], i)
                   for i, p in enumerate(points) if i in shown],
        "last": len(points) - 1,
    }


def _event_flags(events: Mapping[str, Sequence[str]]) -> dict[str, int]:
    flags = {fp: 1 for fp in events.get("new", ())}
    flags.update({fp: 2 for fp in events.get("reopened", ())})
    return flags


class PageData:
    """The findings and each domain's DNS as seen, compacted for the page's script (strings interned), gathered
    one finding at a time (``add``): what the page embeds of each finding is kept, the finding itself is not,
    so a report can read its findings from a cursor.

    Three shapes keep the page small at any size, each expanded by report.js into the same table rows
    (``table_rows``): ``findings`` holds whole rows; ``groups`` the findings alike but for their subject,
    item, cause, link and the domain their reason and evidence name (no action but publishing a record:
    the unsupported DMARC-report checks on thousands of domains, one DMARC fault on a thousand), once with
    a column per field that differs; ``passes`` counts passes per check, tenant and severity over gaps
    between domain numbers, made into rows only when the table is asked for passes (their evidence is in
    findings.json and the evidence pack). ``data``'s ``pass_counts`` (the store's) counts the passes that
    were not added.
    """

    def __init__(self, events: Mapping[str, Sequence[str]], signer: Signer | None = None) -> None:
        self._flags = _event_flags(events)
        self._signer = signer
        self._tenants: dict[str, int] = {}
        self._names: dict[str, int] = {}
        self._checks: dict[str, int] = {}
        self._titles: list[str] = []
        self._rows: list[list[Any]] = []
        self._alike: dict[tuple[Any, ...], _Alike] = {}
        self._passes: dict[tuple[int, int, int], Counter[int]] = {}
        self._seen: dict[str, str] = {}  # most findings of a run share their first seen: one text each
        self.subjects: dict[str, str] = {}
        """The subjects of the findings that are not passes (whose display names the page shows), each mapped to
        itself: the page's names are keyed by the strings its rows hold, not by a second copy of each."""

    def add(self, f: Finding, change: ActionChange | None) -> None:
        """Embed one finding (``change``: its ``action_change``; None for a pass)."""
        check_i = self._checks.setdefault(f.check, len(self._checks))
        if check_i == len(self._titles):
            self._titles.append(f.title)
        tenant_i = self._tenants.setdefault(f.tenant, len(self._tenants))
        domain_i = self._names.setdefault(f.domain, len(self._names))
        if f.status is Status.PASS:
            self._passes.setdefault((check_i, tenant_i, _SEVERITY_INDEX[f.severity]), Counter())[domain_i] += 1
            return
        self.subjects.setdefault(f.subject, f.subject)
        link = remediation_link(f, self._signer) if change else None
        first_seen = f.first_seen.isoformat() if f.first_seen else ""
        first_seen = self._seen.setdefault(first_seen, first_seen)
        flag = self._flags.get(f.id, 0)
        if change is None or change.action == "dns.publish":
            # the page shows a record to publish from the evidence (``publish``): the action's name says the rest
            shape = _shape(f.reason, f.evidence)
            templated = _templated(shape, f.domain)
            key = (check_i, _STATUS_INDEX[f.status], _SEVERITY_INDEX[f.severity], templated is not None,
                   templated or shape, first_seen, flag, change.action if change else None)
            alike = self._alike.get(key)
            if alike is None:
                alike = self._alike[key] = _Alike(f.reason, f.evidence)
            alike.add(f, tenant_i, domain_i, link)
            return
        self._rows.append([
            f.id, check_i, _STATUS_INDEX[f.status], _SEVERITY_INDEX[f.severity], tenant_i, domain_i,
            f.subject, f.item, f.reason, f.evidence, [change.action, change.summary, change.before, change.after],
            link, first_seen, flag, 1, f.caused_by,
        ])

    def data(
        self, domains: Snapshot, display_names: Mapping[str, str] | Iterable[tuple[str, str]],
        pass_counts: Sequence[PassCount] | None = None,
    ) -> dict[str, Any]:
        """The page's data, made once every finding is added: those findings, the passes counted (``pass_counts``)
        and the domains' DNS. ``display_names`` maps addresses to names, or is its (address, name) pairs (a later
        pair for an address wins, as in a mapping built from them)."""
        checks, titles, tenants, names, passes = self._checks, self._titles, self._tenants, self._names, self._passes
        rows = self._rows
        groups = []
        domain_names = list(names)
        for (check_i, status_i, severity_i, templated, shape, first_seen, flag, action), alike in self._alike.items():
            change = [action] if action else None
            if alike.one is not None:
                fingerprint, tenant_i, domain_i, subject, item, cause, link = alike.one
                rows.append([fingerprint, check_i, status_i, severity_i, tenant_i, domain_i,
                             domain_names[domain_i] if subject is None else subject, item, alike.reason,
                             alike.evidence, change, link, first_seen, flag, 1, cause])
                continue
            reason, evidence = json.loads(shape) if templated else (alike.reason, alike.evidence)
            ids, tenants_i, members, *columns = alike.columns or ()
            groups.append([check_i, status_i, severity_i, reason, evidence, templated, first_seen, flag, change,
                           ids, tenants_i, members, *[None if not any(column) else column for column in columns]])
        for check, title, tenant, severity, _, per_domain in _by_domain(pass_counts or ()):
            check_i = checks.setdefault(check, len(checks))
            if check_i == len(titles):
                titles.append(title)
            key = (check_i, tenants.setdefault(tenant, len(tenants)), _SEVERITY_INDEX[severity])
            counts = passes.get(key)
            if counts is None:
                counts = passes[key] = Counter()
            for domain, n in per_domain.items():
                counts[names.setdefault(domain, len(names))] += n
        dns, answers = _dns_view(domains, names, tenants)
        return {
            "names": self._names_shown(display_names),
            "statuses": [s.value for s in Status],
            "severities": [s.value for s in Severity],
            "tenants": list(tenants),
            "domains": list(names),
            "checks": [[c, t] for c, t in zip(checks, titles, strict=True)],
            "findings": rows,
            "groups": groups,
            "passes": [[*key, *_gaps(counts)] for key, counts in sorted(passes.items())],
            "answers": answers,
            "dns": dns,
            "history": False,
        }

    def _names_shown(self, display_names: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """The display names of the subjects added, keyed by the subjects' own strings."""
        pairs = display_names.items() if isinstance(display_names, Mapping) else display_names
        subjects = self.subjects
        names: dict[str, str] = {}
        for address, name in pairs:
            subject = subjects.get(address)
            if subject is not None and name:
                names[subject] = name
        return names


def _by_domain(pass_counts: Iterable[PassCount]) -> Iterator[PassCount]:
    """The store's pass counts (in order of check, tenant and severity) so that each check and tenant's domains
    come in code point order across its severities: a domain first named by the passes is numbered in that
    order. A check and tenant with passes at one severity (the common case) is given as it is."""
    for _, block in itertools.groupby(pass_counts, key=lambda c: (c.check, c.tenant)):
        groups = list(block)
        if len(groups) == 1:
            yield groups[0]
            continue
        for domain, i in sorted((domain, i) for i, group in enumerate(groups) for domain in group.domains):
            n = groups[i].domains[domain]
            yield groups[i]._replace(count=n, domains={domain: n})


_STATUS_INDEX = {s: i for i, s in enumerate(Status)}
_SEVERITY_INDEX = {s: i for i, s in enumerate(Severity)}


class _Alike:
    """Findings alike but for their subject, item, cause, link and domain: a group's columns, one entry each.

    A subject that is its finding's domain is None (the domain's own finding names no subject of its own);
    ``reason`` and ``evidence`` are the first finding's. Most groups at scale hold one finding: its entries are
    one tuple (``one``) until a second finding makes them columns."""

    __slots__ = ("reason", "evidence", "one", "columns")

    def __init__(self, reason: str, evidence: Any) -> None:
        self.reason, self.evidence = reason, evidence
        self.one: tuple[Any, ...] | None = None
        self.columns: list[list[Any]] | None = None

    def add(self, f: Finding, tenant_i: int, domain_i: int, link: str | None) -> None:
        """Add a finding's id, tenant, domain, subject, item, cause and link."""
        entries = (f.id, tenant_i, domain_i, f.subject if f.subject != f.domain else None, f.item, f.caused_by, link)
        if self.one is None and self.columns is None:
            self.one = entries
            return
        if self.columns is None:
            self.columns = [[entry] for entry in self.one or ()]
            self.one = None
        for column, entry in zip(self.columns, entries, strict=True):
            column.append(entry)


def _shape(reason: str, evidence: Any) -> str:
    """A finding's reason and evidence as JSON text, keys sorted: findings alike say the same text."""
    return _json_text((reason, evidence))


def _json_text(value: Any, *, sort: bool = True) -> str:
    """JSON text of a value (keys sorted when ``sort``), times and unknown values as their ``str``: a key for it.

    orjson encodes in a fraction of ``json.dumps``'s time; its bytes are decoded to text because they keep
    their encoding buffer (about a kilobyte each), and a report keeps a text per distinct DNS answer.
    """
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | (orjson.OPT_SORT_KEYS if sort else 0)
    return orjson.dumps(value, default=str, option=option).decode("utf-8")


def _gaps(counts: Mapping[int, int]) -> tuple[list[int], int | list[int]]:
    """Domain numbers as the gap from the one before (mostly 1: short), and their counts (one number when all equal)."""
    numbers = sorted(counts)
    gaps = [b - a for a, b in zip([-1, *numbers], numbers, strict=False)]
    values = [counts[n] for n in numbers]
    return gaps, values[0] if len(set(values)) == 1 else values


def _dns_view(
    domains: Snapshot, names: dict[str, int], tenants: dict[str, int]
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Each domain's answers as numbers into one table of distinct answers, names written relative to the domain.

    Most answers differ between domains only by the domain's name (``_dmarc.<domain>``, a selector's
    ``<selector>._domainkey.<domain>`` with no record, ``rua=mailto:dmarc@<domain>``); a name under the
    domain is ``[prefix]`` (``[""]`` for the domain itself) and a record naming the domain the list of
    pieces around it, so those answers are written once for every domain.
    """
    table: dict[str, int] = {}
    answers: list[list[Any]] = []
    dns: dict[str, Any] = {}
    for (_, key), body in sorted(domains.items()) if isinstance(domains, Mapping) else domains:
        name = str(body.get("name", key.partition("/")[2]))
        names.setdefault(name, len(names))
        tenant_i = tenants.setdefault(str(body.get("tenant", "")), len(tenants))
        if name in dns:
            continue
        numbers = []
        for purpose, a in sorted(((body.get("dns") or {}).get("answers") or {}).items()):
            records = [_records_part(KEY.sub(_key_ends, str(r)), name) for r in a.get("records", [])]
            entry = [purpose, _relative(str(a.get("name", "")), name), a.get("rdtype", ""), a.get("outcome", ""),
                     records, a.get("error")]
            text = _json_text(entry, sort=False)
            if text not in table:
                table[text] = len(answers)
                answers.append(entry)
            numbers.append(table[text])
        dns[name] = [tenant_i, bool(body.get("parked")), body.get("catch_all"), numbers]
    return dns, answers


def _key_ends(key: re.Match[str]) -> str:
    """A public key's first and last characters (one key from another at a glance; whole in the evidence pack)."""
    text = key[0]
    return f"{text[:8]}…{text[-16:]} ({len(text)} characters)"


def _records_part(record: str, domain: str) -> str | list[str]:
    """A record naming its domain as the pieces around each mention (report.js joins them with the name)."""
    return record.split(domain) if domain and domain in record else record


def _relative(qname: str, domain: str) -> str | list[str]:
    """A name at or under the domain as ``[prefix]`` (report.js adds the domain back); any other name as it is."""
    if not domain:
        return qname
    if qname == domain:
        return [""]
    if qname.endswith("." + domain):
        return [qname[:-len(domain) - 1]]
    return qname


def _templated(shape: str, domain: str) -> str | None:
    """``shape`` (JSON text) with each mention of ``domain`` written as DOMAIN_MARK's JSON escape.

    None when the domain is not a plain DNS name (letters, digits, hyphens, dots, a final label starting with a
    letter: such a name never overlaps JSON's punctuation, escapes, numbers or literals, so replacing it in the
    text replaces it in the strings alone) or when the mark already occurs (the value could not be told from
    its template).
    """
    if not PLAIN_NAME.fullmatch(domain) or "\\u0001" in shape:
        return None
    return shape.replace(domain, "\\u0001")


def _filled(value: Any, domain: str) -> Any:
    """A templated value with its domain written back (report.js ``fill``)."""
    if isinstance(value, str):
        return value.replace(DOMAIN_MARK, domain)
    if isinstance(value, list):
        return [_filled(item, domain) for item in value]
    if isinstance(value, dict):
        return {_filled(key, domain): _filled(item, domain) for key, item in value.items()}
    return value


def table_rows(data: Mapping[str, Any]) -> list[list[Any]]:
    """The rows that are not passes, in the order report.js builds its table from ``findings`` and ``groups``."""
    rows = list(data["findings"])
    for group in data["groups"]:
        rows.extend(_member_row(group, n, data["domains"]) for n in range(len(group[9])))
    return rows


def _member_row(group: Sequence[Any], n: int, domains: Sequence[str]) -> list[Any]:
    """The table row of a group's ``n``-th finding (report.js ``expand``)."""
    (check_i, status_i, severity_i, reason, evidence, templated, first_seen, flag, change,
     ids, tenants, members, subjects, items, causes, links) = group
    name = domains[members[n]]
    return [ids[n], check_i, status_i, severity_i, tenants[n], members[n],
            subjects[n] if subjects and subjects[n] is not None else name, items[n] if items else "",
            _filled(reason, name) if templated else reason,
            _filled(evidence, name) if templated else evidence, change, links[n] if links else None,
            first_seen, flag, 1, causes[n] if causes else ""]


def first_page(data: Mapping[str, Any]) -> dict[str, Any]:
    """The findings table's first page, for the page's script to show before it reads the whole data.

    ``data`` is ``PageData.data``'s output. The table starts on the findings needing attention, most severe
    first, then fail, error, excepted, unsupported, then in the order of ``table_rows`` (report.js
    ``compute``): ``first`` holds the positions in those rows of its first page, ``matching`` counts the
    findings it holds and ``total`` every finding of the run, passes included. Only the rows of that page are
    made: a group's members tie on all but their position, so no more than a page of each can be on it.
    """
    statuses = data["statuses"]
    order = {status.value: i for i, status in enumerate(SHOWN)}
    # (-severity, status order, position) of each candidate, with where its row is: a row, or a group's member
    candidates: list[tuple[int, int, int, int, int]] = []
    matching = 0
    for i, row in enumerate(data["findings"]):
        if statuses[row[2]] in order:
            matching += 1
            candidates.append((-row[3], order[statuses[row[2]]], i, -1, i))
    position = len(data["findings"])
    for g, group in enumerate(data["groups"]):
        size = len(group[9])
        if statuses[group[1]] in order:
            matching += size
            candidates.extend((-group[2], order[statuses[group[1]]], position + n, g, n)
                              for n in range(min(size, TABLE_PAGE)))
        position += size
    chosen = heapq.nsmallest(TABLE_PAGE, candidates)
    rows = [data["findings"][n] if g < 0 else _member_row(data["groups"][g], n, data["domains"])
            for *_, g, n in chosen]
    names = data["names"]
    passed = sum(counts * len(gaps) if isinstance(counts, int) else sum(counts)
                 for *_, gaps, counts in data["passes"])
    return {
        **{key: data[key] for key in ("statuses", "severities", "tenants", "domains", "checks", "history")},
        "names": {row[6]: names[row[6]] for row in rows if row[6] in names},
        "findings": rows,
        "first": [i for _, _, i, _, _ in chosen],
        "matching": matching,
        "total": position + passed,
        "page": TABLE_PAGE,
    }


def _named(fingerprints: Iterable[str], findings: Sequence[Finding]) -> list[Finding]:
    wanted = set(fingerprints)
    return sorted((f for f in findings if f.id in wanted), key=lambda f: (-f.severity.rank, f.tenant, f.subject, f.check))


def dmarc_view(store: Store, run: RunRecord, senders: Mapping[str, Sender], window_days: int) -> list[dict[str, Any]]:
    """The run's domains' reported traffic over the window up to the newest report, as imported by the run's end."""
    domains = [key.partition("/")[2] for key in store.snapshot_keys(run.id, "domain")]
    if not domains:
        return []
    seen_by = run.finished or run.started
    # The window ends at the newest report the run could see (reports arrive a day or more after the
    # mail they describe), never after the run started.
    latest = latest_report_end(store, domains, imported_before=seen_by, not_after=run.started)
    if latest is None:
        return []
    until = min(run.started, latest)
    since = until - timedelta(days=window_days)
    traffic = source_traffic(store, since=since, until=until, domains=domains, imported_before=seen_by)
    days = daily_traffic(store, since=since, until=until, domains=domains, imported_before=seen_by)
    return senders_seen(traffic, days, senders, since.date(), until.date())


class Coverage:
    """Every fact not collected, per tenant: its state, the reason, and the checks it left undecided (``rows``).

    The gaps come from the run's scope (what collection recorded); the checks from each check's declared
    ``requires``, with how many subjects each left undecided in this run. Checks that could not decide for
    a reason no gap names (a DNS lookup that failed, a crashed check) follow, with their own reason. The
    findings stream past one at a time (``add``): what is needed of each that could not decide is counted
    (and its subject kept), the finding is not.
    """

    def __init__(self) -> None:
        self._undecided: Counter[tuple[str, str]] = Counter()
        # (tenant, check) -> (state, reason) -> [findings, their subjects]
        self._reasons: dict[tuple[str, str], dict[tuple[str, str], tuple[list[int], set[str]]]] = {}

    def add(self, f: Finding) -> None:
        """Count a finding that could not decide (error, unsupported); any other is no gap."""
        if f.status not in (Status.UNSUPPORTED, Status.ERROR):
            return
        self._undecided[(f.tenant, f.check)] += 1
        state = "failed" if f.status is Status.ERROR else "unsupported"
        count, subjects = self._reasons.setdefault((f.tenant, f.check), {}).setdefault(
            (state, f.reason or f.status.value), ([0], set()))
        count[0] += 1
        subjects.add(f.subject)

    def rows(self, run: RunRecord) -> list[dict[str, Any]]:
        """The coverage table's rows for the run's gaps and the findings added."""
        try:
            requires = {c.meta.id: {f.value for f in c.meta.requires} for c in load_checks()}
        except RegistryError:
            requires = {}
        rows: list[dict[str, Any]] = []
        explained: set[tuple[str, str]] = set()
        for tenant, scope in sorted(run.scope.get("tenants", {}).items()):
            for gap in scope.get("gaps", []):
                fact = str(gap.get("fact", ""))
                blocked = sorted(c for c, facts in requires.items() if fact in facts)
                blocks = [(c, self._undecided.get((tenant, c), 0)) for c in blocked]
                explained.update((tenant, c) for c, n in blocks if n)
                rows.append({"tenant": tenant, "provider": scope.get("provider", ""), "fact": fact,
                             "state": gap.get("state", ""), "subject": gap.get("subject", ""),
                             "reason": gap.get("reason", ""), "blocks": blocks})
        # What no gap explains, grouped by tenant and reason: one row per cause, naming every check it held up.
        grouped: dict[tuple[str, str, str], dict[str, tuple[list[int], set[str]]]] = {}
        for (tenant, check), reasons in sorted(self._reasons.items()):
            if (tenant, check) in explained:
                continue
            for (state, reason), found in reasons.items():
                grouped.setdefault((tenant, state, reason), {})[check] = found
        for (tenant, state, reason), by_check in sorted(grouped.items()):
            facts = sorted({fact for check in by_check for fact in requires.get(check, ())})
            subjects = sorted(set().union(*(found for _, found in by_check.values())))
            scope = run.scope.get("tenants", {}).get(tenant, {})
            rows.append({"tenant": tenant, "provider": scope.get("provider", ""),
                         "fact": ", ".join(facts) or "what the check reads", "state": state,
                         "subject": ", ".join(subjects[:3]) + (f" and {len(subjects) - 3} more" if len(subjects) > 3 else ""),
                         "reason": reason,
                         "blocks": [(check, count[0]) for check, (count, _) in sorted(by_check.items())]})
        return _across_tenants(rows)


def _across_tenants(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows alike but for their tenant as one row naming every such tenant, the subjects undecided added up.

    Five hundred DNS-only tenants lack the same facts for the same reason: one row says so, not five hundred.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["provider"], row["fact"], row["state"], row["subject"], row["reason"],
               tuple(check for check, _ in row["blocks"]))
        if key not in merged:
            merged[key] = {**row, "tenants": [row["tenant"]]}
            continue
        kept = merged[key]
        kept["tenants"].append(row["tenant"])
        kept["blocks"] = [(check, n + more) for (check, n), (_, more) in zip(kept["blocks"], row["blocks"], strict=True)]
    return [{**row, "tenant": ", ".join(row.pop("tenants"))} for row in merged.values()]


def _bars(counts: Mapping[str, int], total: int) -> list[tuple[str, int, float]]:
    return [(key, n, round(100 * n / total, 2) if total else 0.0) for key, n in counts.items()]


def render_report(
    store: Store, run: RunRecord, events: Mapping[str, Sequence[str]], path: Path,
    remediation: RemediationConfig | None = None, *, senders: Mapping[str, Sender] | None = None,
    dmarc_window_days: int = 14, reader: Callable[[Finding], None] | None = None, causes: CauseIndex | None = None,
) -> Path:
    """Write report.html for a stored run, reading its findings, history, snapshot and exceptions from the store.

    The findings that are not passes stream from one cursor (the page keeps what it embeds of each, not the
    findings); the passes come as counts from SQL, and the few passes it names (resolved findings, the verdicts
    on exceptions and what they cover) are read by themselves. With ``remediation`` (the ``[remediation]``
    config) naming a base URL and a secret, each failing finding with a job carries its signed link.
    ``senders`` (the sender catalogue) names the sources the DMARC aggregate reports show over the
    ``dmarc_window_days`` before the run. ``reader`` sees each finding that is not a pass as the page reads it,
    and ``causes`` is the index of root causes the page fills (the scan's console summary, which then need not
    read them again).
    """
    exceptions = list(store.snapshot(run.id, "exception").values())
    # The resolved findings the summary names: the first LISTED in its order (``_named``), read whole.
    resolved = sorted(store.resolved_passes(run.id), key=lambda r: (-r[1].rank, r[2], r[3], r[4]))[:LISTED]
    named = store.findings_named(run.id, [fingerprint for fingerprint, *_ in resolved])
    if exceptions:
        covered = {str(e["check"]) for e in exceptions} | set(VERDICTS)
        named += store.findings_for_run(run.id, (Status.PASS,), checks=covered)
    passes = store.pass_counts(run.id)
    passed: Counter[tuple[str, str]] = Counter()
    by_severity: Counter[tuple[str, Severity]] = Counter()
    for check, _, tenant, severity, n, _ in passes:
        passed[(check, tenant)] += n
        by_severity[(tenant, severity)] += n
    # the passes' counts from the passes just read, not from a second query over them
    counts = store.finding_counts(run.id, [s for s in Status if s is not Status.PASS])
    counts.update(sorted(((tenant, Status.PASS.value, severity.value), n) for (tenant, severity), n in by_severity.items()))
    earlier = earlier_runs(store, run)
    cache: dict[str, Counts] = {}
    points = trend(store, run, events, counts, earlier, cache)
    with store.iter_findings(run.id, [s for s in Status if s is not Status.PASS]) as shown:
        return render_html(
            run, shown if reader is None else _read_by(reader, shown), events, path,
            exceptions=exceptions,
            domains=store.iter_snapshot(run.id, "domain"),
            names_of=lambda subjects: _display_names(store, run, subjects),
            points=points,
            signer=link_signer(remediation),
            previous=earlier[-1] if earlier else None,
            previous_counts=(cache.get(earlier[-1].id) or store.finding_counts(earlier[-1].id)) if earlier else None,
            counts=counts,
            dmarc_sources=dmarc_view(store, run, senders or {}, dmarc_window_days),
            dmarc_window=f"the {dmarc_window_days} days up to the newest report",
            controls=ControlTally(load_catalogue(), tenant_providers(run.scope), passed=passed, ids=False),
            pass_counts=passes,
            named_passes=named,
            findings_named=lambda ids: store.findings_named(run.id, ids),
            causes=causes,
        )


def _read_by(reader: Callable[[Finding], None], findings: Iterable[Finding]) -> Iterator[Finding]:
    """The findings, each shown to ``reader`` first."""
    for f in findings:
        reader(f)
        yield f


def _display_names(store: Store, run: RunRecord, subjects: Collection[str]) -> Iterator[tuple[str, str]]:
    """The name each mailbox a finding names goes by at its provider, as (address, name) pairs in the snapshot's
    key order, read a page of the snapshot at a time: the page keeps the names, not a mapping of them besides."""
    for _, body in store.iter_snapshot(run.id, "mailbox"):
        address = str(body.get("address", ""))
        if address in subjects and body.get("display_name"):
            yield address, str(body["display_name"])


def render_html(
    run: RunRecord,
    findings: Iterable[Finding],
    events: Mapping[str, Sequence[str]],
    path: Path,
    exceptions: Iterable[Mapping[str, Any]] = (),
    domains: Snapshot | None = None,
    points: Sequence[TrendPoint] = (),
    display_names: Mapping[str, str] | None = None,
    signer: Signer | None = None,
    previous: RunRecord | None = None,
    previous_counts: Counts | None = None,
    counts: Counts | None = None,
    dmarc_sources: Sequence[Mapping[str, Any]] = (),
    dmarc_window: str = "",
    controls: Sequence[ControlStatus] | ControlTally = (),
    pass_counts: Sequence[PassCount] | None = None,
    named_passes: Sequence[Finding] = (),
    names_of: Callable[[Collection[str]], Mapping[str, str] | Iterable[tuple[str, str]]] | None = None,
    findings_named: FindingsNamed | None = None,
    causes: CauseIndex | None = None,
) -> Path:
    """Write the report for one run; ``exceptions`` and ``domains`` are the run's snapshot of those kinds.

    ``findings`` are read once, in order, and none is kept but those the page names (root causes, new and
    resolved findings, what exceptions cover): a cursor will do. ``controls`` are the control verdicts, or a
    ``ControlTally`` that each finding is added to as it is read. ``pass_counts`` (the store's) stands for the
    passes when ``findings`` holds none; ``named_passes`` are the passes the page names all the same (resolved
    findings, exception verdicts and what exceptions cover).

    ``display_names`` maps a mailbox address to the name its provider shows, for the findings table; or
    ``names_of`` reads them (or their pairs) for the subjects the findings name, once they are read.
    ``previous`` is the finished run before this one: without it, nothing is called new or resolved.
    ``findings_named`` reads again the findings of the root causes shown (``Store.findings_named``); without it,
    ``findings`` must be a sequence, searched for them. ``causes``: the index of root causes to fill (the
    caller's, to read the causes again afterwards), a new one without it.
    """
    exceptions = list(exceptions)
    events = events if previous is not None else {}
    reading = _Reading(events, exceptions, signer, counted=counts is None,
                       tally=controls if isinstance(controls, ControlTally) else None,
                       causes=causes if causes is not None else CauseIndex())
    for f in findings:
        reading.add(f)
    counts = counts if counts is not None else reading.counts
    by_status: Counter[str] = Counter()
    for (_, status, _), n in counts.items():
        by_status[status] += n
    tenants_in_scope = list(run.scope.get("tenants", {}))
    scores = postures(counts, previous_counts if previous is not None else None, tenants_in_scope)
    index = reading.causes
    cause_count, dependants = len(index), index.dependants
    per_tenant: dict[str, Counter[str]] = {}
    for (tenant, status, _), n in counts.items():
        per_tenant.setdefault(tenant, Counter())[status] += n
    for tenant in tenants_in_scope:
        per_tenant.setdefault(tenant, Counter())
    widest = max((sum(c.values()) for c in per_tenant.values()), default=0)
    families = index.families()
    family_top = max(families.values(), default=0)
    if findings_named is None:
        if not isinstance(findings, Sequence):
            raise TypeError("render_html reads a cursor's root causes again through findings_named")
        findings_named = among(findings)
    causes = index.causes(findings_named, signer, FIX_FIRST)  # the page's: only their findings are read again
    if previous is not None:
        new = _named(list(events.get("new", ())) + list(events.get("reopened", ())), reading.named)
        resolved = _named(events.get("resolved", ()), [*reading.named, *named_passes])  # a subject gone from the inventory is counted, not named
        resolved_count = len(events.get("resolved", ()))
    else:
        new, resolved, resolved_count = [], [], 0
    names = names_of(reading.page.subjects) if names_of is not None else display_names or {}
    script = (TEMPLATES / "report.js").read_text(encoding="utf-8")
    points = list(points) or [_labelled(_point(run, events, counts), 1)]
    data = reading.page.data(domains or {}, names, pass_counts)
    data["history"] = previous is not None
    parts = environment().get_template("report.html.j2").generate(
        run=run,
        previous=previous,
        by_status=by_status,
        statuses=[s.value for s in Status],
        severities=[s.value for s in reversed(Severity)],
        weights=[(s.value, WEIGHTS[s]) for s in reversed(Severity)],
        postures=scores,
        causes=causes,
        cause_count=cause_count,
        dependants=dependants,
        status_bars=[(tenant, _bars({s.value: c.get(s.value, 0) for s in Status if c.get(s.value, 0)}, widest),
                      sum(c.values())) for tenant, c in sorted(per_tenant.items())],
        family_bars=_bars(dict(families.most_common()), family_top),
        per_tenant=sorted(per_tenant.items()),
        needing=sum(by_status.get(s.value, 0) for s in SHOWN),
        passed=by_status.get("pass", 0),
        new=new[:LISTED],
        new_count=len(new),
        resolved=resolved[:LISTED],
        resolved_count=resolved_count,
        trend=trend_svg(points),
        points=points,
        coverage=reading.coverage.rows(run),
        exceptions=exception_rows(exceptions, [*reading.excepting, *named_passes], run),
        dmarc_sources=dmarc_sources,
        dmarc_window=dmarc_window or "no window",
        controls=control_matrix(controls.statuses() if isinstance(controls, ControlTally) else controls),
        first=script_json(first_page(data)),
        data=script_json_parts(data),
        css=Markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),  # noqa: S704 - our own file
        js=Markup(script),  # noqa: S704 - our own file
        script_hash=_csp_hash("\n" + script + "\n"),
    )
    with path.open("w", encoding="utf-8") as out:
        out.writelines(parts)
    return path


class _Reading:
    """What ``render_html`` needs of the findings, gathered as they are read once: the page's data, the coverage
    gaps and control tallies, counts when none were given, and only the findings the page names."""

    def __init__(self, events: Mapping[str, Sequence[str]], exceptions: Sequence[Mapping[str, Any]],
                 signer: Signer | None, *, counted: bool, tally: ControlTally | None, causes: CauseIndex) -> None:
        self.page = PageData(events, signer)
        self.coverage = Coverage()
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.causes = causes
        self.named: list[Finding] = []
        """The new, reopened and resolved findings (the summary names them)."""
        self.excepting: list[Finding] = []
        """What an exception covers and the verdicts on exceptions (``exception_rows``)."""
        self._counted = counted
        self._tally = tally
        self._events = {fp for fps in events.values() for fp in fps}
        self._excepted = {(str(e["check"]), str(e["subject"]).lower()) for e in exceptions}

    def add(self, f: Finding) -> None:
        """Read one finding."""
        change = None if f.status is Status.PASS else action_change(f)
        self.page.add(f, change)
        self.coverage.add(f)
        if self._tally is not None:
            self._tally.add(f)
        if self._counted:
            self.counts[(f.tenant, f.status.value, f.severity.value)] += 1
        self.causes.add(f)
        if f.id in self._events:
            self.named.append(f)
        if f.check in VERDICTS or (f.check, f.subject.lower()) in self._excepted:
            self.excepting.append(f)
