"""A run's findings written by a second process (``Store.recording(apart=True)``, scanner/store/writer.py): the same
history as one process writes, the run whole only once it is sealed, and a failure told in one line with nothing
of the run kept."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from checks.evaluate import fingerprint
from scanner.model import Finding, Severity, Status
from scanner.store.database import Store, findings, run_findings, run_passes, runs
from scanner.store.writer import RecordingFailed, decoded, encoded

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _finding(check: str, subject: str, status: Status, tenant: str = "acme") -> Finding:
    return Finding(
        id=fingerprint(check, tenant, subject), check=check, status=status, severity=Severity.HIGH, tenant=tenant,
        domain=subject.partition("@")[2] or subject, subject=subject, title=f"{check} title",
        evidence={"subject": subject, "status": status.value},
    )


RUNS = [
    # run 1: failures open, passes recorded, an error changes nothing
    [_finding("spf.present", "a.example", Status.FAIL), _finding("spf.present", "b.example", Status.PASS),
     _finding("dmarc.policy", "a.example", Status.PASS), _finding("forwarding.external", "x@a.example", Status.FAIL),
     _finding("dkim.present", "c.example", Status.ERROR), _finding("spf.present", "d.example", Status.FAIL, "beta")],
    # run 2: a.example's SPF passes (resolved), x@a.example is gone (resolved as missing), b.example now fails
    [_finding("spf.present", "a.example", Status.PASS), _finding("spf.present", "b.example", Status.FAIL),
     _finding("dmarc.policy", "a.example", Status.PASS), _finding("dkim.present", "c.example", Status.PASS),
     _finding("spf.present", "d.example", Status.FAIL, "beta")],
    # run 3: b.example passes again, a.example fails again (reopened)
    [_finding("spf.present", "a.example", Status.FAIL), _finding("spf.present", "b.example", Status.PASS),
     _finding("dmarc.policy", "a.example", Status.PASS), _finding("spf.present", "d.example", Status.PASS, "beta")],
]


def _record(store: Store, n: int, results: list[Finding], *, apart: bool) -> None:
    now = T0 + timedelta(days=n)
    store.start_run(f"run{n}", now, "digest", "test")
    with store.recording(f"run{n}", now, ["acme", "beta"], apart=apart) as recording:
        half = len(results) // 2  # two pages, as a scan records them
        recording.record(results[:half])
        recording.record(results[half:])
    store.finish_run(f"run{n}", now, "complete", {})


def _history(store: Store, run_id: str) -> tuple[object, ...]:
    return (store.findings_for_run(run_id), store.lifecycle_events(run_id), store.pass_counts(run_id),
            store.finding_counts(run_id), store.status_counts(run_id))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def test_findings_written_apart_make_the_same_history(store: Store) -> None:
    reference = Store("sqlite://")  # in memory: only this process can see it, so it is written here
    assert reference.reopenable() is None and store.reopenable() is not None
    for n, results in enumerate(RUNS, start=1):
        _record(store, n, results, apart=True)
        _record(reference, n, results, apart=False)
        assert _history(store, f"run{n}") == _history(reference, f"run{n}")
    events = store.lifecycle_events("run2")
    assert events["resolved"] == sorted([RUNS[0][0].id, RUNS[0][3].id])  # fixed, and gone
    assert events["new"] == [RUNS[1][1].id]
    assert store.lifecycle_events("run3")["reopened"] == [RUNS[2][0].id]
    assert store.run("run3").recorded is not None
    reference.close()


def _rows(store: Store, run_id: str) -> tuple[int, int, object]:
    with store.engine.connect() as conn:
        full = conn.execute(sa.select(sa.func.count()).where(run_findings.c.run_id == run_id)).scalar_one()
        passes = conn.execute(sa.select(sa.func.count()).where(run_passes.c.run_id == run_id)).scalar_one()
        recorded = conn.execute(sa.select(runs.c.recorded).where(runs.c.id == run_id)).scalar_one()
    return full, passes, recorded


def test_a_writer_that_dies_fails_the_recording_and_keeps_nothing(store: Store) -> None:
    store.start_run("run1", T0, "digest", "test")
    with pytest.raises(RecordingFailed, match=r"^the process writing the findings was killed by signal 9$"):
        with store.recording("run1", T0, ["acme"], apart=True) as recording:
            recording.record(RUNS[0][:3])
            recording._write._process.kill()
            recording._write._process.join()
            recording.record(RUNS[0][3:])
    assert _rows(store, "run1") == (0, 0, None)


def test_a_store_error_in_the_writer_is_one_line_and_keeps_nothing(store: Store) -> None:
    store.start_run("run1", T0, "digest", "test")
    with pytest.raises(RecordingFailed) as failed:
        with store.recording("run1", T0, ["acme"], apart=True) as recording:
            recording.record(RUNS[0])
            recording.record(RUNS[0][:1])  # the same finding twice in one run: the store refuses the second
    message = str(failed.value)
    assert "\n" not in message and ("UNIQUE constraint failed" in message or "duplicate key value" in message)
    assert _rows(store, "run1") == (0, 0, None)


def test_a_recording_stopped_midway_keeps_nothing_and_stops_the_writer(store: Store) -> None:
    store.start_run("run1", T0, "digest", "test")
    with pytest.raises(KeyboardInterrupt):
        with store.recording("run1", T0, ["acme"], apart=True) as recording:
            recording.record(RUNS[0])
            writer = recording._write
            raise KeyboardInterrupt
    assert not writer._process.is_alive()
    assert _rows(store, "run1") == (0, 0, None)
    _record(store, 2, RUNS[1], apart=True)  # the store is not left locked
    assert _rows(store, "run2")[2] is not None


@pytest.mark.parametrize("apart", [True, False], ids=["apart", "here"])
def test_every_time_a_sqlite_store_holds_is_in_one_format(tmp_path: Path, apart: bool) -> None:
    # Rows written in batches reached the driver's own datetime adapter, which adds "+00:00"; a column then held
    # two formats (SQLAlchemy's elsewhere), and text compared in SQL would order them wrongly.
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    for n, results in enumerate(RUNS, start=1):
        _record(store, n, results, apart=apart)  # new, persisting, resolved and reopened findings
    columns = [(runs, "started"), (runs, "recorded"), (findings, "first_seen"), (findings, "last_seen"),
               (findings, "resolved_at"), (run_findings, "first_seen"), (run_findings, "last_seen"),
               (run_passes, "first_seen"), (run_passes, "last_seen")]
    written: dict[str, set[str]] = {}
    with store.engine.connect() as conn:
        for table, name in columns:
            for text in conn.execute(sa.select(sa.cast(table.c[name], sa.Text)).where(table.c[name].is_not(None))
                                     ).scalars():
                written.setdefault(f"{table.name}.{name}", set()).add(text)
    assert set(written) == {f"{t.name}.{c}" for t, c in columns}  # each column holds times to compare
    for column, texts in written.items():
        for text in texts:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", text), (column, text)
    assert _history(store, "run3")[0] == store.findings_for_run("run3")  # read back as times
    assert {f.first_seen for f in store.findings_for_run("run3")} >= {T0 + timedelta(days=1)}
    store.close()


@pytest.mark.parametrize("message", [
    [("findings", [("abc", "dns.check", "acme", "a.example", "", True, "2026-11-01 06:00:00.000000", None, None,
                    None, "a.example", "Title ✓")]), ("passes", [])],
    [("full", [("run1", "x", 1, None, False)])],
])
def test_a_page_of_plain_rows_goes_by_marshal_and_comes_back_the_same(message: object) -> None:
    assert encoded(message, plain=True)[:1] == b"m"
    assert decoded(encoded(message, plain=True)) == message
    assert decoded(encoded(message)) == message  # pickled when not said to be plain


def test_a_message_marshal_does_not_take_is_pickled() -> None:
    finish = ("run1", T0, ["acme"])
    assert encoded(finish, plain=True)[:1] == b"p"
    assert decoded(encoded(finish, plain=True)) == finish
