"""The store: content-hash dedupe, finding lifecycle across runs, partial runs, schema versions."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from checks.evaluate import fingerprint
from scanner.errors import StoreError
from scanner.model import (
    Finding, Forward, ForwardMechanism, Invite, Mailbox, MailboxKind, MailboxStatus, Severity, Status, plain,
)
from scanner.store.database import MIGRATIONS, Store, _migration_caused_by

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _finding(subject: str, status: Status, tenant: str = "acme") -> Finding:
    return Finding(
        id=fingerprint("forwarding.external", tenant, subject), check="forwarding.external", status=status,
        severity=Severity.HIGH, tenant=tenant, domain="acme.example", subject=subject, title="t",
        evidence={"targets": ["x@out.test"]} if status is Status.FAIL else {},
    )


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh store, on SQLite and on PostgreSQL (the ``store_url`` fixture is parametrized over both)."""
    opened = Store(store_url)
    yield opened
    opened.close()


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


def test_schema_is_versioned_and_reopening_migrates_nothing(store_url: str) -> None:
    url = store_url
    assert Store(url).version == len(MIGRATIONS)
    assert Store(url).version == len(MIGRATIONS)


def test_newer_schema_is_refused(store_url: str) -> None:
    url = store_url
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


# delta snapshots, partial runs, migration and retention

from scanner.store.database import CONFIG_SCOPE, _migration_1, metadata, meta_table  # noqa: E402


def _saw(store: Store, n: int, items: list[tuple[str, str, object]], complete: tuple[str, ...] = ("acme",),
         state: str = "complete") -> str:
    run_id = f"run{n}"
    store.start_run(run_id, T0 + timedelta(days=n), "digest", "test")
    store.save_snapshot(run_id, items, complete=(*complete, CONFIG_SCOPE))
    store.finish_run(run_id, T0 + timedelta(days=n), state, {})
    return run_id


def test_a_run_stores_only_what_changed_and_deletion_markers(store: Store) -> None:
    items = [("mailbox", f"acme/m{i}", {"n": i}) for i in range(50)]
    _saw(store, 1, items)
    assert store.version_count() == 50
    _saw(store, 2, items)
    assert store.version_count() == 50  # nothing changed: nothing stored
    _saw(store, 3, [*items[1:49], ("mailbox", "acme/m49", {"n": "new"}), ("mailbox", "acme/m50", {"n": 50})])
    assert store.version_count() == 53  # m0 deleted, m49 changed, m50 appeared
    state = store.snapshot("run3")
    assert ("mailbox", "acme/m0") not in state and state[("mailbox", "acme/m49")] == {"n": "new"}
    assert store.snapshot("run2")[("mailbox", "acme/m0")] == {"n": 0}
    assert store.object_state("mailbox", "acme/m49", "run1") == {"n": 49}
    assert store.object_state("mailbox", "acme/m0") is None


def test_a_snapshot_read_a_page_at_a_time_is_the_whole_snapshot_in_key_order(store: Store) -> None:
    items = [("mailbox", f"acme/m{i:02}", {"n": i}) for i in range(7)] + [("domain", "acme/acme.example", {"d": 1})]
    _saw(store, 1, items)
    _saw(store, 2, [*items[1:6], ("mailbox", "acme/m06", {"n": "new"})])
    for run_id in ("run1", "run2"):
        mailboxes = store.snapshot(run_id, "mailbox")
        assert list(store.iter_snapshot(run_id, "mailbox", page=2)) == sorted(mailboxes.items())
        assert store.snapshot_keys(run_id, "mailbox") == sorted(key for _, key in mailboxes)
    assert dict(store.iter_snapshot("run2", "mailbox", page=3))[("mailbox", "acme/m06")] == {"n": "new"}
    assert ("mailbox", "acme/m00") not in dict(store.iter_snapshot("run2", "mailbox"))
    assert store.snapshot_keys("run1", "domain") == ["acme/acme.example"]


