"""DMARC aggregate reports in the store: importing each once, and reading the traffic per domain and source."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from scanner.aggregate.parse import AggregateReport
from scanner.config import Config
from scanner.model import Coverage, DomainTraffic, Fact, FactState, Inventory, SourceTraffic
from scanner.store.database import Store, dmarc_ptr, dmarc_records, dmarc_reports


class ReportWriter:
    """Stores reports in batches (one transaction per ``batch`` reports, so a year of files is not a year of
    disk syncs); a report already stored, now or earlier in the batch, is skipped. Use as a context manager:
    leaving it commits what was added, an exception rolls back the open batch (a re-run imports it)."""

    def __init__(self, store: Store, batch: int = 500, now: datetime | None = None) -> None:
        self._store = store
        self._batch = batch
        self._now = now or datetime.now(UTC)
        self._pending = 0
        dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert(dmarc_reports)

    def __enter__(self) -> ReportWriter:
        self._conn = self._store.engine.connect()
        self._transaction = self._conn.begin()
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                self._transaction.commit()
            else:
                self._transaction.rollback()
        finally:
            self._conn.close()

    def add(self, report: AggregateReport, source: str) -> bool:
        """Store one report and its records; False when the same org and report id is stored already."""
        key = self._conn.execute(
            self._insert.values(
                org_name=report.org_name[:255], report_id=report.report_id[:255], email=report.email[:255],
                begin=report.begin, end=report.end, domain=report.policy_domain[:255], policy=report.policy,
                schema=report.schema[:64], source=source[:1024], imported=self._now,
            ).on_conflict_do_nothing(index_elements=["org_name", "report_id"]).returning(dmarc_reports.c.id)
        ).scalar()
        if key is None:
            return False
        rows = [
            {"report": key, "row": index, "source_ip": r.source_ip, "count": r.count,
             "disposition": r.disposition[:32], "dkim": r.dkim[:16], "spf": r.spf[:16],
             "header_from": r.header_from[:255], "envelope_from": r.envelope_from[:255],
             "envelope_to": r.envelope_to[:255], "reasons": list(r.reasons),
             "auth": [{"method": a.method, "domain": a.domain, "selector": a.selector, "scope": a.scope,
                       "result": a.result} for a in r.auth]}
            for index, r in enumerate(report.records, start=1)
        ]
        for start in range(0, len(rows), 1000):
            self._conn.execute(sa.insert(dmarc_records), rows[start : start + 1000])
        self._pending += 1
        if self._pending >= self._batch:
            self._transaction.commit()
            self._transaction = self._conn.begin()
            self._pending = 0
        return True


def report_count(store: Store) -> int:
    """How many reports the store holds."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(dmarc_reports)).scalar_one())


