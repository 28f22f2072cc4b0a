"""findings.json and findings.csv written by a second process while report.html renders: the same bytes as the
in-process path, its failures reported as this process's own, and no interruption leaves it running."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from reports.outputs import OutputError
from scanner import files_process
from checks.evaluate import fingerprint
from scanner.files_process import FilesProcess, handing_over
from scanner.pipeline import FILES_STEP, HALT_AT, HALT_FILE, render_outputs
from scanner.store.database import Store
from tests.reports.test_findings_files import NOW, _findings, _store, _tricky


@pytest.fixture(autouse=True)
def always_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second process even for these small runs when it would be spawned (another thread is alive)."""
    monkeypatch.setattr(files_process, "SPAWN_FROM", 0)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _record_tricky(store: Store) -> None:
    """Run r1, complete, holding ``_tricky``'s findings (every awkward value, each status)."""
    store.start_run("r1", NOW, "d" * 64, "test")
    store.record_findings("r1", _tricky(), NOW, ["@acme"])
    store.finish_run("r1", NOW, "complete", {})


def _pids(caplog: pytest.LogCaptureFixture, text: str) -> list[int]:
    return [int(r.pid) for r in caplog.records if r.name == "scanner.files_process" and text in r.getMessage()]


def test_files_and_report_are_written_by_two_processes_with_the_in_process_bytes(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(store_url)
    try:
        _record_tricky(store)
        with caplog.at_level(logging.DEBUG, logger="scanner.files_process"):
            both = render_outputs(store, "r1", tmp_path / "both")
        alone = render_outputs(store, "r1", tmp_path / "alone", formats=("json", "csv"))
        report = render_outputs(store, "r1", tmp_path / "report", formats=("html",))
    finally:
        store.close()
    [writer] = _pids(caplog, "findings written by process")
    assert writer != os.getpid()
    assert _pids(caplog, "started") == [writer]
    assert [p.name for p in both.files] == ["findings.json", "findings.csv", "report.html", "manifest.json"]
    assert both.counts == alone.counts == report.counts and both.failing == report.failing
    written = _files(tmp_path / "both")
    assert written["findings.json"] == (tmp_path / "alone" / "findings.json").read_bytes()
    assert written["findings.csv"] == (tmp_path / "alone" / "findings.csv").read_bytes()
    assert written["report.html"] == (tmp_path / "report" / "report.html").read_bytes()
    assert b'"status":"pass"' in written["findings.json"] and b'"status":"fail"' in written["findings.json"]


class _Row(NamedTuple):
    tenant: str
    domain: str
    n: int


def test_the_second_process_hands_over_the_last_share_of_the_rows_it_has_not_reached() -> None:
    rows = [_Row(tenant, f"{tenant}.example", n) for n, tenant in enumerate("aabcdde")]
    weights = [(("a",), 2), (("b",), 1), (("c",), 1), (("d",), 2), (("e",), 1)]
    parent, child = Pipe()
    parent.send(weights)  # asked before the first row: answered when the rows reach "a"
    assert list(handing_over(rows, child)) == rows[:6]  # a, a, b, c, d, d
    assert parent.recv() == ("tail", [("e",)])  # after "a": 5 rows, and 0.4 of them (SHARED) is "e"'s alone
    parent.send([(("a",), 2), (("b",), 1), (("c",), 9), (("d",), 3), (("e",), 1)])
    assert list(handing_over(rows, child)) == rows[:4]  # after "a": 14 rows, "d" and "e" hold 4 of them
    assert parent.recv() == ("tail", [("d",), ("e",)])
    parent.send(weights)
    assert list(handing_over(rows[5:], child)) == rows[5:]  # from "d", one row is left: nothing to hand over
    assert parent.recv() == ("tail", [])


def test_one_tenants_rows_are_handed_over_by_domain() -> None:
    rows = [_Row("acme", domain, n) for n, domain in enumerate(["a.test", "a.test", "b.test", "c.test", "c.test",
                                                                 "d.test"])]
    parent, child = Pipe()
    parent.send([(("acme", "a.test"), 2), (("acme", "b.test"), 1), (("acme", "c.test"), 2), (("acme", "d.test"), 1)])
    assert list(handing_over(rows, child)) == rows[:5]  # after a.test: 4 rows, d.test's one is within 0.4 of them
    assert parent.recv() == ("tail", [("acme", "d.test")])
    parent.send([(("acme",), 6)])  # by tenant, one tenant: nothing after it to hand over
    assert list(handing_over(rows, child)) == rows
    assert parent.recv() == ("tail", [])


@pytest.mark.parametrize("latest", [False, True], ids=["by tenant", "by domain"])
def test_this_process_writes_the_last_tenants_the_second_hands_over_with_the_same_bytes(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, latest: bool
) -> None:
    def asked_first(rows: Iterable[Any], conn: Connection) -> Iterator[Any]:
        conn.poll(60)  # the second process (a copy of this one, patch included) waits to be asked before its rows
        return handing_over(rows, conn)

    assert files_process.start_method() == "fork"
    monkeypatch.setattr(files_process, "handing_over", asked_first)
    store = Store(store_url)
    try:
        store.start_run("r1", NOW, "d" * 64, "test")
        # by tenant: six tenants of one domain each; by domain: one tenant with six domains
        spread = [replace(f, tenant=tenant, domain=f"d{n % 6}.example", id=fingerprint(f.check, tenant, f.subject))
                  for n, f in enumerate(_findings(600)) for tenant in ["acme" if latest else f"t{n % 6}"]]
        store.record_findings("r1", [*spread, *_tricky()], NOW, ["@acme", "acme", *(f"t{n}" for n in range(6))])
        store.finish_run("r1", NOW, "complete", {})
        with caplog.at_level(logging.DEBUG, logger="scanner.files_process"):
            both = render_outputs(store, "r1", tmp_path / "both", latest=latest)
        alone = render_outputs(store, "r1", tmp_path / "alone", formats=("json", "csv"))
    finally:
        store.close()
    # the second process is at the first of seven tenants (or of acme's domains): this one writes the last two, a
    # share (SHARED) of the rows after it
    [shared] = [r.getMessage() for r in caplog.records if "written by this process" in r.getMessage()]
    assert shared.endswith(f"findings of 2 {'domains' if latest else 'tenants'} written by this process")
    assert both.counts == alone.counts
    written = _files(tmp_path / "both")
    assert written["findings.json"] == (tmp_path / "alone" / "findings.json").read_bytes()
    assert written["findings.csv"] == (tmp_path / "alone" / "findings.csv").read_bytes()
    assert sorted(written) == ["findings.csv", "findings.json", "manifest.json", "report.html"]


def test_parts_that_do_not_add_up_to_the_run_fail_the_files_and_keep_the_previous_ones(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def asked_first(rows: Iterable[Any], conn: Connection) -> Iterator[Any]:
        conn.poll(60)
        return handing_over(rows, conn)

    real = Store.output_parts

    def moved(self: Store, run_id: str, *, by_domain: bool = False) -> Any:
        # as if a later run had moved the passes of the last domains: keys the rows no longer have
        return [((key[0], key[1] + "~") if i >= 3 else key, n) for i, (key, n) in enumerate(real(
            self, run_id, by_domain=by_domain))]

    monkeypatch.setattr(files_process, "handing_over", asked_first)
    monkeypatch.setattr(Store, "output_parts", moved)
    store = Store(store_url)
    try:
        store.start_run("r1", NOW, "d" * 64, "test")
        store.record_findings("r1", [replace(f, tenant="acme", domain=f"d{n % 6}.example",
                                             id=fingerprint(f.check, "acme", f.subject))
                                     for n, f in enumerate(_findings(600))], NOW, ["acme"])
        store.finish_run("r1", NOW, "complete", {})
        render_outputs(store, "r1", tmp_path / "out", formats=("json", "csv"))
        before = _files(tmp_path / "out")
        with pytest.raises(OutputError) as raised:
            render_outputs(store, "r1", tmp_path / "out", latest=True)
    finally:
        store.close()
    assert "their two parts hold" in str(raised.value) and "where the run has 600" in str(raised.value)
    assert _files(tmp_path / "out") == before  # the previous outputs, untouched


def test_an_in_memory_store_keeps_the_files_in_this_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store("sqlite://")
    try:
        _record_tricky(store)
        with caplog.at_level(logging.DEBUG, logger="scanner.files_process"):
            outputs = render_outputs(store, "r1", tmp_path / "out")
    finally:
        store.close()
    assert not _pids(caplog, "started")
    assert [p.name for p in outputs.files] == ["findings.json", "findings.csv", "report.html", "manifest.json"]
    assert (tmp_path / "out" / "findings.json").read_bytes().count(b'"id"') == len(_tricky())


# A program that renders a stored run with its files limited to LIMIT bytes (RLIMIT_FSIZE: writes fail with EFBIG,
# as on a full disk), inherited by the second process; prints the OutputError's message.
LIMITED = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from reports.outputs import OutputError
    from scanner.pipeline import render_outputs
    from scanner.store.database import Store

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    url, out, limit, *formats = sys.argv[1:]
    store = Store(url, create=False)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        render_outputs(store, "r1", Path(out), formats=formats)
    except OutputError as exc:
        print(exc)
    """)


def _limited(url: str, out: Path, limit: int, *formats: str) -> str:
    done = subprocess.run([sys.executable, "-c", LIMITED, url, str(out), str(limit), *formats], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.strip()


def test_a_full_disk_in_the_second_process_is_the_in_process_error_and_keeps_the_previous_outputs(
    tmp_path: Path
) -> None:
    store = _store(tmp_path, 20_000)  # mostly passes: findings.json is megabytes, report.html counts them
    url = store.engine.url.render_as_string(hide_password=False)
    out = tmp_path / "out"
    render_outputs(store, "r1", out)
    store.close()
    before = _files(out)
    html, data = len(before["report.html"]), len(before["findings.json"])
    assert html * 2 < data
    limit = html + (data - html) // 2  # room for report.html, not for findings.json
    parallel = _limited(url, out, limit, "json", "csv", "html")
    in_process = _limited(url, out, limit, "json", "csv")
    assert parallel == in_process
    assert parallel.startswith(f"cannot write {out}: File too large; free space there")
    assert parallel.endswith(f"(the previous outputs in {out} are unchanged)")
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".mailwarden-writing-")]


class _KillOnStart(logging.Handler):
    """Kills the second process the moment it is started (a real SIGKILL, as the OOM killer would)."""

    def emit(self, record: logging.LogRecord) -> None:
        if "started" in record.getMessage():
            os.kill(int(record.pid), signal.SIGKILL)  # type: ignore[attr-defined]


@pytest.fixture
def killing() -> Iterator[None]:
    logger = logging.getLogger("scanner.files_process")
    handler, level = _KillOnStart(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_killed_second_process_is_one_clear_error_and_keeps_the_previous_outputs(
    tmp_path: Path, killing: None
) -> None:
    store = _store(tmp_path, 200)
    out = tmp_path / "out"
    try:
        render_outputs(store, "r1", out, formats=("json", "csv"))
        before = _files(out)
        with pytest.raises(OutputError) as raised:
            render_outputs(store, "r1", out)
    finally:
        store.close()
    assert str(raised.value) == (
        f"cannot write findings.json and findings.csv in {out}: their process was killed by signal 9; run the "
        f"command again (the previous outputs in {out} are unchanged)")
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".mailwarden-writing-")]


def test_a_store_the_second_process_cannot_read_is_one_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path, 200)
    try:
        writer = FilesProcess(f"sqlite:///{tmp_path / 'gone.db'}", "r1", tmp_path / "f.json", tmp_path / "f.csv")
        try:
            with pytest.raises(Exception, match=r"^no store at .*gone\.db: run `mailwarden scan` first") as raised:
                writer.wait()
        finally:
            writer.stop()
    finally:
        store.close()
    assert type(raised.value).__name__ == "FilesFailed"
    assert not (tmp_path / "f.json").exists()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux: /proc/PID/task/TID/children)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its exit status waits to be collected


# A program that renders a stored run halted (the test hook) once the second process has started; SIGTERM stops it
# as it stops a scan (KeyboardInterrupt). The store's URL comes on stdin, as a secret would: never in argv.
HALTED = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from scanner.pipeline import render_outputs
    from scanner.store.database import Store

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    store = Store(sys.stdin.readline().strip(), create=False)
    try:
        render_outputs(store, "r1", Path(sys.argv[1]))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(1)
    """)


def _halted_with_children(
    url: str, out: Path, marker: Path, sig: int
) -> tuple[subprocess.CompletedProcess[str], dict[int, bytes]]:
    """Outputs rendered in a subprocess halted once its second process has started; its descendants then, with
    their command lines and environments; then sent ``sig``."""
    env = {**os.environ, HALT_AT: FILES_STEP, HALT_FILE: str(marker)}
    process = subprocess.Popen([sys.executable, "-c", HALTED, str(out)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdin is not None
    process.stdin.write(url + "\n")
    process.stdin.close()
    deadline = time.monotonic() + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "never halted"
    seen: dict[int, bytes] = {}
    for pid in _descendants(process.pid):
        with contextlib.suppress(OSError):
            seen[pid] = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    process.send_signal(sig)
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.wait(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_outputs_stopped_while_the_second_process_writes_leave_no_process_and_the_previous_outputs(
    tmp_path: Path, sig: int
) -> None:
    store = _store(tmp_path, 2_000)
    url = store.engine.url.render_as_string(hide_password=False)
    out = tmp_path / "out"
    try:
        render_outputs(store, "r1", out)
    finally:
        store.close()
    before = _files(out)
    done, children = _halted_with_children(url, out, tmp_path / "halted", sig)
    assert children, done.stderr  # the second process
    assert not [pid for pid, seen in children.items() if url.encode() in seen]  # the URL went over the pipe
    if sig == signal.SIGTERM:
        assert done.returncode == 1 and done.stderr.strip() == "interrupted", done.stderr
        assert not [p for p in out.iterdir() if p.name.startswith(".mailwarden-writing-")]
    else:
        assert done.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)]
    assert _files(out) == before


def test_with_another_thread_alive_the_second_process_is_spawned_with_the_same_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, 200)
    idle = threading.Event()
    thread = threading.Thread(target=idle.wait)
    thread.start()
    try:
        assert files_process.start_method() == "spawn"
        with caplog.at_level(logging.DEBUG, logger="scanner.files_process"):
            render_outputs(store, "r1", tmp_path / "spawned")
    finally:
        idle.set()
        thread.join()
    render_outputs(store, "r1", tmp_path / "alone", formats=("json", "csv"))
    store.close()
    [writer] = _pids(caplog, "findings written by process")
    assert writer != os.getpid()
    for name in ("findings.json", "findings.csv"):
        assert (tmp_path / "spawned" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