def test_findings_read_back_share_what_they_repeat(store: Store) -> None:
    """A report holds every finding that is not a pass: 200,000 unsupported findings saying the same of different
    mailboxes cost what differs between them, not a copy of the reason and the evidence each."""
    n, said = 3000, "no DMARC aggregate reports were imported for this domain " + "." * 400
    alike = [Finding(
        id=fingerprint("dmarc.reports_missing", "acme", f"d{i}.example"), check="dmarc.reports_missing",
        status=Status.UNSUPPORTED, severity=Severity.MEDIUM, tenant="acme", domain=f"d{i}.example",
        subject=f"d{i}.example", title="DMARC aggregate reports arrive", reason=said,
        evidence={"window_days": 14, "note": said}) for i in range(n)]
    store.start_run("r1", T0, "d", "test")
    store.record_findings("r1", alike, T0, ("acme",))
    tracemalloc.start()
    try:
        found = store.findings_for_run("r1", (Status.UNSUPPORTED,))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(f.reason, f.evidence) for f in found] == [(said, {"window_days": 14, "note": said})] * n
    assert held / n < 700  # each finding's own id, subject, domain and times; a copy of both texts is over 1,400


def test_partial_run_between_complete_ones_resolves_nothing_and_deletes_nothing(store: Store) -> None:
    a, b = _finding("a@acme.example", Status.FAIL), _finding("b@acme.example", Status.FAIL)
    both = [("mailbox", "acme/a@acme.example", {"f": 1}), ("mailbox", "acme/b@acme.example", {"f": 1})]
    _saw(store, 1, both)
    store.record_findings("run1", [a, b], T0 + timedelta(days=1), ("acme",))
    # Run 2 saw acme partially: b is missing and a passes on what it saw. Nothing resolves, nothing is deleted.
    _saw(store, 2, both[:1] + [("mailbox", "acme/a@acme.example", {"f": 0})], complete=(), state="partial")
    store.record_findings("run2", [_finding("a@acme.example", Status.PASS)], T0 + timedelta(days=2), ())
    assert store.lifecycle_events("run2") == {"new": [], "reopened": [], "resolved": []}
    assert store.snapshot("run2") == store.snapshot("run1")
    assert store.changes(run_id="run2") == []
    # Run 3 saw acme completely, as run 1 did: a persists, b persists, no change, no deletion.
    _saw(store, 3, both)
    out = {f.subject: f for f in store.record_findings("run3", [a, b], T0 + timedelta(days=3), ("acme",))}
    assert store.lifecycle_events("run3") == {"new": [], "reopened": [], "resolved": []}
    assert out["b@acme.example"].first_seen == T0 + timedelta(days=1)
    assert store.changes() == []


def test_failed_lookup_is_replaced_by_the_last_known_answer_in_the_previous_state(store: Store) -> None:
    def domain(outcome: str, records: list[str]) -> dict:
        answer = {"name": "_dmarc.acme.example", "rdtype": "TXT", "outcome": outcome, "records": records, "error": None}
        return {"name": "acme.example", "tenant": "acme", "parked": False, "catch_all": None,
                "dns": {"answers": {"dmarc": answer}, "spf": None, "mta_sts_policy": None}}

    _saw(store, 1, [("domain", "acme/acme.example", domain("answer", ["v=DMARC1; p=reject"]))])
    _saw(store, 2, [("domain", "acme/acme.example", domain("failed", []))])
    store.start_run("run3", T0 + timedelta(days=3), "digest", "test")
    previous = store.previous_state("run3")
    assert previous is not None and previous.run_id == "run2" and previous.tenants == frozenset({"acme"})
    assert previous.domains["acme/acme.example"].answers["dmarc"].records == ("v=DMARC1; p=reject",)


def test_version_1_store_is_migrated_with_its_history(store_url: str) -> None:
    url = store_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn, tables=[meta_table])
        conn.execute(sa.insert(meta_table).values(key="schema_version", value="1"))
        _migration_1(conn)
        bodies = {"x1": {"s": "active"}, "x2": {"s": "suspended"}, "y": {"s": "active"}}
        conn.execute(sa.text("insert into objects (hash, kind, body) values (:h, 'mailbox', :b)"),
                     [{"h": h, "b": json.dumps(b)} for h, b in bodies.items()])
        for n, (scope, refs) in enumerate([
            ({"tenants": {"acme": {"state": "complete"}}}, {"acme/a": "x1", "acme/b": "y"}),
            ({"tenants": {"acme": {"state": "partial"}}}, {"acme/a": "x2"}),  # b unseen: not deleted
            ({"tenants": {"acme": {"state": "complete"}}}, {"acme/a": "x2"}),  # b gone: deleted
        ], start=1):
            conn.execute(sa.text("insert into runs (id, started, state, scope, config_digest, tool_version) "
                                 "values (:id, :t, 'complete', :scope, 'd', 'v')"),
                         {"id": f"r{n}", "t": T0 + timedelta(days=n), "scope": json.dumps(scope)})
            conn.execute(sa.text("insert into snapshots (run_id, kind, key, hash) values (:r, 'mailbox', :k, :h)"),
                         [{"r": f"r{n}", "k": k, "h": h} for k, h in refs.items()])
    store = Store(url)
    assert store.version == len(MIGRATIONS)
    assert not sa.inspect(store.engine).has_table("snapshots")
    assert store.snapshot("r1") == {("mailbox", "acme/a"): {"s": "active"}, ("mailbox", "acme/b"): {"s": "active"}}
    assert store.snapshot("r2") == store.snapshot("r1")  # a partial run's view carries nothing forward
    assert store.snapshot("r3") == {("mailbox", "acme/a"): {"s": "suspended"}}
    assert [(c.run_id, c.field, c.action, c.before, c.after) for c in store.changes()] == [
        ("r3", "s", "changed", "active", "suspended"), ("r3", "", "removed", {"s": "active"}, None),
    ]