def _passed(column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    return sa.func.lower(column) == "pass"


def source_traffic(
    store: Store, *, since: datetime | None = None, until: datetime | None = None,
    domains: Collection[str] | None = None, imported_before: datetime | None = None,
) -> list[SourceTraffic]:
    """One row per (header_from domain, source IP): message counts over the reports whose period meets the window.

    A report counts when its period overlaps [since, until]; ``domains`` limits to those header_from
    domains (lower case); ``imported_before`` ignores reports imported later (a past run renders as it was).
    ``dmarc_pass`` counts messages whose policy-evaluated DKIM or SPF passed.
    """
    count = dmarc_records.c.count
    dkim_pass, spf_pass = _passed(dmarc_records.c.dkim), _passed(dmarc_records.c.spf)
    query = (
        sa.select(
            dmarc_records.c.header_from, dmarc_records.c.source_ip,
            sa.func.sum(count).label("messages"),
            sa.func.sum(sa.case((sa.or_(dkim_pass, spf_pass), count), else_=0)).label("dmarc_pass"),
            sa.func.sum(sa.case((spf_pass, count), else_=0)).label("spf_aligned"),
            sa.func.sum(sa.case((dkim_pass, count), else_=0)).label("dkim_aligned"),
            sa.func.min(dmarc_reports.c.begin).label("first_seen"),
            sa.func.max(dmarc_reports.c.end).label("last_seen"),
            sa.func.count(sa.distinct(dmarc_reports.c.id)).label("reports"),
            sa.func.max(dmarc_ptr.c.name).label("ptr"),
            sa.func.max(dmarc_ptr.c.state).label("ptr_state"),
        )
        .select_from(dmarc_records.join(dmarc_reports, dmarc_records.c.report == dmarc_reports.c.id)
                     .outerjoin(dmarc_ptr, dmarc_ptr.c.ip == dmarc_records.c.source_ip))
        .group_by(dmarc_records.c.header_from, dmarc_records.c.source_ip)
        .order_by(dmarc_records.c.header_from, sa.func.sum(count).desc(), dmarc_records.c.source_ip)
    )
    if since is not None:
        query = query.where(dmarc_reports.c.end >= since)
    if until is not None:
        query = query.where(dmarc_reports.c.begin <= until)
    if domains is not None:
        query = query.where(dmarc_records.c.header_from.in_(sorted(domains)))
    if imported_before is not None:
        query = query.where(dmarc_reports.c.imported <= imported_before)
    with store.engine.connect() as conn:
        return [
            SourceTraffic(row.header_from, row.source_ip, int(row.messages or 0), int(row.dmarc_pass or 0),
                          int(row.spf_aligned or 0), int(row.dkim_aligned or 0), _aware(row.first_seen),
                          _aware(row.last_seen), int(row.reports), row.ptr or "", row.ptr_state == "confirmed")
            for row in conn.execute(query)
        ]


def daily_traffic(
    store: Store, *, since: datetime, until: datetime, domains: Collection[str],
    imported_before: datetime | None = None,
) -> dict[str, dict[date, tuple[int, int]]]:
    """Per header_from domain and day (of each report's begin, UTC): messages that passed and failed DMARC."""
    count = dmarc_records.c.count
    passed = sa.or_(_passed(dmarc_records.c.dkim), _passed(dmarc_records.c.spf))
    query = (
        sa.select(dmarc_records.c.header_from, dmarc_reports.c.begin,
                  sa.func.sum(sa.case((passed, count), else_=0)).label("passed"), sa.func.sum(count).label("total"))
        .select_from(dmarc_records.join(dmarc_reports, dmarc_records.c.report == dmarc_reports.c.id))
        .where(dmarc_reports.c.end >= since, dmarc_reports.c.begin <= until,
               dmarc_records.c.header_from.in_(sorted(domains)))
        .group_by(dmarc_records.c.header_from, dmarc_reports.c.begin)
    )
    if imported_before is not None:
        query = query.where(dmarc_reports.c.imported <= imported_before)
    days: dict[str, dict[date, tuple[int, int]]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            day = _aware(row.begin).date()
            before = days.setdefault(row.header_from, {}).get(day, (0, 0))
            ok, total = int(row.passed or 0), int(row.total or 0)
            days[row.header_from][day] = (before[0] + ok, before[1] + total - ok)
    return days


def latest_report_end(store: Store, domains: Collection[str], *, imported_before: datetime | None = None,
                      not_after: datetime | None = None) -> datetime | None:
    """The end of the newest report naming one of these policy domains (imported by then), or None."""
    query = sa.select(sa.func.max(dmarc_reports.c.end)).where(dmarc_reports.c.domain.in_(sorted(domains)))
    if imported_before is not None:
        query = query.where(dmarc_reports.c.imported <= imported_before)
    if not_after is not None:
        query = query.where(dmarc_reports.c.begin <= not_after)
    with store.engine.connect() as conn:
        latest = conn.execute(query).scalar()
    return _aware(latest) if latest is not None else None


def reported_domains(store: Store, *, since: datetime | None = None, until: datetime | None = None,
                     domains: Collection[str] | None = None) -> dict[str, int]:
    """How many reports name each policy domain (policy_published) in a window (by overlapping period)."""
    query = sa.select(dmarc_reports.c.domain, sa.func.count()).group_by(dmarc_reports.c.domain)
    if since is not None:
        query = query.where(dmarc_reports.c.end >= since)
    if until is not None:
        query = query.where(dmarc_reports.c.begin <= until)
    if domains is not None:
        query = query.where(dmarc_reports.c.domain.in_(sorted(domains)))
    with store.engine.connect() as conn:
        return {row[0]: int(row[1]) for row in conn.execute(query)}


def unresolved_ips(store: Store, older_than: datetime) -> list[str]:
    """Source IPs with no PTR look-up, or one made before ``older_than``."""
    known = sa.select(dmarc_ptr.c.ip).where(dmarc_ptr.c.looked_up >= older_than)
    query = sa.select(dmarc_records.c.source_ip).where(dmarc_records.c.source_ip.not_in(known)).distinct()
    with store.engine.connect() as conn:
        return sorted(row[0] for row in conn.execute(query))


def save_ptr_names(store: Store, answers: Iterable[tuple[str, str, str]], now: datetime) -> None:
    """Record each (ip, name, state) PTR look-up, replacing an earlier one."""
    rows = [{"ip": ip, "name": name[:255], "state": state, "looked_up": now} for ip, name, state in answers]
    if not rows:
        return
    insert = (postgresql.insert if store.engine.dialect.name == "postgresql" else sqlite.insert)(dmarc_ptr)
    statement = insert.on_conflict_do_update(
        index_elements=["ip"], set_={"name": insert.excluded.name, "state": insert.excluded.state,
                                     "looked_up": insert.excluded.looked_up})
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(statement, rows[start : start + 1000])


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def chunked(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def with_traffic(store: Store, config: Config, inventory: Inventory, now: datetime) -> Inventory:
    """The inventory with each configured domain's reported traffic over ``[policy] dmarc_window_days``.

    Coverage says whether reports could speak at all: with none imported, ``dmarc.reports`` is
    unsupported for every tenant (so the checks that read it never pass on silence).
    """
    addresses = tuple(config.dmarc_reports.addresses) if config.dmarc_reports is not None else ()
    if report_count(store) == 0:
        reason = ("no DMARC aggregate report has been imported yet: run `mailwarden dmarc import`"
                  if config.dmarc_reports is not None else
                  "no DMARC aggregate reports are read: set [dmarc_reports] and run `mailwarden dmarc import`")
        gaps = tuple(Coverage(t.name, Fact.DMARC_REPORTS, FactState.UNSUPPORTED, reason) for t in inventory.tenants)
        return replace(inventory, coverage=inventory.coverage + gaps, report_addresses=addresses)
    since = now - timedelta(days=config.policy.dmarc_window_days)
    names = sorted({d.name for d in inventory.domains})
    sources: dict[str, list[SourceTraffic]] = {}
    reports: dict[str, int] = {}
    for part in chunked(names, 5000):
        for source in source_traffic(store, since=since, until=now, domains=part):
            sources.setdefault(source.domain, []).append(source)
        reports.update(reported_domains(store, since=since, until=now, domains=part))
    traffic = {name: DomainTraffic(name, since, now, reports.get(name, 0), tuple(sources.get(name, ())))
               for name in names}
    seen = tuple(Coverage(t.name, Fact.DMARC_REPORTS, FactState.COLLECTED) for t in inventory.tenants)
    return replace(inventory, traffic=traffic, coverage=inventory.coverage + seen, report_addresses=addresses)
