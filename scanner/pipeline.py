"""One scan, end to end: collect, snapshot, evaluate, record findings, render the outputs from the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from checks.evaluate import evaluate
from checks.registry import Check, Policy, Sender, load_checks
from reports.csv_out import write_findings_csv
from reports.html import render_html
from reports.json_out import write_findings_json
from reports.manifest import write_manifest
from scanner import __version__
from scanner.collect import Collection, collect
from scanner.config import Config
from scanner.model import FactState, Finding, Inventory, plain
from scanner.store import RunRecord, Store


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


def snapshot_items(inventory: Inventory) -> Iterator[tuple[str, str, object]]:
    """Every object a run saw, as (kind, key, plain body) for the store."""
    for domain in inventory.domains:
        yield "domain", f"{domain.tenant}/{domain.name}", plain(domain)
    for mailbox in inventory.mailboxes:
        yield "mailbox", f"{mailbox.tenant}/{mailbox.address}", plain(mailbox)
    for tenant, people in inventory.people.items():
        for person in people:
            yield "person", f"{tenant}/{person.email}", plain(person)
    for exception in inventory.exceptions:
        yield "exception", f"{exception.check}/{exception.subject}", plain(exception)


def run_scope(collection: Collection) -> dict[str, object]:
    """Per tenant: how collection went, its figures and its coverage gaps, for the run record."""
    tenants: dict[str, object] = {}
    for outcome in collection.outcomes:
        gaps = [
            {"fact": c.fact.value, "state": c.state.value, "reason": c.reason, "subject": c.subject}
            for c in collection.inventory.coverage
            if c.tenant == outcome.tenant and c.state is not FactState.COLLECTED
        ]
        tenants[outcome.tenant] = {
            "state": outcome.state,
            "problems": list(outcome.problems),
            "mailboxes": outcome.mailboxes,
            "domains": outcome.domains,
            "gaps": gaps,
        }
    return {"tenants": tenants}


def run_scan(
    config: Config,
    out_dir: Path,
    *,
    store: Store,
    checks: Sequence[Check] | None = None,
    now: datetime | None = None,
    as_of: datetime | None = None,
    progress: Callable[[str], None] = lambda name: None,
) -> ScanResult:
    """Collect, evaluate and report once; the outputs are rendered from what the store holds.

    ``as_of`` is the moment the checks judge against (default: the run's start); the demo pins it
    to the date its bundled export files describe, so its findings do not age.
    """
    checks = load_checks() if checks is None else checks
    started = datetime.now(UTC) if now is None else now
    run_id = new_run_id(started)
    store.start_run(run_id, started, config.digest, __version__)
    try:
        with paused_gc():
            collection = asyncio.run(collect(config, progress=progress))
        store.save_snapshot(run_id, snapshot_items(collection.inventory))
        with paused_gc():
            results = evaluate(
                collection.inventory, checks, policy=policy_of(config), senders=senders_of(config),
                now=as_of or started,
                run_id=run_id,
            )
        store.record_findings(run_id, results, started, collection.complete_tenants)
    except BaseException:
        store.finish_run(run_id, datetime.now(UTC), "failed", {})
        raise
    finished = datetime.now(UTC) if now is None else max(now, datetime.now(UTC))
    store.finish_run(run_id, finished, collection.state, run_scope(collection))
    return ScanResult(*write_outputs(store, run_id, out_dir), dns_queries=collection.dns_queries)


def write_outputs(store: Store, run_id: str, out_dir: Path) -> tuple[RunRecord, tuple[Finding, ...], tuple[Path, ...]]:
    """Render findings.json, findings.csv, report.html and manifest.json for a stored run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = store.run(run_id)
    findings = store.findings_for_run(run_id)
    events = store.lifecycle_events(run_id)
    files = [
        write_findings_json(findings, out_dir / "findings.json"),
        write_findings_csv(findings, out_dir / "findings.csv"),
        render_html(run, findings, events, out_dir / "report.html",
                    exceptions=store.snapshot(run_id, "exception").values()),
    ]
    files.append(write_manifest(run, files, out_dir / "manifest.json"))
    return run, tuple(findings), tuple(files)
