"""One scan, end to end: collect, snapshot, evaluate, record findings, render the outputs from the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.registry import Check, Policy, Sender, load_checks
from reports.csv_out import write_findings_csv
from reports.html import render_report
from reports.json_out import write_findings_json
from reports.manifest import write_manifest
from scanner import __version__
from scanner.baseline import load_baselines
from scanner.collect import Collection, collect
from scanner.config import Config, RemediationConfig
from scanner.errors import ConfigError, MailwardenError
from scanner.lease import Lease
from scanner.model import FactState, Finding, Inventory, plain
from scanner.store import CONFIG_SCOPE, RunRecord, Store

log = logging.getLogger(__name__)


class ScanInterrupted(MailwardenError):
    """The scan was stopped (SIGTERM, SIGINT) before it finished; its run is recorded ``interrupted``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was interrupted before it finished: recorded as interrupted")
        self.run_id = run_id


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan produced: the stored run, its findings and the files written."""

    run: RunRecord
    findings: tuple[Finding, ...]
    files: tuple[Path, ...]
    dns_queries: int


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


def run_scope(collection: Collection, findings: Sequence[Finding] = ()) -> dict[str, object]:
    """Per tenant (one unit of work each): how collection went, its figures, findings by status and coverage gaps."""
    by_tenant: dict[str, Counter[str]] = {}
    for finding in findings:
        by_tenant.setdefault(finding.tenant, Counter())[finding.status.value] += 1
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
            "mailboxes": outcome.mailboxes,
            "domains": outcome.domains,
            "seconds": outcome.seconds,
            "findings": dict(sorted(by_tenant.get(outcome.tenant, Counter()).items())),
            "gaps": gaps,
        }
    return {"tenants": tenants}


async def _collect_unless_stopped(
    config: Config, progress: Callable[[str], None], only: Sequence[str] | None, stop: threading.Event | None
) -> Collection:
    """Collect; when ``stop`` is set meanwhile, cancel every unit and raise CancelledError."""
    task = asyncio.ensure_future(collect(config, progress=progress, only=only))
    if stop is None:
        return await task
    while not task.done():
        if stop.is_set():
            task.cancel()
            break
        await asyncio.wait({task}, timeout=0.1)
    return await task


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
    """Collect, evaluate and report once; the outputs are rendered from what the store holds.

    ``as_of`` is the moment the checks judge against (default: the run's start); the demo pins it
    to the date its bundled export files describe, so its findings do not age. ``tenants`` limits the
    run to those units of work (the others' state carries forward untouched). The scan holds the
    store's scan lease (scanner/lease.py) throughout: a second scan is refused while it runs. When
    ``stop`` is set (or SIGINT arrives) before the findings are recorded, the run is recorded
    ``interrupted`` and ScanInterrupted is raised; the store keeps only whole steps.
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
            with paused_gc():
                collection = asyncio.run(_collect_unless_stopped(config, progress, tenants, stop))
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            # The drift checks judge against the state recorded before this run; the snapshot then records
            # only what this run saw completely (a partial tenant's objects carry forward unchanged).
            inventory = replace(collection.inventory, previous=store.previous_state(run_id), baselines=baselines)
            store.save_snapshot(run_id, snapshot_items(inventory), complete=(*collection.complete_tenants, CONFIG_SCOPE))
            with paused_gc():
                results = evaluate(
                    inventory, checks, policy=policy_of(config), senders=senders_of(config),
                    now=as_of or started,
                    run_id=run_id,
                )
            if tenants is not None:
                # Only the chosen units were collected: the others' results are judgements on nothing.
                results = [f for f in results if f.tenant in tenants]
            store.record_findings(run_id, results, started, collection.complete_tenants)
        except (KeyboardInterrupt, asyncio.CancelledError):
            store.finish_run(run_id, datetime.now(UTC), "interrupted", {"problem": "stopped before it finished"})
            raise ScanInterrupted(run_id) from None
        except BaseException:
            store.finish_run(run_id, datetime.now(UTC), "failed", {})
            raise
        finished = datetime.now(UTC) if now is None else max(now, datetime.now(UTC))
        store.finish_run(run_id, finished, collection.state, run_scope(collection, results))
    return ScanResult(*write_outputs(store, run_id, out_dir, config.remediation), dns_queries=collection.dns_queries)


def write_outputs(
    store: Store, run_id: str, out_dir: Path, remediation: RemediationConfig | None = None
) -> tuple[RunRecord, tuple[Finding, ...], tuple[Path, ...]]:
    """Render findings.json, findings.csv, report.html and manifest.json for a stored run (``remediation``: links)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = store.run(run_id)
    findings = store.findings_for_run(run_id)
    events = store.lifecycle_events(run_id)
    files = [
        write_findings_json(findings, out_dir / "findings.json"),
        write_findings_csv(findings, out_dir / "findings.csv"),
        render_report(store, run, findings, events, out_dir / "report.html", remediation),
    ]
    files.append(write_manifest(run, files, out_dir / "manifest.json"))
    return run, tuple(findings), tuple(files)
