"""The store: content-hash dedupe, finding lifecycle across runs, partial runs, schema versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from checks.evaluate import fingerprint
from scanner.errors import StoreError
from scanner.model import Finding, Severity, Status
from scanner.store import MIGRATIONS, Store

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _finding(subject: str, status: Status, tenant: str = "acme") -> Finding:
    return Finding(
        id=fingerprint("forwarding.external", tenant, subject), check="forwarding.external", status=status,
        severity=Severity.HIGH, tenant=tenant, domain="acme.example", subject=subject, title="t",
        evidence={"targets": ["x@out.test"]} if status is Status.FAIL else {},
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'store.db'}")


def _run(store: Store, n: int, findings: list[Finding], complete: tuple[str, ...] = ("acme",)) -> dict[str, Finding]:
    now = T0 + timedelta(days=n)
    store.start_run(f"run{n}", now, "digest", "test")
    out = store.record_findings(f"run{n}", findings, now, complete)
    store.finish_run(f"run{n}", now, "complete" if complete else "partial", {})
    return {f.subject: f for f in out}


def test_unchanged_objects_are_stored_once(store: Store) -> None:
    store.start_run("r1", T0, "d", "test")
    assert store.save_snapshot("r1", [("mailbox", "acme/a", {"x": 1}), ("mailbox", "acme/b", {"x": 2})]) == 2
    store.start_run("r2", T0 + timedelta(days=1), "d", "test")
    assert store.save_snapshot("r2", [("mailbox", "acme/a", {"x": 1}), ("mailbox", "acme/b", {"x": 3})]) == 1
    assert store.object_count() == 3
    assert store.snapshot("r2") == {("mailbox", "acme/a"): {"x": 1}, ("mailbox", "acme/b"): {"x": 3}}
    assert store.snapshot("r1")[("mailbox", "acme/b")] == {"x": 2}


def test_lifecycle_new_persisting_resolved_reopened(store: Store) -> None:
    first = _run(store, 1, [_finding("a@acme.example", Status.FAIL)])
    assert first["a@acme.example"].first_seen == T0 + timedelta(days=1)
    assert store.lifecycle_events("run1")["new"] == [fingerprint("forwarding.external", "acme", "a@acme.example")]

    second = _run(store, 2, [_finding("a@acme.example", Status.FAIL)])
    assert second["a@acme.example"].first_seen == T0 + timedelta(days=1)
    assert second["a@acme.example"].last_seen == T0 + timedelta(days=2)
    assert store.lifecycle_events("run2")["new"] == []

    _run(store, 3, [_finding("a@acme.example", Status.PASS)])
    assert store.lifecycle_events("run3")["resolved"] == [fingerprint("forwarding.external", "acme", "a@acme.example")]

    fourth = _run(store, 4, [_finding("a@acme.example", Status.FAIL)])
    assert store.lifecycle_events("run4")["reopened"] == [fingerprint("forwarding.external", "acme", "a@acme.example")]
    assert fourth["a@acme.example"].last_seen == T0 + timedelta(days=4)


def test_error_result_never_resolves(store: Store) -> None:
    _run(store, 1, [_finding("a@acme.example", Status.FAIL)])
    _run(store, 2, [_finding("a@acme.example", Status.ERROR)])
    assert store.lifecycle_events("run2")["resolved"] == []
    third = _run(store, 3, [_finding("a@acme.example", Status.FAIL)])
    assert store.lifecycle_events("run3") == {"new": [], "reopened": [], "resolved": []}
    assert third["a@acme.example"].first_seen == T0 + timedelta(days=1)


def test_partial_run_does_not_resolve_what_it_did_not_see(store: Store) -> None:
    _run(store, 1, [_finding("a@acme.example", Status.FAIL), _finding("b@acme.example", Status.FAIL)])
    # Run 2 did not see acme completely and has no result for b: b stays open.
    _run(store, 2, [_finding("a@acme.example", Status.FAIL)], complete=())
    assert store.lifecycle_events("run2")["resolved"] == []
    # Run 3 saw acme completely and b is gone: resolved.
    _run(store, 3, [_finding("a@acme.example", Status.FAIL)])
    assert store.lifecycle_events("run3")["resolved"] == [fingerprint("forwarding.external", "acme", "b@acme.example")]


def test_findings_for_run_round_trip(store: Store) -> None:
    _run(store, 1, [_finding("a@acme.example", Status.FAIL), _finding("b@acme.example", Status.PASS)])
    stored = {f.subject: f for f in store.findings_for_run("run1")}
    assert stored["a@acme.example"].status is Status.FAIL
    assert stored["a@acme.example"].evidence == {"targets": ["x@out.test"]}
    assert stored["b@acme.example"].first_seen is None


def test_schema_is_versioned_and_reopening_migrates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    assert Store(url).version == len(MIGRATIONS)
    assert Store(url).version == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    Store(url)
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("update mw_meta set value = '99' where key = 'schema_version'"))
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(url)


def test_unusable_url_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store("nosuchdb://x")
    with pytest.raises(StoreError, match="cannot open the store"):
        Store(f"sqlite:///{tmp_path}/missing-dir/x.db")
