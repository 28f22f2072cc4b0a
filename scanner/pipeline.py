"""One scan, end to end: collect, snapshot, evaluate, record findings, render the outputs from the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import operator
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from checks.evaluate import evaluate_pages
from checks.registry import Check, Policy, Sender, load_checks, unknown_check_ids
from reports.findings_files import write_findings_files
from reports.html import render_report
from reports.rootcause import CauseIndex
from reports.outputs import OutputError, publish
from scanner import __version__
from scanner.adapters.base import PAGE
from scanner.store.baseline import load_baselines
from scanner.collect import Collection, collect, listed_twice
from scanner.config import Config, RemediationConfig
from scanner.errors import ConfigError, RunFailed
from scanner.files_process import FilesFailed, FilesProcess, worth_starting
from scanner.store.lease import Lease
from scanner.aggregate.store import with_traffic
from scanner.model import Domain, Fact, FactState, Finding, Inventory, Mailbox, Scope, Status
from scanner.store.database import CONFIG_SCOPE, Recording, RunRecord, Store

log = logging.getLogger(__name__)


class ScanInterrupted(RunFailed):
    """The scan was stopped (SIGTERM, SIGINT) before it finished; its run is recorded ``interrupted``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was interrupted before it finished: recorded as interrupted")
        self.run_id = run_id


class ScanFailed(RunFailed):
    """The scan could not write its store or its outputs; the run is recorded ``failed`` and the message says
    which path and what to do."""


HALT_AT = "MAILWARDEN_HALT_AT"
"""Test hook: the name of a scan step at which the process stops and waits (to be killed or signalled)."""
HALT_FILE = "MAILWARDEN_HALT_FILE"
"""Test hook: a file the process appends the step's name to when it halts there."""
STEPS = ("collected", "staged", "snapshot", "findings", "outputs")
"""The steps a scan can be halted at: collection done, snapshot staged, snapshot committed, findings half
recorded, outputs half written."""
FILES_STEP = "files"
"""A further step, apart from ``STEPS`` (a scan halted there is like one halted at ``outputs``): the second process
started on findings.json and findings.csv, report.html not yet rendered."""


def halt_at(step: str) -> None:
    """Stop here for up to a minute when the test hook names this step (tests kill the process meanwhile)."""
    if os.environ.get(HALT_AT) != step:
        return
    marker = os.environ.get(HALT_FILE)
    if marker:
        with open(marker, "a", encoding="utf-8") as handle:
            handle.write(f"{step} {os.getpid()}\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)


class StoredFindings(Sequence[Finding]):
    """A run's findings as the store holds them (only those of ``statuses``, when given), read only when asked
    for: iterating streams them from a cursor (one finding held at a time); counting and indexing ask the store."""

    def __init__(self, store: Store, run_id: str, statuses: Sequence[Status] | None = None) -> None:
        self._store = store
        self._run_id = run_id
        self._statuses = statuses

    def __iter__(self) -> Iterator[Finding]:
        with self._store.iter_findings(self._run_id, self._statuses) as found:
            yield from found

    def __len__(self) -> int:
        counts = self._store.status_counts(self._run_id)
        return sum(n for status, n in counts.items() if self._statuses is None or Status(status) in self._statuses)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._store.findings_for_run(self._run_id, self._statuses)[index]

    def named(self, ids: Iterable[str]) -> list[Finding]:
        """The findings with these ids (of any status), in no particular order: ``Store.findings_named``."""
        return self._store.findings_named(self._run_id, ids)


class Notables:
    """What a scan's console summary needs of the findings that are not passes, gathered as they are read once: the
    root causes (``CauseIndex``) and, per tenant and reason, the checks that could not decide."""

    def __init__(self) -> None:
        self.causes = CauseIndex()
        self.undecided: dict[tuple[str, str], set[str]] = {}

    def add(self, f: Finding) -> None:
        """Read one finding."""
        self.causes.add(f)
        self.note(f)

    def note(self, f: Finding) -> None:
        """Read one finding for its undecided check only (report.html fills ``causes`` itself)."""
        if f.status is Status.ERROR:
            self.undecided.setdefault((f.tenant, f.reason or "no reason given"), set()).add(f.check)

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> Notables:
        """The figures of these findings, read now."""
        notables = cls()
        for f in findings:
            notables.add(f)
        return notables


@dataclass(frozen=True, slots=True)
class Outputs:
    """What rendering a run wrote, with the figures a summary needs (from SQL, not from every finding)."""

    run: RunRecord
    files: tuple[Path, ...]
    counts: Mapping[str, int]
    """Findings by status."""
    failing: Mapping[str, int]
    """Failing findings by severity."""
    notable: Sequence[Finding]
    """Every finding that is not a pass (failing, excepted, skipped, error, unsupported), in output order: a view
    of the store (``StoredFindings``), read when iterated."""
    read: Notables | None = None
    """The summary's figures of ``notable``, gathered while report.html read them (None without report.html)."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan produced: the stored run, its findings (read from the store when asked) and the files written."""

    run: RunRecord
    findings: Sequence[Finding]
    files: tuple[Path, ...]
    dns_queries: int
    counts: Mapping[str, int] = field(default_factory=dict)
    failing: Mapping[str, int] = field(default_factory=dict)
    notable: Sequence[Finding] = ()
    """The findings that are not passes (what the summary and the report show one by one), read when iterated."""
    read: Notables | None = None
    """The summary's figures of ``notable`` when report.html has read them already."""


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
        name: Sender(name, s.title, tuple(s.spf_include), tuple(s.dkim_selectors), tuple(s.mx_patterns), s.return_path,
                     tuple(s.ip_ranges), tuple(s.ptr_patterns))
        for name, s in config.senders.items()
    }


