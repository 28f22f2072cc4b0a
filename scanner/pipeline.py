"""One scan, end to end: collect, snapshot, evaluate, record findings, render the outputs from the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.registry import Check, Policy, Sender, load_checks
from reports.findings_files import write_findings_files
from reports.html import render_report
from reports.records import row_record
from reports.manifest import write_manifest
from scanner import __version__
from scanner.adapters.base import PAGE
from scanner.baseline import load_baselines
from scanner.collect import Collection, collect, listed_twice
from scanner.config import Config, RemediationConfig
from scanner.errors import ConfigError, MailwardenError
from scanner.lease import Lease
from scanner.model import FactState, Finding, Inventory, Mailbox, Scope, Status, plain
from scanner.store import CONFIG_SCOPE, Recording, RunRecord, Store

log = logging.getLogger(__name__)


class ScanInterrupted(MailwardenError):
    """The scan was stopped (SIGTERM, SIGINT) before it finished; its run is recorded ``interrupted``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was interrupted before it finished: recorded as interrupted")
        self.run_id = run_id


class StoredFindings(Sequence[Finding]):
    """A run's findings as the store holds them, read only when asked for: iterating streams them from a
    cursor (one finding held at a time); counting and indexing ask the store."""

    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    def __iter__(self) -> Iterator[Finding]:
        with self._store.iter_findings(self._run_id) as found:
            yield from found

    def __len__(self) -> int:
        return sum(self._store.status_counts(self._run_id).values())

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._store.findings_for_run(self._run_id)[index]


