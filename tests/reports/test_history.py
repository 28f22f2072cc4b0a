"""Immutable history: everything rendered for a past run reads the same after later runs (byte for byte, apart
from the evidence pack's render timestamp)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from reports.evidence import Period, write_evidence
from scanner.cli import main
from scanner.config import load_config
from scanner.pipeline import run_scan
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.test_crash import MAILBOXES, _config, _export, estate  # noqa: F401 - the estate fixture

HEADER = "mailbox,target,mechanism\n"
FORWARDING = {"mailboxes.csv": MAILBOXES, "forwards.csv": HEADER + "ann@acme.example,ann@outside.test,inbox_rule\n"}
FIXED = {"mailboxes.csv": MAILBOXES.rsplit("cat@", 1)[0], "forwards.csv": HEADER}


def _render(config: Path, run_id: str, out: Path) -> dict[str, bytes]:
    done = CliRunner().invoke(main, ["report", "--config", str(config), "--run", run_id, "--format", "html",
                                     "--format", "json", "--format", "csv", "--out", str(out)])
    assert done.exit_code == 0, done.output
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _evidence(url: str, run_started: object, out: Path) -> dict[str, bytes]:
    store = Store(url)
    try:
        write_evidence(store, out, Period(run_started, run_started))  # type: ignore[arg-type]
    finally:
        store.close()
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    manifest = json.loads(files["manifest.json"])
    manifest.pop("created")  # the render timestamp
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def test_a_past_run_renders_the_same_after_later_runs(estate: ZoneServer, tmp_path: Path, store_url: str) -> None:
    path = _config(tmp_path, store_url, estate)
    config = load_config(path)
    store = Store(store_url)
    try:
        _export(tmp_path, FORWARDING)
        a = run_scan(config, tmp_path / "out", store=store).run
        first = _render(path, a.id, tmp_path / "a1")
        evidence = _evidence(store_url, a.started, tmp_path / "e1")
        b = run_scan(config, tmp_path / "out", store=store).run  # the same again: last seen moves on
        _export(tmp_path, FIXED)
        c = run_scan(config, tmp_path / "out", store=store).run  # fixed, cat gone: resolved
        resolved = _render(path, c.id, tmp_path / "c1")
        _export(tmp_path, FORWARDING)
        d = run_scan(config, tmp_path / "out", store=store).run  # forwarding again: reopened
        assert len({a.id, b.id, c.id, d.id}) == 4
        assert store.lifecycle_events(c.id)["resolved"] and store.lifecycle_events(d.id)["reopened"]
    finally:
        store.close()
    again = _render(path, a.id, tmp_path / "a2")
    assert again.keys() == first.keys() == {"findings.csv", "findings.json", "manifest.json", "report.html"}
    for name in first:
        assert again[name] == first[name], f"{name} of run {a.id} changed after later runs"
    records = json.loads(first["findings.json"])
    assert records and all(r["last_seen"] is None or r["last_seen"] <= a.started.isoformat() for r in records)
    assert _render(path, c.id, tmp_path / "c2") == resolved  # its resolved findings stay resolved in its report
    assert _evidence(store_url, a.started, tmp_path / "e2") == evidence
