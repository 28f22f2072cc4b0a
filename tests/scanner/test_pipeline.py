"""The scan's pipeline while it records findings page by page: a store error is the scan's one-line error, and an
interrupt keeps none of the run's findings."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from checks.registry import Result, check, load_checks
from scanner.config import load_config
from scanner.loopback.zoneserver import ZoneServer
from scanner.model import Domain, Mailbox, Scope, Severity, plain
from scanner.pipeline import DOMAINS_STAGED, ScanInterrupted, StagedMailboxes, Sweeper, run_scan
from scanner.store import database
from scanner.store.database import Store
from scanner.store.writer import RecordingProcess
from tests.scanner.test_crash import FIRST, SECOND, _config, _export, estate  # noqa: F401 - the estate fixture

REFUSE = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE INSERT ON run_passes BEGIN SELECT RAISE(ABORT, 'no space left'); END"],
    "postgresql": [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no space left'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE INSERT ON run_passes FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}
"""A store that takes everything but the run's passes: recording a page of findings fails."""


APART = {"here": "", "apart": "import scanner.pipeline; scanner.pipeline.RECORD_APART_FROM = 0; "}
"""How the scan is run: recording its findings itself, or with a second process writing them (every run large
enough)."""


@pytest.mark.parametrize("recorded", sorted(APART))
def test_a_store_error_while_recording_findings_is_the_scans_one_line_error(
    estate: ZoneServer, tmp_path: Path, store_url: str, recorded: str
) -> None:
    path = _config(tmp_path, store_url, estate)
    _export(tmp_path, FIRST)
    store = Store(store_url)
    try:
        with store.engine.begin() as conn:
            for statement in REFUSE[store.engine.dialect.name]:
                conn.execute(sa.text(statement))
        done = subprocess.run(
            [sys.executable, "-c", APART[recorded] + "from scanner.cli import main; main()", "scan",
             "--config", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "could not be written (" in lines[0] and "no space left" in lines[0]
        assert lines[0].endswith("the run is recorded failed")
        run = store.runs()[-1]
        assert run.state == "failed" and run.recorded is None
        assert store.findings_for_run(run.id) == []
    finally:
        store.close()


@check(id="test.interrupted", title="Interrupted at cat", severity=Severity.LOW, scope=Scope.MAILBOX,
       rationale="test")
def interrupted(mailbox: Mailbox, ctx) -> Result:  # type: ignore[no-untyped-def]
    """Pass, until the last mailbox: there the user presses Ctrl-C."""
    if mailbox.address == "cat@acme.example":
        raise KeyboardInterrupt
    return Result.passed()


@pytest.mark.parametrize("recorded", sorted(APART))
def test_an_interrupt_while_pages_are_recorded_keeps_none_of_the_runs_findings(
    estate: ZoneServer, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, recorded: str
) -> None:
    monkeypatch.setattr("scanner.pipeline.PAGE", 1)  # a page per mailbox: ann's and bob's are recorded first
    writers: list[RecordingProcess] = []
    if recorded == "apart":
        monkeypatch.setattr("scanner.pipeline.RECORD_APART_FROM", 0)
        started = RecordingProcess.__init__

        def kept(self, url):  # type: ignore[no-untyped-def]
            started(self, url)
            writers.append(self)

        monkeypatch.setattr(RecordingProcess, "__init__", kept)
    config = load_config(_config(tmp_path, store_url, estate))
    _export(tmp_path, FIRST)
    store = Store(store_url)
    try:
        with pytest.raises(ScanInterrupted) as caught:
            run_scan(config, tmp_path / "out", store=store, checks=(*load_checks(), interrupted))
        assert store.run(caught.value.run_id).state == "interrupted"
        assert store.findings_for_run(caught.value.run_id) == []
        assert len(writers) == (recorded == "apart") and not any(w._process.is_alive() for w in writers)
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM findings")).scalar() == 0
        assert run_scan(config, tmp_path / "out", store=store).run.state == "complete"
    finally:
        store.close()


def test_the_collection_is_let_go_before_the_outputs_render(
    estate: ZoneServer, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The report renders from the store; an inventory still held then (a roster of 100,000 people at scale) would
    # add its size to the report's at the scan's peak.
    import gc

    from scanner import pipeline
    from scanner.model import Inventory

    render = pipeline.render_outputs
    gc.collect()
    earlier = [o for o in gc.get_objects() if isinstance(o, Inventory)]  # other tests' (held: no id is reused)
    alive: list[int] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        before = {id(o) for o in earlier}
        alive.append(sum(isinstance(o, Inventory) and id(o) not in before for o in gc.get_objects()))
        return render(*args, **kwargs)

    monkeypatch.setattr(pipeline, "render_outputs", counted)
    config = load_config(_config(tmp_path, store_url, estate))
    _export(tmp_path, FIRST)
    store = Store(store_url)
    try:
        result = run_scan(config, tmp_path / "out", store=store)
        assert result.run.state == "complete" and result.dns_queries > 0
        assert alive == [0]
    finally:
        store.close()


def test_domains_are_staged_a_few_tenants_at_a_time_and_a_failed_tenants_are_never_kept(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.start_run("r1", datetime.now(UTC), "digest", "test")
    staging = StagedMailboxes(store, "r1", Sweeper())

    def staged() -> list[str]:
        with store.engine.connect() as conn:
            return sorted(conn.execute(sa.select(database.staged.c.key).where(database.staged.c.run_id == "r1"))
                          .scalars())

    big = [Domain(f"d{i:03d}.example", "big") for i in range(DOMAINS_STAGED)]
    staging.domains("big", big)  # enough for a write of their own
    assert len(staged()) == DOMAINS_STAGED
    staging.domains("slow", [Domain("slow.example", "slow")])  # held until more come, or the collection ends
    staging.domains("acme", [Domain("acme.example", "acme")])
    assert len(staged()) == DOMAINS_STAGED
    staging.drop("slow")  # timed out while its domains were held
    staging.drop("big")  # failed after its domains were written
    staging.flush()
    assert staged() == ["acme/acme.example"]
    with store.engine.connect() as conn:
        body = conn.execute(sa.select(database.staged.c.body)).scalar_one()
    assert json.loads(body) == plain(Domain("acme.example", "acme"))
    store.close()



def test_findings_held_across_pages_are_recorded_as_when_each_page_is(
    estate: ZoneServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scan holds its findings until it has RECORDED_AT_ONCE of them (rows written in key order, more of them
    # together); what it records, and each finding's lifecycle over two runs, must not depend on how many at once.
    from scanner import pipeline
    from scanner.store.database import Recording

    monkeypatch.setattr(pipeline, "PAGE", 2)  # three mailboxes: two pages
    calls: list[int] = []
    record = Recording.record

    def counted(self, results, out=None):  # type: ignore[no-untyped-def]
        calls.append(len(results))
        return record(self, results, out)

    monkeypatch.setattr(Recording, "record", counted)
    histories = []
    for at_once in (1, 25, 10**6):
        monkeypatch.setattr(pipeline, "RECORDED_AT_ONCE", at_once)
        url = f"sqlite:///{tmp_path / f'store-{at_once}.db'}"
        store = Store(url)
        history = []
        for n, files in enumerate((FIRST, SECOND)):
            _export(tmp_path, files)
            del calls[:]
            result = run_scan(load_config(_config(tmp_path, url, estate)), tmp_path / f"out-{at_once}-{n}", store=store)
            assert result.run.state == "complete"
            assert 0 not in calls and sum(calls) == len(result.findings), calls
            since = {None: "", result.run.started: "this run"}
            history.append((sorted((f.id, f.status, since.get(f.first_seen, "before")) for f in result.findings),
                            store.lifecycle_events(result.run.id)))
        store.close()
        histories.append(history)
        if at_once == 1:
            assert len(calls) >= 3, calls  # the tenant and domain findings, then each page of mailboxes
        elif at_once == 10**6:
            assert len(calls) == 2, calls  # the tenant and domain findings, then every mailbox's at once
    assert histories[0] == histories[1] == histories[2]
    assert histories[0][1][1]["new"]  # the second run's new failures (ann and bob forward outside)
    assert {since for _, _, since in histories[0][1][0]} == {"", "this run", "before"}  # failing since run one