@dataclass(frozen=True, slots=True)
class Outputs:
    """What rendering a run wrote, with the figures a summary needs (from SQL, not from every finding)."""

    run: RunRecord
    files: tuple[Path, ...]
    counts: Mapping[str, int]
    """Findings by status."""
    failing: Mapping[str, int]
    """Failing findings by severity."""
    worst: tuple[Finding, ...]
    """The ten worst failing findings: highest severity first, then by check and subject."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan produced: the stored run, its findings (read from the store when asked) and the files written."""

    run: RunRecord
    findings: Sequence[Finding]
    files: tuple[Path, ...]
    dns_queries: int
    counts: Mapping[str, int] = field(default_factory=dict)
    failing: Mapping[str, int] = field(default_factory=dict)
    worst: tuple[Finding, ...] = ()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a scan builds its inventory and findings.

    A portfolio scan allocates millions of objects that live until the run ends; the collector would
    re-scan them over and over (a third of a 10,000-domain scan's time). Reference counting still frees
    everything else at once, and the collector resumes, as it was, when the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Sweeper:
    """Frees garbage cycles while the collector is paused for a scan, once a page: the young generations each
    time (a page's HTTP exchanges and SQL results), so the long-lived inventory is not looked at again, and
    everything every ``full_every`` pages (a cycle still in flight at a young sweep, such as a request waiting
    out a throttle, is promoted past it and would otherwise stay until the scan ends). A streamed scan's
    memory then stays flat."""

    def __init__(self, full_every: int = 16) -> None:
        self._full_every = full_every
        self._pages = 0

    def __call__(self) -> None:
        """Sweep after one page."""
        self._pages += 1
        gc.collect(2 if self._pages % self._full_every == 0 else 1)


def new_run_id(now: datetime) -> str:
    """A sortable, unique run id."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def policy_of(config: Config) -> Policy:
    """The policy thresholds as the checks see them."""
    return Policy(**config.policy.model_dump())


def senders_of(config: Config) -> dict[str, Sender]:
    """The sender catalogue as the checks see it."""
    return {
        name: Sender(name, s.title, tuple(s.spf_include), tuple(s.dkim_selectors), tuple(s.mx_patterns), s.return_path)
        for name, s in config.senders.items()
    }


def snapshot_items(inventory: Inventory) -> Iterator[tuple[str, str, object, str]]:
    """Every object a run saw, as (kind, key, plain body, scope) for the store; the scope is the tenant."""
    for domain in inventory.domains:
        yield "domain", f"{domain.tenant}/{domain.name}", plain(domain), domain.tenant
    for mailbox in inventory.mailboxes:
        yield "mailbox", f"{mailbox.tenant}/{mailbox.address}", plain(mailbox), mailbox.tenant
    for tenant, people in inventory.people.items():
        for person in people:
            yield "person", f"{tenant}/{person.email}", plain(person), tenant
    for exception in inventory.exceptions:
        yield "exception", f"{exception.check}/{exception.subject}", plain(exception), CONFIG_SCOPE


class StagedMailboxes:
    """The collect stage's sink for a scan: each page of mailboxes goes into the store's staging as it comes."""

    def __init__(self, store: Store, run_id: str, sweep: Sweeper) -> None:
        self._store = store
        self._run_id = run_id
        self._sweep = sweep

    def put(self, tenant: str, mailboxes: Sequence[Mailbox]) -> list[str]:
        """Stage a page; a mailbox staged already for the tenant is a problem, and the first stays."""
        repeated = self._store.stage(
            self._run_id, [("mailbox", f"{tenant}/{m.address}", plain(m), tenant) for m in mailboxes])
        self._sweep()
        return [listed_twice(key.partition("/")[2]) for key in repeated]

    def drop(self, tenant: str) -> None:
        """Unstage a failed tenant's mailboxes."""
        self._store.unstage(self._run_id, tenant)


class StoredLookup:
    """Finds a run's mailboxes by address in its staging, for checks that look at other mailboxes (owners).

    A page's own mailboxes and their owners and delegates are fetched in one query when the page begins
    (``prefetch``); anything else is one query on demand. Only the current page's are held.
    """

    def __init__(self, recording: Recording, tenants: Sequence[str]) -> None:
        self._recording = recording
        self._tenants = tenants
        self._held: dict[str, Mailbox | None] = {}

    def prefetch(self, page: Sequence[Mailbox]) -> None:
        """Hold the page's mailboxes and, from the same tenant, the mailboxes of their owners and delegates."""
        self._held = {m.address: m for m in page}
        wanted = {f"{m.tenant}/{a}" for m in page for a in (*m.owners, *m.delegates) if a not in self._held}
        found = self._recording.mailboxes(wanted)
        for key in wanted:
            self._held.setdefault(key.partition("/")[2], found.get(key))

    def __call__(self, address: str) -> Mailbox | None:
        """The mailbox with this address in any tenant of the run, or None."""
        if address in self._held and self._held[address] is not None:
            return self._held[address]
        found = self._recording.mailboxes([f"{tenant}/{address}" for tenant in self._tenants])
        mailbox = next((found[f"{t}/{address}"] for t in self._tenants if f"{t}/{address}" in found), None)
        self._held[address] = mailbox
        return mailbox


def run_scope(collection: Collection, counts: Mapping[str, Counter[str]]) -> dict[str, object]:
    """Per tenant (one unit of work each): how collection went, its figures, findings by status and coverage gaps."""
    tenants: dict[str, object] = {}
    providers = {t.name: t.provider for t in collection.inventory.tenants}
    for outcome in collection.outcomes:
        gaps = [
            {"fact": c.fact.value, "state": c.state.value, "reason": c.reason, "subject": c.subject}
            for c in collection.inventory.coverage
            if c.tenant == outcome.tenant and c.state is not FactState.COLLECTED
        ]
        tenants[outcome.tenant] = {
            "provider": providers.get(outcome.tenant) or "none (DNS only)",
            "state": outcome.state,
            "problems": list(outcome.problems),
            "notes": list(outcome.notes),
            "mailboxes": outcome.mailboxes,
            "domains": outcome.domains,
            "seconds": outcome.seconds,
            "findings": dict(sorted(counts.get(outcome.tenant, Counter()).items())),
            "gaps": gaps,
        }
    return {"tenants": tenants}


async def _collect_unless_stopped(
    config: Config, progress: Callable[[str], None], only: Sequence[str] | None, stop: threading.Event | None,
    sink: StagedMailboxes,
) -> Collection:
    """Collect; when ``stop`` is set meanwhile, cancel every unit and raise CancelledError."""
    task = asyncio.ensure_future(collect(config, progress=progress, only=only, sink=sink))
    if stop is None:
        return await task
    while not task.done():
        if stop.is_set():
            task.cancel()
            break
        await asyncio.wait({task}, timeout=0.1)
    return await task


@dataclass(frozen=True, slots=True)
class Recorded:
    """A scan as recorded in the store, before any output is rendered, with how long its two stages took."""

    run_id: str
    collection: Collection
    collect_seconds: float
    judge_seconds: float


def run_scan(
    config: Config,
    out_dir: Path,
    *,
    store: Store,
    checks: Sequence[Check] | None = None,
    now: datetime | None = None,
    as_of: datetime | None = None,
    progress: Callable[[str], None] = lambda name: None,
    tenants: Sequence[str] | None = None,
    stop: threading.Event | None = None,
) -> ScanResult:
    """Collect, evaluate and report once (``record_scan``); the outputs are rendered from what the store holds."""
    recorded = record_scan(config, store=store, checks=checks, now=now, as_of=as_of, progress=progress,
                           tenants=tenants, stop=stop)
    outputs = render_outputs(store, recorded.run_id, out_dir, config.remediation)
    return ScanResult(outputs.run, StoredFindings(store, recorded.run_id), outputs.files,
                      dns_queries=recorded.collection.dns_queries, counts=outputs.counts, failing=outputs.failing,
                      worst=outputs.worst)


def record_scan(
    config: Config,
    *,
    store: Store,
    checks: Sequence[Check] | None = None,
    now: datetime | None = None,
    as_of: datetime | None = None,
    progress: Callable[[str], None] = lambda name: None,
    tenants: Sequence[str] | None = None,
    stop: threading.Event | None = None,
) -> Recorded:
    """Collect and evaluate once, streaming both into the store: what the adapters read is staged page by page,
    and the mailboxes are judged and their findings recorded page by page, so memory stays flat however many
    mailboxes a tenant has.

    ``as_of`` is the moment the checks judge against (default: the run's start); the demo pins it
    to the date its bundled export files describe, so its findings do not age. ``tenants`` limits the
    run to those units of work (the others' state carries forward untouched). The scan holds the
    store's scan lease (scanner/lease.py) throughout: a second scan is refused while it runs. When
    ``stop`` is set (or SIGINT arrives) before the findings are recorded, the run is recorded
    ``interrupted`` and ScanInterrupted is raised; the store keeps only whole steps (the findings are
    recorded in one transaction).
    """
    checks = load_checks() if checks is None else checks
    known = {t.name for t in config.tenants}
    for name in tenants or ():
        if name not in known:
            raise ConfigError(f"{config.source}: tenants: no tenant named {name!r}")
    started = datetime.now(UTC) if now is None else now
    run_id = new_run_id(started)
    with Lease(store, run_id, ttl=config.schedule.lease_ttl):
        store.start_run(run_id, started, config.digest, __version__)
        try:
            baselines = load_baselines(config)
            clock = time.perf_counter()
            sweep = Sweeper()
            with paused_gc():
                collection = asyncio.run(
                    _collect_unless_stopped(config, progress, tenants, stop, StagedMailboxes(store, run_id, sweep)))
            collected = time.perf_counter() - clock
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            # The drift checks judge against the state recorded before this run; the snapshot then records
            # only what this run saw completely (a partial tenant's objects carry forward unchanged).
            previous = store.previous_state(run_id, forwards=False)
            inventory = replace(collection.inventory, previous=previous, baselines=baselines)
            store.stage(run_id, snapshot_items(inventory))
            store.commit_snapshot(run_id, complete=(*collection.complete_tenants, CONFIG_SCOPE))
            counts = _judge_and_record(
                store, run_id, inventory, checks, config, now=as_of or started, recorded=started,
                complete=collection.complete_tenants, only=tenants, stop=stop, sweep=sweep,
            )
        except (KeyboardInterrupt, asyncio.CancelledError):
            store.finish_run(run_id, datetime.now(UTC), "interrupted", {"problem": "stopped before it finished"})
            raise ScanInterrupted(run_id) from None
        except BaseException:
            store.finish_run(run_id, datetime.now(UTC), "failed", {})
            raise
        finished = datetime.now(UTC) if now is None else max(now, datetime.now(UTC))
        store.finish_run(run_id, finished, collection.state, run_scope(collection, counts))
    return Recorded(run_id, collection, collected, time.perf_counter() - clock - collected)


def _judge_and_record(
    store: Store, run_id: str, inventory: Inventory, checks: Sequence[Check], config: Config, *, now: datetime,
    recorded: datetime, complete: Sequence[str], only: Sequence[str] | None, stop: threading.Event | None,
    sweep: Sweeper,
) -> dict[str, Counter[str]]:
    """Evaluate the run and record its findings: tenants and domains first, then the staged mailboxes a page at
    a time, so memory does not grow with the number of mailboxes. Returns the findings by tenant and status.

    A ``stop`` between pages raises CancelledError, and nothing of the run's findings is kept."""
    counts: dict[str, Counter[str]] = {}
    policy, senders = policy_of(config), senders_of(config)
    with paused_gc(), store.recording(run_id, recorded, complete) as recording:
        lookup = StoredLookup(recording, [t.name for t in inventory.tenants])
        inventory = replace(inventory, lookup=lookup)

        def judge(part: Inventory, scopes: tuple[Scope, ...]) -> None:
            results = evaluate(part, checks, policy=policy, senders=senders, now=now, run_id=run_id, scopes=scopes)
            if only is not None:
                # Only the chosen units were collected: the others' results are judgements on nothing.
                results = [f for f in results if f.tenant in only]
            for finding in results:
                counts.setdefault(finding.tenant, Counter())[finding.status.value] += 1
            recording.record(results)

        judge(inventory, (Scope.TENANT, Scope.DOMAIN))
        previous = inventory.previous
        for page in recording.mailbox_pages(PAGE):
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            lookup.prefetch(page)
            if previous is not None:
                keys = [f"{m.tenant}/{m.address}" for m in page]
                previous = replace(previous, forwards=recording.previous_forwards(keys))
            judge(replace(inventory, mailboxes=tuple(page), previous=previous), (Scope.MAILBOX,))
            sweep()
    return counts


def write_outputs(
    store: Store, run_id: str, out_dir: Path, remediation: RemediationConfig | None = None
) -> tuple[RunRecord, Sequence[Finding], tuple[Path, ...]]:
    """Render findings.json, findings.csv, report.html and manifest.json for a stored run (``remediation``: links);
    the findings come back as a view of the store (``StoredFindings``)."""
    outputs = render_outputs(store, run_id, out_dir, remediation)
    return outputs.run, StoredFindings(store, run_id), outputs.files


def render_outputs(
    store: Store, run_id: str, out_dir: Path, remediation: RemediationConfig | None = None,
    formats: Sequence[str] = ("json", "csv", "html"),
) -> Outputs:
    """Render a stored run's outputs (``formats`` of json, csv, html) and manifest.json: findings.json and
    findings.csv stream from one cursor, the counts and the worst failures come from SQL and a bounded heap."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = store.run(run_id)
    files: list[Path] = []
    json_path = out_dir / "findings.json" if "json" in formats else None
    csv_path = out_dir / "findings.csv" if "csv" in formats else None
    if json_path or csv_path:
        with store.iter_rows(run_id) as rows:
            write_findings_files((row_record(row) for row in rows), json_path, csv_path)
        files += [p for p in (json_path, csv_path) if p is not None]
    if "html" in formats:
        findings = store.findings_for_run(run_id)
        files.append(render_report(store, run, findings, store.lifecycle_events(run_id), out_dir / "report.html",
                                   remediation))
        del findings
    files.append(write_manifest(run, files, out_dir / "manifest.json"))
    failing: Counter[str] = Counter()
    with store.iter_findings(run_id, (Status.FAIL,)) as found:
        worst = heapq.nsmallest(10, _counted(found, failing), key=lambda f: (-f.severity.rank, f.check, f.subject))
    return Outputs(run, tuple(files), store.status_counts(run_id), dict(failing), tuple(worst))


def _counted(findings: Iterable[Finding], counts: Counter[str]) -> Iterator[Finding]:
    """The findings, counting each by severity on the way."""
    for finding in findings:
        counts[finding.severity.value] += 1
        yield finding
