"""Crash-consistent runs: a scan killed (kill -9) or stopped (SIGTERM) at any step is never the next run's baseline
unless its findings were recorded, and the next scan's drift, lifecycle and change log match a run never interrupted."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanner.config import load_config
from scanner.pipeline import HALT_AT, HALT_FILE, STEPS, run_scan
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer

ZONE = '@ IN MX 10 mx.acme.example.\nmx IN A 127.0.0.25\n@ IN TXT "v=spf1 mx -all"\n_dmarc IN TXT "v=DMARC1; p=reject"'
MAILBOXES = ("address,display_name,kind,status,created,last_login,owners,delegates\n"
             "ann@acme.example,Ann,user,active,2024-01-02,2026-11-20T08:00:00Z,,\n"
             "bob@acme.example,Bob,user,active,2024-01-02,2026-11-20T08:00:00Z,,\n"
             "cat@acme.example,Cat,user,active,2024-01-02,2026-11-20T08:00:00Z,,\n")
FIRST = {"mailboxes.csv": MAILBOXES, "forwards.csv": "mailbox,target,mechanism\n"}
"""What run A sees: three mailboxes, no forwards."""
SECOND = {
    "mailboxes.csv": MAILBOXES.rsplit("cat@", 1)[0],
    "forwards.csv": "mailbox,target,mechanism\nann@acme.example,ann@outside.test,inbox_rule\n"
                    "bob@acme.example,bob@elsewhere.test,auto_forward\n",
}
"""What the later runs see: cat is gone, ann and bob forward outside (drift.forwarding_added must fail)."""


@pytest.fixture
def estate(tmp_path: Path, add_zone: Callable[[str, str], None], dns_server: ZoneServer) -> ZoneServer:
    """acme.example on the loopback DNS server, and its export folder."""
    add_zone("acme.example", ZONE)
    (tmp_path / "acme").mkdir()
    return dns_server


def _config(tmp_path: Path, url: str, server: ZoneServer) -> Path:
    path = tmp_path / "mailwarden.toml"
    path.write_text(f'''
[store]
url = "{url}"
[dns]
nameservers = ["{server.nameserver}"]
timeout = 5.0
[[tenants]]
name = "acme"
provider = "files"
export = "acme"
domains = ["acme.example"]
''', encoding="utf-8")
    return path


def _export(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / "acme" / name).write_text(text, encoding="utf-8")


@dataclass(frozen=True, slots=True)
class History:
    """What a store says about the last run: its findings with their lifecycle, and the whole change log,
    with times and run ids replaced by which run (A, K, B) they belong to."""

    findings: dict[str, tuple[str, str, str | None, str | None]]
    events: dict[str, list[str]]
    changes: list[tuple[str, ...]]


def _history(url: str, labels: dict[str, str]) -> History:
    store = Store(url)
    try:
        runs = store.runs()
        names = {r.id: labels[r.id] for r in runs if r.id in labels}
        at = {r.started: labels[r.id] for r in runs if r.id in labels}
        last = runs[-1]
        found = {
            f.id: (f.check, f.status.value, at.get(f.first_seen) if f.first_seen else None,
                   at.get(f.last_seen) if f.last_seen else None)
            for f in store.findings_for_run(last.id)
        }
        events = {k: sorted(v) for k, v in store.lifecycle_events(last.id).items()}
        changes = sorted(
            (names.get(c.run_id or "", "?"), c.object_key, c.field, c.action, json.dumps(c.before, sort_keys=True),
             json.dumps(c.after, sort_keys=True))
            for c in store.changes())
    finally:
        store.close()
    return History(found, events, changes)


def _reference(tmp_path: Path, server: ZoneServer, *, whole_middle_run: bool) -> History:
    """A → (K, uninterrupted, when ``whole_middle_run``) → B on a fresh SQLite store."""
    folder = tmp_path / "reference"
    (folder / "acme").mkdir(parents=True)
    url = f"sqlite:///{folder / 'store.db'}"
    config = load_config(_config(folder, url, server))
    store = Store(url)
    labels: dict[str, str] = {}
    try:
        _export(folder, FIRST)
        labels[run_scan(config, folder / "out", store=store).run.id] = "A"
        _export(folder, SECOND)
        if whole_middle_run:
            labels[run_scan(config, folder / "out", store=store).run.id] = "K"
        labels[run_scan(config, folder / "out", store=store).run.id] = "B"
    finally:
        store.close()
    return _history(url, labels)


def _manifest_holds(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name
    return {name: entry["sha256"] for name, entry in manifest["files"].items()}


def _halted_scan(config: Path, out: Path, step: str, sig: int, apart: bool = False) -> subprocess.CompletedProcess[str]:
    """``mailwarden scan`` in a subprocess, halted at ``step`` by the test hook, then sent ``sig``; ``apart``: its
    findings written by a second process (scanner/store/writer.py), as a large run's are."""
    marker = config.parent / f"halt-{step}"
    env = {**os.environ, HALT_AT: step, HALT_FILE: str(marker)}
    code = ("import scanner.pipeline; scanner.pipeline.RECORD_APART_FROM = 0; " if apart else "") + (
        "from scanner.cli import main; main()")
    process = subprocess.Popen(
        [sys.executable, "-c", code, "scan", "--config", str(config),
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=config.parent)
    deadline = time.monotonic() + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), f"the scan never reached {step}: {process.communicate()}"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# Every step with both signals on SQLite; on PostgreSQL the steps around its transactions: the snapshot just