def snapshot_items(inventory: Inventory, *, domains: bool = True) -> Iterator[tuple[str, str, object, str]]:
    """Every object a run saw, as (kind, key, object, scope) for the store, which keeps its plain form
    (``snapshot_text``); the scope is the tenant. Without ``domains`` when they are staged already
    (``StagedMailboxes.domains``)."""
    for domain in inventory.domains if domains else ():
        yield "domain", f"{domain.tenant}/{domain.name}", domain, domain.tenant
    for mailbox in inventory.mailboxes:
        yield "mailbox", f"{mailbox.tenant}/{mailbox.address}", mailbox, mailbox.tenant
    for tenant, people in inventory.people.items():
        for person in people:
            yield "person", f"{tenant}/{person.email}", person, tenant
    for exception in inventory.exceptions:
        yield "exception", f"{exception.check}/{exception.subject}", exception, CONFIG_SCOPE


def stage_snapshot(store: Store, run_id: str, inventory: Inventory) -> None:
    """Stage what the run saw besides the mailboxes and domains (staged as they came), a page at a time: a roster
    of 100,000 people staged in one call was held as 100,000 rows at once (+135 MB)."""
    items = snapshot_items(inventory, domains=False)
    while page := list(itertools.islice(items, PAGE)):
        store.stage(run_id, page)


UNREAD_FIELDS = {Fact.MAILBOX_FORWARDS: "forwards", Fact.MAILBOX_DELEGATES: "delegates"}
"""Mailbox facts a provider may leave unread for one mailbox (a suspended Gmail user, a mailbox Graph cannot read),
and the stored field that then keeps its last known value."""


def unread_fields(collection: Collection) -> dict[str, set[str]]:
    """Per mailbox key (``tenant/address``) of a completely seen tenant: the stored fields this run did not read."""
    complete = set(collection.complete_tenants)
    unread: dict[str, set[str]] = {}
    for c in collection.inventory.coverage:
        if c.subject and c.tenant in complete and c.fact in UNREAD_FIELDS and c.state is not FactState.COLLECTED:
            unread.setdefault(f"{c.tenant}/{c.subject}", set()).add(UNREAD_FIELDS[c.fact])
    return unread


