"""mailwarden serve: scheduled scans and reports, overlap, restart, kill -9, SIGTERM, /healthz and status, scan units."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from scanner.cli import main
from scanner.config import load_config
from scanner.store.lease import Lease, ScanBusy, current_holder
from scanner.pipeline import ScanInterrupted, run_scan
from scanner.service.serve import JsonLines, build_scheduler, job_runs, sync_jobs
from scanner.service.status import job_status, next_run_times, store_reader
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.store.held import hold_scan_lease

ZONE = '@ IN MX 10 mx.{origin}.\nmx IN A 127.0.0.25\n@ IN TXT "v=spf1 mx -all"\n_dmarc IN TXT "v=DMARC1; p=none"'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def estate(add_zone: Callable[[str, str], None], dns_server: ZoneServer) -> ZoneServer:
    """Two client domains on the loopback DNS server."""
    for origin in ("acme.example", "globex.example"):
        add_zone(origin, ZONE.format(origin=origin))
    return dns_server


def _config(write_config: Callable[[str], Path], url: str, server: ZoneServer, *, scan: str = "* * * * * *",
            report: str = "", extra: str = "", tenants: tuple[str, ...] = ("acme",), timeout: float = 6.0) -> Path:
    blocks = "".join(f'[[tenants]]\nname = "{t}"\ndomains = ["{t}.example"]\n' for t in tenants)
    return write_config(f'''
[store]
url = "{url}"
[dns]
nameservers = ["{server.nameserver}"]
timeout = {timeout}
[schedule]
scan = "{scan}"
report = "{report}"
out = "out"
lease_ttl = 60
[serve]
port = {_free_port()}
log_format = "json"
{extra}
{blocks}''')


class Serving:
    """``mailwarden serve`` as a subprocess, its JSON-lines log in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.port = load_config(config).serve.port
        self.log = config.parent / f"serve-{time.monotonic_ns()}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from scanner.cli import main; main()", "serve", "--config", str(config)],
                stdout=sink, stderr=subprocess.STDOUT, cwd=config.parent,
            )

    def lines(self) -> list[dict[str, Any]]:
        """The log so far, parsed (every line must be JSON)."""
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Log lines of one event."""
        return [line for line in self.lines() if line.get("event") == name]

    def healthz(self) -> dict[str, Any]:
        """GET /healthz."""
        response = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
        assert response.status_code == 200
        return dict(response.json())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send a signal and wait for the process to end."""
        self.process.send_signal(sig)
        return self.process.wait(timeout=20)


@pytest.fixture
def serving() -> Iterator[Callable[[Path], Serving]]:
    """Start serve processes; any still running at the end is killed."""
    started: list[Serving] = []

    def start(config: Path) -> Serving:
        started.append(Serving(config))
        return started[-1]

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait()