def test_prune_keeps_what_the_kept_runs_reference(store: Store) -> None:
    now = datetime.now(UTC)
    old = [("mailbox", "acme/a", {"v": 1}), ("mailbox", "acme/b", {"v": 1}), ("mailbox", "acme/c", {"v": 1})]
    for n, items in enumerate([old, [old[0], ("mailbox", "acme/b", {"v": 2}), old[2]],
                               [old[0], ("mailbox", "acme/b", {"v": 3})], [old[0], ("mailbox", "acme/b", {"v": 3})]],
                              start=1):
        run_id = f"run{n}"
        store.start_run(run_id, now - timedelta(days=500 - 100 * n), "digest", "test")
        store.save_snapshot(run_id, items)
        finding = _finding("a@acme.example", Status.FAIL if n < 4 else Status.PASS)
        store.record_findings(run_id, [finding, _finding(f"gone{n}@acme.example", Status.FAIL)],
                              now - timedelta(days=500 - 100 * n), ("acme",))
        store.finish_run(run_id, now - timedelta(days=500 - 100 * n), "complete", {})
    before = {r: store.snapshot(r) for r in ("run3", "run4")}
    done = store.prune(now - timedelta(days=250))  # runs 1 (400 days old) and 2 (300) go; 3 (200) and 4 stay
    assert done.runs == 2
    assert [r.id for r in store.runs()] == ["run3", "run4"]
    assert {r: store.snapshot(r) for r in ("run3", "run4")} == before
    assert store.object_count() == 2  # {"v": 1} for a, {"v": 3} for b; b's {"v": 2} and c are unreferenced
    assert store.findings_for_run("run3")  # kept runs keep their findings
    with store.engine.connect() as conn:
        kept = set(conn.execute(sa.text("select subject from findings")).scalars())
    assert "gone1@acme.example" not in kept and "gone3@acme.example" in kept and "a@acme.example" in kept
    assert store.prune(now - timedelta(days=1)).runs == 1  # the newest run always stays
    assert [r.id for r in store.runs()] == ["run4"] and store.snapshot("run4") == before["run4"]


def test_pass_in_a_partial_tenant_does_not_resolve(store: Store) -> None:
    _run(store, 1, [_finding("a@acme.example", Status.FAIL)])
    _run(store, 2, [_finding("a@acme.example", Status.PASS)], complete=())
    assert store.lifecycle_events("run2")["resolved"] == []
    _run(store, 3, [_finding("a@acme.example", Status.PASS)])
    assert store.lifecycle_events("run3")["resolved"] == [fingerprint("forwarding.external", "acme", "a@acme.example")]