class StagedMailboxes:
    """The collect stage's sink for a scan: each page of mailboxes goes into the store's staging as it comes, and
    the domains as they come, a few tenants' at a time (``flush`` stages the rest once collection ends)."""

    def __init__(self, store: Store, run_id: str, sweep: Sweeper) -> None:
        self._store = store
        self._run_id = run_id
        self._sweep = sweep
        self._domains: list[tuple[str, str, object, str]] = []

    def put(self, tenant: str, mailboxes: Sequence[Mailbox]) -> list[str]:
        """Stage a page; a mailbox staged already for the tenant is a problem, and the first stays."""
        repeated = self._store.stage(self._run_id, [("mailbox", f"{tenant}/{m.address}", m, tenant) for m in mailboxes])
        self._sweep()
        return [listed_twice(key.partition("/")[2]) for key in repeated]

    def drop(self, tenant: str) -> None:
        """Unstage a failed tenant's mailboxes and domains (and anything else staged for it)."""
        self._domains = [item for item in self._domains if item[3] != tenant]
        self._store.unstage(self._run_id, tenant)

    def domains(self, tenant: str, domains: Sequence[Domain]) -> None:
        """Stage a tenant's domains as collected, ``DOMAINS_STAGED`` at a time: staging them after collection
        cost 4–5 s of a 10,000-domain scan on its own (the scan's event loop would otherwise wait for the DNS of
        other tenants, or the second collecting process), and a write per tenant of 20 domains 0.4 s more in
        commits than a write per 500."""
        self._domains += [("domain", f"{d.tenant}/{d.name}", d, d.tenant) for d in domains]
        if len(self._domains) >= DOMAINS_STAGED:
            self.flush()

    def flush(self) -> None:
        """Stage the domains not staged yet (once collection ends)."""
        if self._domains:
            self._store.stage(self._run_id, self._domains)
            self._domains = []


DOMAINS_STAGED = 500
"""Collected domains the scan holds (it holds every one anyway, for judging) before it stages them in one write."""


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
    # The domains counted inside a tenant besides its configured ones, because its provider reports them as its own.
    provider_domains = {t.name: list(t.provider_domains) for t in collection.inventory.tenants if t.provider_domains}
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
            **({"provider_domains": provider_domains[outcome.tenant]} if outcome.tenant in provider_domains else {}),
        }
    return {"tenants": tenants, "dns": dict(collection.dns)}


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


def check_exception_ids(config: Config, checks: Sequence[Check]) -> None:
    """Refuse an exception naming a check that is not loaded (a typo would except nothing), suggesting the nearest."""
    for name, hint in unknown_check_ids((e.check for e in config.exceptions), checks):
        position = next(i for i, e in enumerate(config.exceptions) if e.check == name)
        raise ConfigError(f"{config.source}: exceptions[{position}].check: no check {name!r}{hint}")


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
    """Collect, evaluate and report once (``record_scan``); the outputs are rendered from what the store holds.

    The scan lease is held until the outputs are written, so no second scan starts while this one renders.
    Outputs that cannot be written (a full disk) leave the previous ones intact and the run ``failed``; its
    findings are recorded, so it is still the next run's baseline, and ``mailwarden report --run`` renders it.
    """
    checks = load_checks() if checks is None else checks
    check_exception_ids(config, checks)
    run_id, started = _new_run(config, tenants, now)
    with Lease(store, run_id, ttl=config.schedule.lease_ttl):
        # Only the count is kept of the collection: its inventory (a roster of 100,000 people, the lookups built
        # over it) is let go before the outputs render, and what the report builds takes its place.
        dns_queries = _record(config, store, run_id, started, checks=checks, now=now, as_of=as_of,
                              progress=progress, tenants=tenants, stop=stop).collection.dns_queries
        try:
            outputs = render_outputs(store, run_id, out_dir, config.remediation, config, latest=True)
        except OutputError as exc:
            _fail(store, run_id, f"its outputs were not written: {exc}")
            raise ScanFailed(f"run {run_id}: {exc}") from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            _fail(store, run_id, f"stopped while writing its outputs to {out_dir} (its findings are recorded)",
                  state="interrupted")
            raise ScanInterrupted(run_id) from None
        except sa.exc.SQLAlchemyError as exc:
            raise _store_failed(store, run_id, exc) from None
    return ScanResult(outputs.run, StoredFindings(store, run_id), outputs.files, dns_queries=dns_queries,
                      counts=outputs.counts, failing=outputs.failing, notable=outputs.notable, read=outputs.read)