def _wait(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (httpx.HTTPError, sa.exc.OperationalError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(url: str) -> list[Any]:
    store = Store(url)
    try:
        return store.runs()
    finally:
        store.close()


def _job_rows(url: str, job: str = "scan") -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("job_runs"):
                return []
            return list(conn.execute(sa.select(job_runs).where(job_runs.c.job == job).order_by(job_runs.c.id)).all())
    finally:
        engine.dispose()


# the scheduler in a subprocess: on schedule, /healthz, status, JSON logs, overlap, SIGTERM, kill -9


def test_scans_run_on_schedule_and_healthz_and_status_report_them(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path, serving: Callable[[Path], Serving]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    server = serving(_config(write_config, url, estate))
    _wait(lambda: len([r for r in _job_rows(url) if r.state == "complete"]) >= 2, what="two scheduled scans")
    health = _wait(server.healthz, what="/healthz")
    scan = health["jobs"]["scan"]
    assert health["status"] == "ok" and scan["schedule"] == "* * * * * *" and scan["scheduled"]
    assert scan["last"]["state"] == "complete" and scan["last"]["run_id"]
    assert datetime.fromisoformat(scan["next_run"]) > datetime.now(UTC) - timedelta(seconds=2)
    assert health["jobs"]["report"]["scheduled"] is False
    assert server.stop() in (0, -signal.SIGTERM)
    ends = server.events("job.end")
    assert {e["job"] for e in server.events("job.start")} == {"scan"} and ends
    # A scan every second: SIGTERM may stop one mid-way (recorded interrupted); the last whole one has the figures.
    end = [e for e in ends if e["state"] == "complete"][-1]
    assert end["tenants"] == {"complete": 1, "partial": 0, "failed": 0}
    assert end["domains"] == 1 and end["mailboxes"] == 0 and end["findings"]["fail"] >= 1
    assert end["duration"] > 0 and end["run_id"] in {r.id for r in _runs(url)}
    status = CliRunner().invoke(main, ["status", "--config", str(server.config), "--format", "json"])
    assert status.exit_code == 0, status.output
    printed = json.loads(status.output)
    last = _job_rows(url)[-1]  # the SIGTERM may have interrupted the last one
    assert printed["jobs"]["scan"]["last"]["state"] == last.state and last.state in ("complete", "interrupted")
    assert printed["jobs"]["scan"]["next_run"] is not None  # the job store keeps it while serve is down
    text = CliRunner().invoke(main, ["status", "--config", str(server.config)])
    assert "scan: schedule * * * * * * (UTC), next run 20" in text.output
    assert ("tenants 1 complete" if last.state == "complete" else "job scan interrupted: ") in text.output


def test_an_overlapping_trigger_is_skipped_and_sigterm_marks_the_scan_interrupted(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path, serving: Callable[[Path], Serving]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    estate.delay = 2.5  # each scan now outlasts several one-second triggers
    server = serving(_config(write_config, url, estate))
    _wait(lambda: server.events("job.skipped"), timeout=20, what="a skipped trigger")
    running = _wait(lambda: [r for r in _runs(url) if r.state == "running"], what="a scan in progress")
    assert len(running) == 1  # never two at once
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    runs = _runs(url)
    assert {r.state for r in runs} <= {"complete", "interrupted"}
    interrupted = [r for r in runs if r.id == running[0].id][0]
    assert interrupted.state == "interrupted" and interrupted.finished is not None
    assert [r.state for r in _job_rows(url)][-1] == "interrupted"
    # Runs never overlapped: each started after the one before it finished.
    for before, after in zip(runs, runs[1:]):
        assert before.finished is not None and after.started >= before.finished
    assert current_holder(Store(url)) is None


def test_kill_9_mid_scan_is_recovered_on_restart_and_the_schedule_continues(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path, serving: Callable[[Path], Serving]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _config(write_config, url, estate, scan="*/2 * * * * *")
    first = serving(config)
    done = _wait(lambda: [r for r in _runs(url) if r.state == "complete"], what="a complete scan")[0]
    store = Store(url)
    kept = [(f.id, f.status, f.evidence) for f in store.findings_for_run(done.id)]
    assert kept
    estate.delay = 4.0
    victim = _wait(lambda: [r for r in _runs(url) if r.state == "running"], what="a scan in progress")[0]
    first.process.kill()
    first.process.wait()
    assert store.run(victim.id).state == "running"  # as the kill left it
    estate.delay = 0.0
    second = serving(config)
    recovered = _wait(lambda: store.run(victim.id).state == "failed", what="the orphaned run marked failed")
    assert recovered and "orphaned" in store.run(victim.id).scope["problem"]
    _wait(lambda: [r for r in _runs(url) if r.state == "complete" and r.started > victim.started],
          what="the next scheduled scan")
    assert [(f.id, f.status, f.evidence) for f in store.findings_for_run(done.id)] == kept  # nothing already stored was lost
    assert [r.state for r in _job_rows(url) if r.run_id == victim.id or r.state == "failed"][:1] == ["failed"]
    assert any("job scan kept" in line["message"] for line in second.lines())  # the stored schedule was kept
    assert second.stop() in (0, -signal.SIGTERM)
    store.close()


# the scheduler in-process: restart keeps the schedule, missed runs, the report by email (SQLite and PostgreSQL)


def test_a_restart_keeps_the_stored_schedule_and_runs_a_missed_scan_once(
    estate: ZoneServer, write_config: Callable[[str], Path], store_url: str
) -> None:
    path = _config(write_config, store_url, estate, scan="0 6 * * *")
    config = load_config(path)
    stop = threading.Event()
    scheduler = build_scheduler(config, stop)
    scheduler.start(paused=True)
    sync_jobs(scheduler, config, path)
    planned = scheduler.get_job("scan").next_run_time
    scheduler.shutdown()
    assert planned.hour == 6
    store = Store(store_url)

    def next_scan() -> datetime | None:
        with store_reader(store) as reader:
            return next_run_times(reader)["scan"]

    assert next_scan() == planned  # in the database, with serve down
    again = build_scheduler(config, stop)
    again.start(paused=True)
    sync_jobs(again, config, path)
    assert again.get_job("scan").next_run_time == planned  # kept, not recomputed
    missed = datetime.now(UTC) - timedelta(seconds=30)
    again.modify_job("scan", next_run_time=missed)  # as if the process had been down at the planned time
    again.resume()
    _wait(lambda: [r for r in _job_rows(store_url) if r.state == "complete"], what="the missed scan")
    again.shutdown()
    assert len(_job_rows(store_url)) == 1  # coalesced: once
    assert next_scan() > datetime.now(UTC)  # and the schedule goes on
    changed = load_config(_config(write_config, store_url, estate, scan="30 5 * * *"))
    third = build_scheduler(changed, stop)
    third.start(paused=True)
    sync_jobs(third, changed, path)
    assert third.get_job("scan").next_run_time.minute == 30  # a changed schedule replaces the job
    third.shutdown()
    store.close()


def test_the_weekly_report_is_emailed_on_schedule(
    estate: ZoneServer, write_config: Callable[[str], Path], store_url: str, tmp_path: Path
) -> None:
    received: list[bytes] = []

    class Inbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.content)
            return "250 OK"

    port = _free_port()
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        email = (f'[email]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nfrom = "mw@msp.example"\n'
                 'retries = 0\n[[email.lists]]\nname = "noc"\nto = ["noc@msp.example"]\n')
        path = _config(write_config, store_url, estate, scan="", report="* * * * * *", extra=email)
        config = load_config(path)
        store = Store(store_url)
        run_scan(config, tmp_path / "out", store=store)
        scheduler = build_scheduler(config, threading.Event())
        scheduler.start(paused=True)
        sync_jobs(scheduler, config, path)
        assert scheduler.get_job("scan") is None
        scheduler.resume()
        _wait(lambda: received, what="the emailed report")
        scheduler.shutdown()
        assert b"noc@msp.example" in received[0]
        with store_reader(store) as reader:
            last = job_status(config.schedule, reader)["jobs"]["report"]["last"]
        assert last["state"] == "complete" and last["figures"]["sent"] == 1
        store.close()
    finally:
        smtp.stop()


# the scan lease (the database-level guard) and scan units


def test_a_live_scan_holding_the_lease_refuses_a_second_one_and_a_dead_one_is_recovered(
    estate: ZoneServer, write_config: Callable[[str], Path], store_url: str, tmp_path: Path
) -> None:
    config = load_config(_config(write_config, store_url, estate))
    store = Store(store_url)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        hold_scan_lease(store, "held", sleeper.pid)
        with pytest.raises(ScanBusy, match="run held"):
            run_scan(config, tmp_path / "out", store=store)
        refused = CliRunner().invoke(main, ["scan", "--config", str(config.source), "--out", str(tmp_path / "o")])
        assert refused.exit_code == 1 and "another scan is running" in refused.output
        assert store.run("held").state == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
    result = run_scan(config, tmp_path / "out", store=store)  # the holder is gone: recovered, then scanned
    assert result.run.state == "complete"
    assert store.run("held").state == "failed" and "orphaned" in store.run("held").scope["problem"]
    assert current_holder(store) is None
    with Lease(store, "mine", ttl=60):
        assert current_holder(store).run_id == "mine"  # type: ignore[union-attr]
    store.close()


def test_a_stop_request_interrupts_the_scan_and_keeps_the_store_consistent(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = load_config(_config(write_config, url, estate))
    store = Store(url)
    run_scan(config, tmp_path / "out", store=store)
    estate.delay = 3.0
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    clock = time.monotonic()
    with pytest.raises(ScanInterrupted) as caught:
        run_scan(config, tmp_path / "out", store=store, stop=stop)
    assert time.monotonic() - clock < 2.5
    assert store.run(caught.value.run_id).state == "interrupted"
    assert store.findings_for_run(caught.value.run_id) == []
    assert current_holder(store) is None
    estate.delay = 0.0
    assert run_scan(config, tmp_path / "out", store=store).run.state == "complete"
    store.close()


def test_a_tenant_that_exceeds_its_timeout_fails_while_the_others_complete(
    estate: ZoneServer, add_zone: Callable[[str, str], None], write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    add_zone("slow.example", ZONE.format(origin="slow.example"))
    estate.timeout_names.add("slow.example.")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = load_config(_config(write_config, url, estate, tenants=("acme", "slow", "globex"), timeout=2.0,
                                 extra="[scan]\ntenant_timeout = 0.5\ntenant_concurrency = 2\n"))
    store = Store(url)
    result = run_scan(config, tmp_path / "out", store=store)
    tenants = result.run.scope["tenants"]
    assert result.run.state == "partial"
    assert tenants["slow"]["state"] == "failed" and "timed out after 0.5 s" in tenants["slow"]["problems"][0]
    assert tenants["acme"]["state"] == tenants["globex"]["state"] == "complete"
    assert tenants["acme"]["findings"]["fail"] >= 1 and tenants["acme"]["seconds"] < 0.5
    assert {f.tenant for f in result.findings} >= {"acme", "globex"}
    assert not [f for f in result.findings if f.domain == "slow.example"]  # nothing judged on what was not seen
    store.close()


def test_scan_tenant_runs_one_unit_and_leaves_the_others_untouched(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    path = _config(write_config, url, estate, tenants=("acme", "globex"))
    runner = CliRunner()
    assert runner.invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "a")]).exit_code == 0
    one = runner.invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "b"), "--tenant", "globex"])
    assert one.exit_code == 0, one.output
    store = Store(url)
    first, second = store.runs()
    assert set(second.scope["tenants"]) == {"globex"} and second.state == "complete"
    assert {f.tenant for f in store.findings_for_run(second.id)} == {"globex"}
    assert ("domain", "acme/acme.example") in store.snapshot(second.id)  # acme's state carries forward
    assert store.changes() == []
    unknown = runner.invoke(main, ["scan", "--config", str(path), "--tenant", "nobody"])
    assert unknown.exit_code == 2 and "no tenant named 'nobody'" in unknown.output
    store.close()


@pytest.mark.parametrize(("table", "problem"), [
    ('[schedule]\nscan = "every day"', "schedule: scan: 'every day' is not a cron expression"),
    ('[schedule]\nreport = "0 7 * * FUNDAY"', "schedule: report:"),
    ('[schedule]\ntimezone = "Mars/Olympus"', "schedule: timezone: 'Mars/Olympus' is not an IANA time zone"),
    ('[serve]\nlog_format = "xml"', "serve.log_format"),
    ('[scan]\ntenant_timeout = 0', "scan.tenant_timeout"),
])
def test_schedule_config_is_validated(write_config: Callable[[str], Path], table: str, problem: str) -> None:
    path = write_config(f'{table}\n[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n')
    done = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert done.exit_code == 2 and problem in done.output, done.output


def test_json_lines_carry_the_structured_extras() -> None:
    record = logging.makeLogRecord({"msg": "job %s ended", "args": ("scan",), "levelname": "INFO", "name": "x",
                                    "event": "job.end", "run_id": "r1", "findings": {"fail": 2}})
    line = json.loads(JsonLines().format(record))
    assert line["message"] == "job scan ended" and line["event"] == "job.end" and line["findings"] == {"fail": 2}
    assert line["level"] == "info" and line["ts"].endswith("Z") and "args" not in line


def test_the_remediation_app_is_mounted_only_when_links_are_configured(tmp_path: Path, monkeypatch) -> None:
    from starlette.testclient import TestClient

    from scanner.service.serve import remediation_app

    bare = tmp_path / "bare.toml"
    tenant = '[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n'
    bare.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/s.db"\n{tenant}', encoding="utf-8")
    assert remediation_app(load_config(bare)) is None
    monkeypatch.setenv("MW_SERVE_TEST_SECRET", "s" * 40)
    linked = tmp_path / "linked.toml"
    linked.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/s.db"\n[remediation]\nbase_url = "https://mw.example"\n'
        f'secret = "env:MW_SERVE_TEST_SECRET"\n{tenant}', encoding="utf-8",
    )
    app = remediation_app(load_config(linked))
    assert app is not None
    response = TestClient(app).get("/r/not-a-signed-token")  # anonymous: the app answers, and shows nothing
    assert response.status_code == 403 and "Sign in first" in response.text