# committed, the findings' transaction open, the findings committed (outputs).
# The findings' transaction open in a second process writing them: killed with the scan, or rolled back at its stop.
CASES = [("sqlite", step, sig, False) for sig in (signal.SIGKILL, signal.SIGTERM) for step in STEPS] + [
    ("postgresql", step, signal.SIGKILL, False) for step in ("snapshot", "findings", "outputs")] + [
    ("postgresql", "findings", signal.SIGTERM, False)] + [
    (backend, "findings", sig, True) for backend in ("sqlite", "postgresql")
    for sig in (signal.SIGKILL, signal.SIGTERM)]


@pytest.fixture(scope="module")
def references() -> dict[bool, History]:
    """The uninterrupted histories, computed once per module (by whether the stopped run was whole)."""
    return {}


@pytest.mark.parametrize(("store_url", "step", "sig", "apart"), CASES, indirect=["store_url"],
                         ids=[f"{b}-{s}-{signal.Signals(g).name}{'-apart' if a else ''}" for b, s, g, a in CASES])
def test_a_scan_stopped_at_any_step_leaves_the_next_scan_as_if_never_interrupted(
    estate: ZoneServer, tmp_path: Path, store_url: str, step: str, sig: int, apart: bool,
    references: dict[bool, History],
) -> None:
    path = _config(tmp_path, store_url, estate)
    config = load_config(path)
    out = tmp_path / "out"
    store = Store(store_url)
    labels: dict[str, str] = {}
    try:
        _export(tmp_path, FIRST)
        a = run_scan(config, out, store=store)
        labels[a.run.id] = "A"
        before = _manifest_holds(out)
        _export(tmp_path, SECOND)

        halted = _halted_scan(path, out, step, sig, apart)
        if sig == signal.SIGKILL:
            assert halted.returncode == -signal.SIGKILL
        else:
            assert halted.returncode == 1 and "interrupted" in halted.stderr and "Traceback" not in halted.stderr
        killed = store.runs()[-1]
        labels[killed.id] = "K"
        assert killed.id != a.run.id
        whole = step == "outputs"  # only then were its findings recorded before it stopped
        assert (killed.recorded is not None) is whole
        assert _manifest_holds(out) == before  # the previous outputs are untouched, manifest and all
        assert not [p for p in out.iterdir() if p.name.startswith(".mailwarden-writing-")] or sig == signal.SIGKILL
        if step in ("snapshot", "findings"):  # its snapshot is kept, to inspect, but is nobody's baseline
            kept = store.snapshot(killed.id, "mailbox")
            assert kept[("mailbox", "acme/ann@acme.example")]["forwards"]

        b = run_scan(config, out, store=store)
        labels[b.run.id] = "B"
        # kill -9 after the run was recorded complete leaves it complete (its findings are whole; only its
        # outputs are missing); otherwise the stop is recorded, or the orphan found by the next scan.
        assert store.run(killed.id).state == (
            "interrupted" if sig == signal.SIGTERM else "complete" if whole else "failed")
        _manifest_holds(out)
        assert not [p for p in out.iterdir() if p.name.startswith(".mailwarden-writing-")]
    finally:
        store.close()

    got = _history(store_url, labels)
    if whole not in references:
        references[whole] = _reference(tmp_path, estate, whole_middle_run=whole)
    expected = references[whole]
    assert got.findings == expected.findings
    assert got.events == expected.events
    assert got.changes == expected.changes
    if not whole:  # the forwards only the stopped run saw are new to B, and fail there
        fails = [v for v in got.findings.values() if v[0] == "drift.forwarding_added" and v[1] == "fail"]
        assert len(fails) == 2 and all(v[2] == "B" for v in fails)