def test_a_scan_stages_pages_and_reads_its_mailboxes_back_a_page_at_a_time(store: Store) -> None:
    boxes = [
        Mailbox("acme", f"u{i}@acme.example", MailboxKind.SHARED if i == 1 else MailboxKind.USER,
                created=T0 - timedelta(days=i), last_login=T0 if i % 2 else None,
                owners=("u0@acme.example",) if i == 1 else (),
                forwards=(Forward(f"u{i}@out.test", ForwardMechanism.INBOX_RULE),) if i == 3 else (),
                invite=Invite(T0, T0 + timedelta(days=7)) if i == 4 else None)
        for i in range(5)
    ]

    def items(found: list[Mailbox], tenant: str = "acme") -> list[tuple[str, str, object, str]]:
        return [("mailbox", f"{tenant}/{m.address}", plain(m), tenant) for m in found]

    store.start_run("run1", T0, "digest", "test")
    assert store.stage("run1", items(boxes[:3])) == []
    assert store.stage("run1", items(boxes[2:])) == ["acme/u2@acme.example"]  # the first sighting stays
    store.stage("run1", items([Mailbox("beta", "x@beta.example")], "beta"))
    store.unstage("run1", "beta")  # beta's collection failed: what it sent is unknown, not seen
    store.commit_snapshot("run1", complete=("acme", "beta"))
    with store.recording("run1", T0, ("acme",)) as recording:
        pages = list(recording.mailbox_pages(2))
        assert [len(page) for page in pages] == [2, 2, 1]
        assert [m for page in pages for m in page] == boxes  # in key order, every field as it was
        assert recording.mailboxes(["acme/u3@acme.example", "beta/x@beta.example"]) == {
            "acme/u3@acme.example": boxes[3]}
    assert sorted(key for _, key in store.snapshot("run1", "mailbox")) == [f"acme/u{i}@acme.example" for i in range(5)]
    store.finish_run("run1", T0, "complete", {})
    with store.recording("run1", T0, ()) as recording:
        assert list(recording.mailbox_pages(2)) == []  # the staging went with the run's end


def test_findings_recorded_page_by_page_resolve_what_no_page_reported(store: Store) -> None:
    _run(store, 1, [_finding("a@acme.example", Status.FAIL), _finding("b@acme.example", Status.FAIL)])
    now = T0 + timedelta(days=2)
    store.start_run("run2", now, "digest", "test")
    with store.recording("run2", now, ("acme",)) as recording:
        recording.add([_finding("a@acme.example", Status.FAIL)])
        recording.add([_finding("c@acme.example", Status.PASS)])
    events = store.lifecycle_events("run2")
    assert events["resolved"] == [fingerprint("forwarding.external", "acme", "b@acme.example")]  # gone from acme
    assert events["new"] == []


def test_prune_during_a_scan_keeps_the_bodies_it_has_staged(store: Store) -> None:
    now = datetime.now(UTC)
    store.start_run("run1", now - timedelta(days=30), "digest", "test")
    store.save_snapshot("run1", [("mailbox", "acme/a", {"v": 1})])
    store.finish_run("run1", now - timedelta(days=30), "complete", {})
    store.start_run("run2", now, "digest", "test")
    store.stage("run2", [("mailbox", "acme/a", {"v": 2}, "acme")])  # read, not yet committed
    store.prune(now - timedelta(days=1))
    store.commit_snapshot("run2", complete=("acme",))
    assert store.object_state("mailbox", "acme/a", "run2") == {"v": 2}


def test_a_field_left_unread_keeps_its_last_recorded_value(store: Store) -> None:
    def body(forwards: list[str], delegates: list[str], status: str = "active") -> dict[str, object]:
        mailbox = Mailbox("acme", "old@acme.example", status=MailboxStatus(status), delegates=tuple(delegates),
                          forwards=tuple(Forward(t, ForwardMechanism.AUTO_FORWARD) for t in forwards))
        return plain(mailbox)  # type: ignore[return-value]

    store.start_run("r1", T0, "d", "test")
    store.save_snapshot("r1", [("mailbox", "acme/old@acme.example", body(["x@out.test"], ["pa@acme.example"]))])
    store.record_findings("r1", [], T0, ["acme"])  # a whole run: the next one is compared with it
    # Suspended: the provider let nothing be read, so the mailbox arrives with no forwards and no delegates.
    store.start_run("r2", T0 + timedelta(days=1), "d", "test")
    store.stage("r2", [("mailbox", "acme/old@acme.example", body([], [], "suspended"), "acme")])
    store.keep_last_known("r2", {"acme/old@acme.example": {"forwards", "delegates"},
                                 "acme/new@acme.example": {"forwards"}})  # never recorded: nothing to keep
    store.commit_snapshot("r2")
    store.record_findings("r2", [], T0 + timedelta(days=1), ["acme"])  # a whole run: its changes count
    kept = store.snapshot("r2")[("mailbox", "acme/old@acme.example")]
    assert kept["status"] == "suspended"
    assert [f["target"] for f in kept["forwards"]] == ["x@out.test"] and kept["delegates"] == ["pa@acme.example"]
    changes = [(c.object_type, c.field, c.after) for c in store.changes(run_id="r2")]
    assert changes == [("mailbox", "status", "suspended")]


