"""Atomic writes and clear failure: a full disk (a file size limit, RLIMIT_FSIZE, on the scan's process) at the
outputs or under the store is one line naming the path and what to do, exit 1, and the previous outputs intact;
the run is recorded failed at once (or, when the full store cannot take even that, by the next scan)."""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from scanner.config import load_config
from scanner.pipeline import run_scan
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.scanner.test_crash import FIRST, SECOND, _config, _export, estate  # noqa: F401 - the estate fixture


def _limited_scan(config: Path, out: Path, limit: int) -> subprocess.CompletedProcess[str]:
    """``mailwarden scan`` whose process may not write any file beyond ``limit`` bytes (writes fail with EFBIG:
    Python ignores SIGXFSZ), as on a full disk."""
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-c", "from scanner.cli import main; main()", "scan", "--config", str(config),
         "--out", str(out)], capture_output=True, text=True, cwd=config.parent, preexec_fn=limit_files, timeout=120)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _verified(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name


def test_a_full_disk_at_the_outputs_keeps_the_previous_ones_and_fails_the_run_in_one_line(
    estate: ZoneServer, tmp_path: Path, postgres: object
) -> None:
    # The store on PostgreSQL (another process, not limited), so only the outputs meet the full disk.
    url = postgres.url()  # type: ignore[attr-defined]
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA full_outputs"))
    engine.dispose()
    url = postgres.url("full_outputs")  # type: ignore[attr-defined]
    path = _config(tmp_path, url, estate)
    out = tmp_path / "out"
    store = Store(url)
    try:
        _export(tmp_path, FIRST)
        first = run_scan(load_config(path), out, store=store)
        before = _files(out)
        _export(tmp_path, SECOND)
        done = _limited_scan(path, out, limit=8_000)  # findings.json alone is larger
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "cannot write" in lines[0] and str(out) in lines[0] and "File too large" in lines[0]
        assert "free space" in lines[0] and "unchanged" in lines[0]
        assert _files(out) == before  # the previous outputs, manifest and all, untouched
        _verified(out)
        run = store.runs()[-1]
        assert run.id != first.run.id and run.state == "failed" and "outputs were not written" in run.scope["problem"]
        assert run.recorded is not None  # its findings are whole: the next scan compares with it
        assert store.findings_for_run(run.id)
    finally:
        store.close()


BIG = {**SECOND, "mailboxes.csv": SECOND["mailboxes.csv"] + "".join(
    f"user{i}@acme.example,User {i},user,active,2024-01-02,2026-11-20T08:00:00Z,,\n" for i in range(400))}
"""The later estate with 400 more mailboxes: one large write (their staging page) among small ones."""


@pytest.mark.parametrize(("limit", "estate_files", "at_once"), [
    # Files may grow to 40 kB: the shared-memory index (32 kB) and the scan's first small writes to the
    # write-ahead log fit, then nothing more: the disk stays full, so the next scan records the run failed.
    (40_000, SECOND, False),
    # 160 kB: the small writes fit, the staging of 400 mailboxes does not; the space that write had taken is
    # enough for the one small write that records the run failed at once.
    (160_000, BIG, True),
], ids=["full", "full-during-a-large-write"])
def test_a_full_disk_under_the_store_is_one_line_and_the_run_is_recorded_failed(
    estate: ZoneServer, tmp_path: Path, limit: int, estate_files: dict[str, str], at_once: bool
) -> None:
    database = tmp_path / "store.db"
    url = f"sqlite:///{database}"
    path = _config(tmp_path, url, estate)
    out = tmp_path / "out"
    store = Store(url)
    try:
        _export(tmp_path, FIRST)
        run_scan(load_config(path), out, store=store)
    finally:
        store.close()
    before = _files(out)
    _export(tmp_path, estate_files)
    done = _limited_scan(path, out, limit=limit)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"the store at {url}" in lines[0] and "could not be written" in lines[0] and "free space" in lines[0]
    assert lines[0].endswith("the run is recorded failed" if at_once else "the next scan records this run failed")
    assert _files(out) == before
    store = Store(url)
    try:
        run = store.runs()[-1]
        assert run.recorded is None  # never whole: not the next scan's baseline
        assert run.state == ("failed" if at_once else "running")
        after = run_scan(load_config(path), out, store=store)
        assert after.run.state == "complete"
        assert store.run(run.id).state == "failed"
        drift = [f for f in after.findings if f.check == "drift.forwarding_added" and f.status.value == "fail"]
        assert len(drift) == 2  # compared with the first run, not the failed one
    finally:
        store.close()