def test_dmarc_reports_are_imported_on_their_own_schedule(
    estate: ZoneServer, write_config: Callable[[str], Path], tmp_path: Path, serving: Callable[[Path], Serving]
) -> None:
    from tests.dmarc_fixtures import Row, write_report

    url = f"sqlite:///{tmp_path / 'store.db'}"
    now = datetime.now(UTC).replace(microsecond=0)
    write_report(tmp_path / "reports", "google.com", "sched-1", "acme.example", now - timedelta(days=1), now,
                 [Row("192.0.2.10", 9)])
    (tmp_path / "reports" / "broken.xml").write_bytes(b"<feedback>")
    config = write_config(f'''
[store]
url = "{url}"
[dns]
nameservers = ["{estate.nameserver}"]
timeout = 1.0
[schedule]
scan = ""
report = ""
dmarc_import = "* * * * * *"
[serve]
port = {_free_port()}
log_format = "json"
[dmarc_reports]
paths = ["reports"]
[[tenants]]
name = "acme"
domains = ["acme.example"]
''')
    server = serving(config)
    done = lambda: [r for r in _job_rows(url, "dmarc_import") if r.state != "running"]  # noqa: E731
    row = _wait(done, what="a scheduled import")[0]
    assert row.state == "partial" and row.figures["stored"] == 1 and row.figures["not_read"] == 1
    assert "broken.xml" in row.figures["problems"][0]
    _wait(lambda: len(done()) >= 2, what="a second import")
    assert server.stop() in (0, -signal.SIGTERM)
    later = done()[1:]
    assert later and all(r.figures["stored"] == 0 and r.figures["skipped"] == 1 for r in later)  # once only
    assert not _runs(url)  # no scan was scheduled
