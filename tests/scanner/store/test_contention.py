"""One writer, many readers: read-only verbs during a scan, the lease held until the outputs are written, opening
a current store writes nothing, two processes creating a store at once, and status telling a dead scan from a
running one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from scanner.cli import main
from scanner.config import load_config
from scanner.store.lease import ScanBusy
from scanner.pipeline import HALT_AT, HALT_FILE, run_scan
from scanner.store.database import MIGRATIONS, Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.store.held import hold_scan_lease
from tests.scanner.test_crash import FIRST, SECOND, _config, _export, estate  # noqa: F401 - the estate fixture


def _halted(config: Path, out: Path, step: str) -> subprocess.Popen[str]:
    """A real ``mailwarden scan`` waiting at ``step`` (the test hook) until it is signalled."""
    marker = config.parent / f"halt-{step}"
    process = subprocess.Popen(
        [sys.executable, "-c", "from scanner.cli import main; main()", "scan", "--config", str(config),
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent,
        env={**os.environ, HALT_AT: step, HALT_FILE: str(marker)})
    deadline = time.monotonic() + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), process.communicate()
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def test_read_only_verbs_work_while_a_scan_holds_the_write_lock(estate: ZoneServer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    path = _config(tmp_path, url, estate)
    (tmp_path / "audit.key").write_text("an audit key of the test's own", encoding="utf-8")  # audit verify reads it
    path.write_text(path.read_text(encoding="utf-8") + f'\n[remediation]\naudit_key = "file:{tmp_path / "audit.key"}"\n',
                    encoding="utf-8")
    _export(tmp_path, FIRST)
    store = Store(url)
    try:
        first = run_scan(load_config(path), tmp_path / "out", store=store)
    finally:
        store.close()
    _export(tmp_path, SECOND)
    scan = _halted(path, tmp_path / "out", "findings")  # inside the transaction recording its findings
    try:
        runner = CliRunner()
        for args in (["status"], ["changes"], ["report", "--run", first.run.id, "--format", "json", "--out",
                                                 str(tmp_path / "again")], ["jobs"], ["audit", "verify"]):
            clock = time.monotonic()
            done = runner.invoke(main, [*args[:1], "--config", str(path), *args[1:]] if args[0] != "audit" else
                                 ["audit", "verify", "--config", str(path)])
            assert done.exit_code == 0, (args, done.output)
            assert "locked" not in done.output and time.monotonic() - clock < 10, args
        status = runner.invoke(main, ["status", "--config", str(path)]).output
        assert "scan running: run" in status and f"process {scan.pid}" in status
    finally:
        _stop(scan)


def test_the_scan_lease_is_held_until_the_outputs_are_written(
    estate: ZoneServer, tmp_path: Path, store_url: str
) -> None:
    path = _config(tmp_path, store_url, estate)
    _export(tmp_path, FIRST)
    scan = _halted(path, tmp_path / "out", "outputs")  # findings recorded, outputs not yet in place
    store = Store(store_url)
    try:
        with pytest.raises(ScanBusy, match=f"process {scan.pid}"):
            run_scan(load_config(path), tmp_path / "other", store=store)
        assert not (tmp_path / "other").exists()
    finally:
        _stop(scan)
        store.close()


def test_opening_a_current_store_writes_nothing(estate: ZoneServer, tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    url = f"sqlite:///{database}"
    path = _config(tmp_path, url, estate)
    _export(tmp_path, FIRST)
    store = Store(url)
    run_scan(load_config(path), tmp_path / "out", store=store)
    store.close()
    files = [database, Path(f"{database}-wal")]
    before = [(f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files]
    time.sleep(0.05)
    for args in (["status"], ["changes"], ["jobs"], ["audit", "show"]):
        done = CliRunner().invoke(main, [*args, "--config", str(path)])
        assert done.exit_code == 0, done.output
    reader = Store(url)
    assert reader.version == len(MIGRATIONS)
    reader.close()
    assert [(f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files] == before


def test_processes_creating_one_new_store_at_once_do_not_race(tmp_path: Path, store_url: str) -> None:
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from scanner.store.database import Store\n"
        "pathlib.Path(sys.argv[2]).touch()\n"
        "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.005)\n"
        "Store(sys.argv[1]).close()\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", code, store_url, str(tmp_path / f"ready-{i}"), str(go)],
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in processes]
    assert all(code == 0 for code, _ in results), results
    store = Store(store_url)
    try:
        assert store.version == len(MIGRATIONS)
    finally:
        store.close()


def test_status_tells_a_dead_scan_from_a_running_one(estate: ZoneServer, tmp_path: Path, store_url: str) -> None:
    path = _config(tmp_path, store_url, estate)
    store = Store(store_url)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold_scan_lease(store, "held", sleeper.pid)
        alive = CliRunner().invoke(main, ["status", "--config", str(path)])
        assert alive.exit_code == 0, alive.output
        assert f"scan running: run held (process {sleeper.pid}" in alive.output
        assert "latest stored run: held running\n" in alive.output
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = CliRunner().invoke(main, ["status", "--config", str(path)])
    assert dead.exit_code == 0, dead.output
    assert "\nscan running" not in dead.output
    assert f"no scan running: run held stopped without finishing (process {sleeper.pid}" in dead.output
    assert "held running (its process is gone" in dead.output
    store.close()