def test_a_store_from_before_caused_by_gains_the_column_and_keeps_skipped_findings(store_url: str) -> None:
    store = Store(store_url)
    with store.engine.begin() as conn:  # the schema as the previous version left it
        conn.execute(sa.text("ALTER TABLE run_findings DROP COLUMN caused_by"))
        before = MIGRATIONS.index(_migration_caused_by)
        conn.execute(sa.text(f"update mw_meta set value = '{before}' where key = 'schema_version'"))
    store = Store(store_url)
    assert store.version == len(MIGRATIONS)
    root = Finding(id="root1", check="dmarc.missing", status=Status.FAIL, severity=Severity.HIGH, tenant="acme",
                   domain="acme.example", subject="acme.example", title="t")
    skipped = Finding(id="dep1", check="dmarc.no_rua", status=Status.SKIPPED, severity=Severity.MEDIUM,
                      tenant="acme", domain="acme.example", subject="acme.example", title="t", caused_by="root1")
    store.start_run("r1", T0, "d", "v")
    store.record_findings("r1", [root, skipped], T0, ["acme"])
    stored = {f.id: f for f in store.findings_for_run("r1")}
    assert stored["dep1"].status is Status.SKIPPED and stored["dep1"].caused_by == "root1"
    assert stored["root1"].caused_by == ""