def _new_run(config: Config, tenants: Sequence[str] | None, now: datetime | None) -> tuple[str, datetime]:
    known = {t.name for t in config.tenants}
    for name in tenants or ():
        if name not in known:
            raise ConfigError(f"{config.source}: tenants: no tenant named {name!r}")
    started = datetime.now(UTC) if now is None else now
    return new_run_id(started), started


def _fail(store: Store, run_id: str, problem: str, *, state: str = "failed") -> bool:
    """Record the run failed at once; False when the store cannot take even that (the next scan will)."""
    try:
        store.fail_run(run_id, problem, state=state)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("run %s could not be recorded %s: %s", run_id, state, exc, extra={"run_id": run_id})
        return False
    return True


def _store_failed(store: Store, run_id: str, exc: sa.exc.SQLAlchemyError) -> ScanFailed:
    """The one-line error for a store that could not be written mid-scan, after recording the run failed."""
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    marked = _fail(store, run_id, f"the store could not be written: {cause}")
    return ScanFailed(
        f"run {run_id}: the store at {store.where} could not be written ({cause}): free space there or fix its "
        "permissions, then scan again; " + ("the run is recorded failed" if marked else
                                             "the next scan records this run failed")
    )


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
    store's scan lease (scanner/store/lease.py) throughout: a second scan is refused while it runs. When
    ``stop`` is set (or SIGINT arrives) before the findings are recorded, the run is recorded
    ``interrupted`` and ScanInterrupted is raised; the store keeps only whole steps (the findings are
    recorded in one transaction).
    """
    checks = load_checks() if checks is None else checks
    check_exception_ids(config, checks)
    run_id, started = _new_run(config, tenants, now)
    with Lease(store, run_id, ttl=config.schedule.lease_ttl):
        return _record(config, store, run_id, started, checks=checks, now=now, as_of=as_of, progress=progress,
                       tenants=tenants, stop=stop)


def _record(
    config: Config, store: Store, run_id: str, started: datetime, *, checks: Sequence[Check] | None,
    now: datetime | None, as_of: datetime | None, progress: Callable[[str], None], tenants: Sequence[str] | None,
    stop: threading.Event | None,
) -> Recorded:
    """``record_scan`` with the lease held: a run is whole (a baseline) only once its findings are recorded."""
    checks = load_checks() if checks is None else checks
    try:
        store.start_run(run_id, started, config.digest, __version__)
    except sa.exc.SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise ScanFailed(f"the store at {store.where} could not be written ({cause}): free space there or fix its "
                         "permissions, then scan again; no run was started") from None
    try:
        baselines = load_baselines(config)
        clock = time.perf_counter()
        sweep = Sweeper()
        staging = StagedMailboxes(store, run_id, sweep)
        with paused_gc():
            collection = asyncio.run(_collect_unless_stopped(config, progress, tenants, stop, staging))
        staging.flush()
        collected = time.perf_counter() - clock
        halt_at("collected")
        if stop is not None and stop.is_set():
            raise asyncio.CancelledError
        # The drift checks judge against the state recorded before this run; the snapshot then records
        # only what this run saw completely (a partial tenant's objects carry forward unchanged).
        previous = store.previous_state(run_id, forwards=False)
        inventory = with_traffic(store, config, replace(collection.inventory, previous=previous,
                                                        baselines=baselines), as_of or started)
        stage_snapshot(store, run_id, inventory)
        store.keep_last_known(run_id, unread_fields(collection))
        halt_at("staged")
        store.commit_snapshot(run_id, complete=(*collection.complete_tenants, CONFIG_SCOPE))
        halt_at("snapshot")
        counts = _judge_and_record(
            store, run_id, inventory, checks, config, now=as_of or started, recorded=started,
            complete=collection.complete_tenants, only=tenants, stop=stop, sweep=sweep,
            apart=record_apart(len(inventory.domains) + sum(o.mailboxes for o in collection.outcomes)),
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        _fail(store, run_id, "stopped before it finished", state="interrupted")
        raise ScanInterrupted(run_id) from None
    except sa.exc.SQLAlchemyError as exc:
        raise _store_failed(store, run_id, exc) from None
    except BaseException:
        _fail(store, run_id, "the scan stopped with an internal error (see the log)")
        raise
    finished = datetime.now(UTC) if now is None else max(now, datetime.now(UTC))
    try:
        store.finish_run(run_id, finished, collection.state, run_scope(collection, counts))
    except sa.exc.SQLAlchemyError as exc:
        raise _store_failed(store, run_id, exc) from None
    return Recorded(run_id, collection, collected, time.perf_counter() - clock - collected)


_TENANT_STATUS = operator.attrgetter("tenant", "status")

RECORD_APART_FROM = 2_000
"""Subjects (domains and mailboxes) from which a scan's findings are written by a second process while it judges
(``Store.recording(apart=True)``, scanner/store/writer.py): starting one costs about half a second (a fresh
interpreter's imports), writing 2,000 subjects' findings about as much."""


RECORDED_AT_ONCE = 20_000
"""Findings a scan holds before it records them (``Recording.record``), from as many pages of subjects as it takes:
each call's rows go into the store's tables in key order, and the more of them there are, the more of them land
beside each other in the tables' b-trees. A page of 500 mailboxes gives about 6,700 findings, recorded alone each
time until 2026-12-07; three pages at a time took the 100,000-mailbox judging from 22.2-22.6 s to 18.4-18.5 s (the
process writing the rows spent 4.5 s less in system calls), with the same peak memory. A page of 500 DNS domains
gives about 23,000, so it is recorded as it comes (holding two pages made that judging slower, and 50,000 findings
held added 30 MB)."""


def record_apart(subjects: int) -> bool:
    """Whether a run of this many subjects has its findings written by a second process, on a second core."""
    return subjects >= RECORD_APART_FROM and len(os.sched_getaffinity(0)) >= 2


def _judge_and_record(
    store: Store, run_id: str, inventory: Inventory, checks: Sequence[Check], config: Config, *, now: datetime,
    recorded: datetime, complete: Sequence[str], only: Sequence[str] | None, stop: threading.Event | None,
    sweep: Sweeper, apart: bool = False,
) -> dict[str, Counter[str]]:
    """Evaluate the run and record its findings: tenants and domains first, then the staged mailboxes, each a page
    of subjects at a time, the findings recorded ``RECORDED_AT_ONCE`` or more at a time, so memory does not grow with
    the number of domains or mailboxes. Returns the findings by tenant and status. ``apart``: a second process
    writes the rows (``Store.recording``).

    A ``stop`` between pages raises CancelledError, and nothing of the run's findings is kept."""
    counts: dict[str, Counter[str]] = {}
    policy, senders = policy_of(config), senders_of(config)
    with paused_gc(), store.recording(run_id, recorded, complete, apart=apart) as recording:
        lookup = StoredLookup(recording, [t.name for t in inventory.tenants])
        inventory = replace(inventory, lookup=lookup)

        held: list[Finding] = []

        def record() -> None:
            if held:
                recording.record(held)
                held.clear()

        def judge(part: Inventory, scopes: tuple[Scope, ...]) -> None:
            for results in evaluate_pages(part, checks, policy=policy, senders=senders, now=now, run_id=run_id,
                                          scopes=scopes, page=PAGE):
                if only is not None:
                    # Only the chosen units were collected: the others' results are judgements on nothing.
                    results = [f for f in results if f.tenant in only]
                for (tenant, status), n in Counter(map(_TENANT_STATUS, results)).items():
                    counts.setdefault(tenant, Counter())[status.value] += n
                held.extend(results)
                if len(held) >= RECORDED_AT_ONCE:
                    record()

        judge(inventory, (Scope.TENANT, Scope.DOMAIN))
        record()
        halt_at("findings")
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
        record()
    return counts


def write_outputs(
    store: Store, run_id: str, out_dir: Path, remediation: RemediationConfig | None = None,
    config: Config | None = None,
) -> tuple[RunRecord, Sequence[Finding], tuple[Path, ...]]:
    """Render findings.json, findings.csv, report.html and manifest.json for a stored run (``remediation``: links);
    the findings come back as a view of the store (``StoredFindings``)."""
    outputs = render_outputs(store, run_id, out_dir, remediation, config)
    return outputs.run, StoredFindings(store, run_id), outputs.files


NOTABLE = tuple(s for s in Status if s is not Status.PASS)
"""The statuses a report and a summary show finding by finding (passes are counted)."""


def render_outputs(
    store: Store, run_id: str, out_dir: Path, remediation: RemediationConfig | None = None,
    config: Config | None = None, formats: Sequence[str] = ("json", "csv", "html"), *, latest: bool = False,
) -> Outputs:
    """Render a stored run's outputs (``formats`` of json, csv, html) and manifest.json, atomically
    (reports/outputs.py: the previous outputs stay until every new file is written).

    findings.json and findings.csv stream from one cursor, so their memory does not grow with the findings;
    the report streams the findings that are not passes from another, and the counts come from SQL. When
    report.html is wanted too and another process can open the store, a second process writes the two files
    (scanner/files_process.py) while this one renders the report. The report's reading of the findings that are
    not passes also gathers what the console summary needs of them (``Outputs.read``).

    ``latest``: the run was just recorded by the scan rendering it, which holds the scan lease, so no later run
    can have changed its passes' domains; the two processes can then share the files' rows by domain (an estate of
    one tenant has one tenant to share), not only by tenant."""
    run = store.run(run_id)
    read = Notables() if "html" in formats else None
    counts = store.status_counts(run_id)
    total = sum(counts.values())

    def render(folder: Path) -> list[Path]:
        json_path = folder / "findings.json" if "json" in formats else None
        csv_path = folder / "findings.csv" if "csv" in formats else None
        files = [p for p in (json_path, csv_path) if p is not None]
        url = store.reopenable() if files and "html" in formats and worth_starting(total) else None
        writer = FilesProcess(url, run_id, json_path, csv_path, by_domain=latest) if url is not None else None
        try:
            if writer is None and files:
                with store.iter_rows(run_id) as rows:
                    write_findings_files(rows, json_path, csv_path)
            if writer is not None:
                halt_at(FILES_STEP)
            if "html" in formats:
                files.append(render_report(
                    store, run, store.lifecycle_events(run_id), folder / "report.html", remediation,
                    senders=senders_of(config) if config is not None else None,
                    dmarc_window_days=config.policy.dmarc_window_days if config is not None else 14,
                    reader=read.note if read is not None else None, causes=read.causes if read is not None else None))
            if writer is not None:
                writer.share(store)
                written = writer.wait()
                if written != total:  # two parts that overlap, or leave a gap, are not the run's files
                    raise FilesFailed(f"their two parts hold {written} findings where the run has {total}")
        except FilesFailed as exc:
            raise OutputError(f"cannot write findings.json and findings.csv in {out_dir}: {exc}; run the command "
                              f"again (the previous outputs in {out_dir} are unchanged)") from None
        finally:
            if writer is not None:
                writer.stop()
        return files

    with paused_gc():  # what the report keeps of its findings is long-lived: the collector would only re-scan it
        files = publish(run, out_dir, render, halt=lambda: halt_at("outputs"))
    failing: Counter[str] = Counter()
    for (_, status, severity), n in store.finding_counts(run_id, (Status.FAIL,)).items():
        if status == Status.FAIL.value:
            failing[severity] += n
    notable = StoredFindings(store, run_id, NOTABLE)
    return Outputs(run, tuple(files), counts, dict(failing), notable, read)