def test_passes_are_stored_compactly_and_read_back_in_full(store: Store) -> None:
    passes = [replace(_finding(f"{name}@acme.example", Status.PASS), evidence={"forwards": [], "checked": True})
              for name in ("a", "b", "c")]
    failing = _finding("d@acme.example", Status.FAIL)
    _run(store, 1, [*passes, failing])
    _run(store, 2, [*passes, failing])
    stored = store.findings_for_run("run2")
    assert [(f.subject, f.status, dict(f.evidence), f.title, f.domain) for f in stored] == [
        *((p.subject, Status.PASS, {"checked": True, "forwards": []}, "t", "acme.example") for p in passes),
        ("d@acme.example", Status.FAIL, {"targets": ["x@out.test"]}, "t", "acme.example"),
    ]
    with store.engine.connect() as conn:
        # Six passes over two runs share one evidence body; only the failures have full rows.
        assert conn.execute(sa.text("SELECT count(*) FROM evidence")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM run_passes")).scalar() == 6
        assert conn.execute(sa.text("SELECT count(*) FROM run_findings")).scalar() == 2
    assert store.status_counts("run2") == {"pass": 3, "fail": 1}
    assert [(c.check, c.tenant, c.severity, c.count, c.domains) for c in store.pass_counts("run2")] == [
        ("forwarding.external", "acme", Severity.HIGH, 3, {"acme.example": 3})]
    assert [f.subject for f in store.findings_for_run("run2", (Status.FAIL,))] == ["d@acme.example"]


def test_pass_counts_recorded_with_the_run_equal_those_counted_from_its_passes(store: Store) -> None:
    passes = [
        Finding(id=fingerprint(check, tenant, f"{name}@{domain}"), check=check, status=Status.PASS, severity=severity,
                tenant=tenant, domain=domain, subject=f"{name}@{domain}", title=f"{check} {name[-1]}")
        for check in ("forwarding.external", "account.ghost")
        for tenant, domain in (("acme", "acme.test"), ("acme", "acme.example"), ("beta", "beta.example"))
        for severity in (Severity.HIGH, Severity.LOW)
        for name in (f"{severity.value}-a", f"{severity.value}-b", f"{severity.value}-c")
    ]
    store.start_run("r1", T0, "d", "v")
    with store.recording("r1", T0, ["acme", "beta"]) as recording:
        # each group's passes (titles differing) come in two calls: the counts add up across them
        recording.add(passes[::2])
        recording.add([*passes[1::2], _finding("z@acme.example", Status.FAIL)])
    recorded, totals, statuses = store.pass_counts("r1"), store.finding_counts("r1"), store.status_counts("r1")
    assert [(c.check, c.tenant, c.severity.value, c.count) for c in recorded] == [
        (check, tenant, severity, 6 if tenant == "acme" else 3)
        for check in ("account.ghost", "forwarding.external") for tenant in ("acme", "beta")
        for severity in ("high", "low")]
    assert recorded[0].domains == {"acme.example": 3, "acme.test": 3}  # in code point order
    assert {c.title for c in recorded} == {"account.ghost a", "forwarding.external a"}  # the least, as min() gives
    assert totals[("acme", "pass", "high")] == 12 and totals[("acme", "fail", "high")] == 1
    with store.iter_rows("r1") as rows:
        tenants = [row.tenant for row in rows]
    assert store.output_parts("r1") == [(("acme",), 25), (("beta",), 12)] == [
        ((t,), tenants.count(t)) for t in ("acme", "beta")]
    with store.iter_rows("r1") as rows:
        pairs = [(row.tenant, row.domain) for row in rows]
    assert store.output_parts("r1", by_domain=True) == [
        (("acme", "acme.example"), 13), (("acme", "acme.test"), 12), (("beta", "beta.example"), 12)] == [
        (pair, pairs.count(pair)) for pair in dict.fromkeys(pairs)]  # the rows' own order
    with store.iter_rows("r1", from_part=("acme", "acme.test")) as rows:
        assert [(row.tenant, row.domain) for row in rows] == pairs[13:]
    with store.engine.begin() as conn:  # as a run recorded before the counts were kept
        assert conn.execute(sa.text("DELETE FROM run_pass_counts")).rowcount == len(recorded)
    assert statuses == {"pass": 36, "fail": 1}
    assert store.pass_counts("r1") == recorded
    assert store.finding_counts("r1") == totals
    assert store.status_counts("r1") == statuses  # its passes counted
    assert store.output_parts("r1") is None  # its passes' tenants are not at hand


def test_a_pass_reads_back_with_the_title_and_domain_its_run_recorded(store: Store) -> None:
    failing = _finding("a@acme.example", Status.FAIL)
    passing = _finding("b@acme.example", Status.PASS)
    _run(store, 1, [failing, passing])
    # a passes for the first time (its context is new), b's context changes; both with a new title and domain.
    _run(store, 2, [replace(f, status=Status.PASS, evidence={}, title="renamed", domain="acme.test")
                    for f in (failing, passing)])
    assert [(f.subject, f.status, f.title, f.domain, f.first_seen) for f in store.findings_for_run("run2")] == [
        ("a@acme.example", Status.PASS, "renamed", "acme.test", T0 + timedelta(days=1)),
        ("b@acme.example", Status.PASS, "renamed", "acme.test", None),
    ]
    assert store.lifecycle_events("run2") == {"new": [], "reopened": [], "resolved": [failing.id]}


def test_a_version_11_store_moves_its_passes_domain_and_title_into_the_findings(store_url: str) -> None:
    store = Store(store_url)
    failing, passing = _finding("a@acme.example", Status.FAIL), _finding("b@acme.example", Status.PASS)
    _run(store, 1, [failing, replace(passing, domain="acme.test", title="first title")])
    before = [(f.subject, f.status, f.domain, f.title) for f in store.findings_for_run("run1")]
    with store.engine.begin() as conn:  # as version 11 kept them: a table beside the findings
        conn.execute(sa.text("CREATE TABLE finding_context (fingerprint VARCHAR(40) PRIMARY KEY, "
                             "domain VARCHAR(255) NOT NULL, title VARCHAR(255) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO finding_context SELECT fingerprint, domain, title FROM findings "
                             "WHERE domain IS NOT NULL"))
        conn.execute(sa.text("ALTER TABLE findings DROP COLUMN domain"))
        conn.execute(sa.text("ALTER TABLE findings DROP COLUMN title"))
        conn.execute(sa.text("UPDATE mw_meta SET value = '11' WHERE key = 'schema_version'"))
    store.close()
    assert before == [("a@acme.example", Status.FAIL, "acme.example", "t"),
                      ("b@acme.example", Status.PASS, "acme.test", "first title")]
    upgraded = Store(store_url)
    try:
        assert upgraded.version == len(MIGRATIONS) == 12
        assert "finding_context" not in sa.inspect(upgraded.engine).get_table_names()
        assert [(f.subject, f.status, f.domain, f.title) for f in upgraded.findings_for_run("run1")] == before
        # the next run's pass of a finding that never passed, and a new title for one that did
        _run(upgraded, 2, [replace(failing, status=Status.PASS, evidence={}), replace(passing, title="renamed")])
        assert [(f.subject, f.domain, f.title) for f in upgraded.findings_for_run("run2")] == [
            ("a@acme.example", "acme.example", "t"), ("b@acme.example", "acme.example", "renamed")]
    finally:
        upgraded.close()


def test_a_url_whose_port_is_not_a_number_is_one_error_without_its_password() -> None:
    with pytest.raises(StoreError) as refused:
        Store("postgresql://mailwarden:hunter2@db.example:fivefour/mailwarden")
    assert str(refused.value) == "the store URL is not usable: not a database URL"
